"""Name lookups under a deadline.

getaddrinfo cannot be interrupted, and the system resolver's own limits add up to tens
of seconds (resolv.conf: timeout x attempts x servers). So a lookup runs on a thread of
a small reused set (net/threads.py) and its caller waits for it only until the
deadline it was given: the connect timeout then bounds lookup and connect together. A
lookup given up on finishes on its thread, its answer dropped, and keeps its place in
the set until then: a resolver that hangs shows as busy lookups (the `lookups` gauge),
and at the limit a new lookup fails at once instead of adding threads.
An address literal needs no lookup: net/dialer.py answers it before it comes here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ..errors import Cause, Overloaded
from ..observe.stats import Stats
from .threads import HandlerThreads

T = TypeVar("T")


class Lookups:
    """At most `limit` lookups at once, each waited for until its caller's deadline."""

    def __init__(self, limit: int, stats: Stats) -> None:
        self.limit, self.stats = limit, stats
        self._threads = HandlerThreads(limit, "tinyproxy-py-lookup", stats, done=self._ended, kind="lookup")

    def run(self, lookup: Callable[[str, int], T], host: str, port: int, deadline: float) -> T:
        """`lookup(host, port)`, or TimeoutError once `deadline` (monotonic) passes first,
        or Overloaded when every lookup thread is busy (a resolver that hangs). Whatever
        the lookup raises is raised here."""
        job = _Lookup(lookup, host, port)
        self.stats.adjust("lookups", 1)
        try:
            self._threads.submit(job)
        except RuntimeError as exc:  # at the limit, or stopped
            self.stats.adjust("lookups", -1)
            raise Overloaded(f"cannot look up {host}: {self.limit} lookups in progress already") from exc
        if not job.finished.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"looking up {host} took too long")
        return job.answer()

    def stop(self, timeout: float) -> bool:
        """End the idle lookup threads and wait up to `timeout` for busy ones (a lookup
        cannot be interrupted); whether none is left."""
        return self._threads.stop(timeout)

    def _ended(self) -> None:
        self.stats.adjust("lookups", -1)


class _Lookup(Generic[T]):
    """One lookup as a job for a lookup thread (net.threads.Job)."""

    __slots__ = ("_error", "_result", "finished", "host", "lookup", "port")

    def __init__(self, lookup: Callable[[str, int], T], host: str, port: int) -> None:
        self.lookup, self.host, self.port = lookup, host, port
        self.finished = threading.Lock()
        self.finished.acquire()  # released once the answer (or error) is in
        self._result: T | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self.lookup(self.host, self.port)
        except Exception as exc:
            self._error = exc
        finally:
            self.finished.release()

    def cancel(self, stopping: bool) -> None:
        if stopping:
            self._error = Overloaded(
                f"cannot look up {self.host}: the proxy is stopping", cause=Cause.SHUTDOWN
            )
        else:
            self._error = Overloaded(f"cannot look up {self.host}: no thread could be started for it")
        self.finished.release()

    def answer(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set whenever _error is not
