"""Counters (only grow) and gauges (go up and down) for one proxy instance.

Every live object the proxy owns is counted by a gauge; a gauge that does not return
to zero once traffic stops is a leak, and the tests look for exactly that.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from types import TracebackType
from typing import TypedDict


class Counts(TypedDict):
    uptime: float
    counters: dict[str, int]
    gauges: dict[str, int]


class Stats:
    """Thread-safe counters and gauges; `snapshot()` gives a copy.

    Gauges sit behind one lock, so a read is exact: one may go up on one thread and down
    on another (a tunnel: the handler opens it, the hub closes it), and shutdown waits for
    them to reach zero. Counters only grow and are counted far more often, so each thread
    adds to counters of its own without a lock, and a read sums them (one lock for every
    count by every thread was a hot spot at 50 busy clients). A thread that ended leaves
    its counts to the totals at the next read or registration: nothing runs as a thread
    ends. Relies on the GIL: a thread's Counter is copied with dict() in one step.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the gauges, _shards and the ended threads' totals
        self._counters: Counter[str] = Counter()  # of threads that ended
        self._gauges: Counter[str] = Counter()
        # (alive while its thread is: a token only that thread's local holds, its counters)
        self._shards: list[tuple[weakref.ref[_Token], Counter[str]]] = []
        self._local = threading.local()
        self.started = time.monotonic()

    def count(self, name: str, amount: int = 1) -> None:
        try:
            counters: Counter[str] = self._local.counters
        except AttributeError:
            counters = self._register()
        counters[name] += amount

    def adjust(self, gauge: str, delta: int) -> None:
        with self._lock:
            self._gauges[gauge] += delta

    def live(self, gauge: str) -> _Live:
        """Count one live object for the duration of the block (a class, not a generator:
        several blocks open and close per connection)."""
        return _Live(self, gauge)

    def gauge(self, name: str) -> int:
        with self._lock:
            return self._gauges[name]

    def counter(self, name: str) -> int:
        with self._lock:
            self._fold_ended()
            return self._counters[name] + sum(counters[name] for _, counters in self._shards)

    def snapshot(self) -> Counts:
        with self._lock:
            self._fold_ended()
            counters = Counter(self._counters)
            for _, mine in self._shards:
                # dict() copies a running thread's Counter in one step of the interpreter
                # (C code holding the GIL): that thread cannot change it meanwhile.
                counters.update(dict(mine))
            gauges = dict(self._gauges)
        return {"uptime": time.monotonic() - self.started, "counters": dict(counters), "gauges": gauges}

    def _register(self) -> Counter[str]:
        token, counters = _Token(), Counter[str]()
        self._local.token, self._local.counters = token, counters
        with self._lock:
            self._fold_ended()
            self._shards.append((weakref.ref(token), counters))
        return counters

    def _fold_ended(self) -> None:
        """Move the counts of threads that ended into the totals (the lock is held)."""
        alive = []
        for token, counters in self._shards:
            if token() is None:
                self._counters.update(counters)
            else:
                alive.append((token, counters))
        self._shards = alive


class _Token:
    """Held only by one thread's threading.local: dead once that thread has ended."""

    __slots__ = ("__weakref__",)


class _Live:
    __slots__ = ("gauge", "stats")

    def __init__(self, stats: Stats, gauge: str) -> None:
        self.stats, self.gauge = stats, gauge

    def __enter__(self) -> None:
        self.stats.adjust(self.gauge, 1)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stats.adjust(self.gauge, -1)
