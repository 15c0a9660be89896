"""The bounded urllib3 PoolManager that owns the connections plain HTTP travels on.

urllib3 creates the connections (the dial, TLS with certifi's bundle, chaining through a
parent proxy), bounds them and keeps the idle ones; the proxy writes each request and
reads each response on a checked-out connection itself (origin/exchange.py, net/stream.py), and
gives it back only when clean. Bounds: `pool_hosts` host pools (LRU), `pool_idle_per_host`
idle connections per host (`block=False`: extra connections are made when needed and
closed when returned to a full pool), the connect timeout on every dial. A reaper closes
idle connections past the idle timeout, and within a second any idle connection its
origin closed or wrote to (Go's transport reads every idle connection for the same
reason): an idle connection has nothing to say, and what it says would otherwise reach
the next request.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import Cause, Overloaded, ProxyError
from ..net.chain import label
from ..net.dialer import DIRECT, Dialer
from ..net.stream import ORIGIN_TLS
from ..observe.stats import Stats
from ..settings.config import Config
from ..settings.routes import Parent, join_host_port
from .tracker import ConnectionTracker

if TYPE_CHECKING:
    from .connections import Manager

IDLE_WATCH_INTERVAL = 1.0  # how soon an idle connection that its origin closed is closed


@dataclass(eq=False)
class Lease:
    """One pooled connection checked out for one exchange.

    `target_form` is "origin" for a request-target of path only, "absolute" when the
    connection goes to an HTTP parent proxy, which needs the whole URL and its
    `proxy_authorization`. The holder ends it with release() or detach(); a release
    after either does nothing, so a `finally` can always release.
    """

    pool: Any
    conn: Any
    reused: bool
    target_form: str = "origin"
    proxy_authorization: str | None = None
    done: bool = False

    @property
    def sock(self) -> socket.socket:
        return self.conn.sock  # type: ignore[no-any-return]

    def release(self, clean: bool) -> None:
        """Back to the pool if `clean` (the exchange ended exactly at its framing), else closed."""
        if self.done:
            return
        self.done = True
        if not clean:
            self.conn.close()
            self.pool.give_back(None)  # keeps the pool's slot count, as urllib3 does
            return
        self.pool.give_back(self.conn)

    def detach(self) -> socket.socket:
        """The socket, for a new owner (an upgraded stream); the connection is done."""
        self.done = True
        sock = self.conn.detach()
        self.pool.give_back(None)
        return sock  # type: ignore[no-any-return]


def origin_key(scheme: str, host: str, port: int) -> str:
    """One spelling of an origin for gauges and caps: scheme://host:port, IPv6 in brackets."""
    return f"{scheme}://{join_host_port(host.strip('[]'), port)}"


class HostSlots:
    """Requests in flight per origin, with an optional cap (Go's MaxConnsPerHost).

    Entries exist only while an origin has requests in flight, so the table is bounded
    by max_clients. With a cap, a request waits for a slot up to the deadline, then 503.
    """

    def __init__(self, cap: int, wait: float) -> None:
        self._cap, self._wait = cap, wait
        self._in_use: dict[str, int] = {}
        self._changed = threading.Condition(threading.Lock())  # never re-entered: a plain lock

    def hold(self, origin: str) -> _Held:
        """A block during which `origin` has one more request in flight."""
        return _Held(self, origin)

    def _take(self, origin: str) -> None:
        deadline = time.monotonic() + self._wait
        with self._changed:
            while self._cap and self._in_use.get(origin, 0) >= self._cap:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Overloaded(
                        f"{origin} already has {self._cap} connections in use", cause=Cause.HOST_BUSY
                    )
                self._changed.wait(remaining)
            self._in_use[origin] = self._in_use.get(origin, 0) + 1

    def _give(self, origin: str) -> None:
        with self._changed:
            self._in_use[origin] -= 1
            if not self._in_use[origin]:
                del self._in_use[origin]
            if self._cap:  # without a cap nobody waits
                self._changed.notify()

    def in_use(self) -> dict[str, int]:
        with self._changed:
            return dict(self._in_use)


class _Held:
    """HostSlots.hold's block: a class, not a generator, as it runs once per request."""

    __slots__ = ("origin", "slots")

    def __init__(self, slots: HostSlots, origin: str) -> None:
        self.slots, self.origin = slots, origin

    def __enter__(self) -> None:
        self.slots._take(self.origin)

    def __exit__(self, *exc_info: object) -> None:
        self.slots._give(self.origin)


class OriginPool:
    """The bounded pool managers (direct, and one per parent proxy), the tracker of their
    open connections, and the idle reaper. The number of managers is bounded by the
    parents configured."""

    def __init__(self, config: Config, stats: Stats) -> None:
        self.config = config
        self.tracker = ConnectionTracker(stats)
        self.slots = HostSlots(config.max_conns_per_host, config.connect_timeout)
        self._stop = threading.Event()  # set by close(): no new connections from then on
        self._reaper = threading.Thread(target=self._reap, name="tinyproxy-py-reaper", daemon=True)
        self._managers_lock = threading.Lock()
        self._managers: dict[Parent | None, Manager] = {}

    def _manager(self, parent: Parent | None) -> Manager:
        manager = self._managers.get(parent)  # made once, read on every request: no lock
        if manager is not None:
            return manager
        with self._managers_lock:
            manager = self._managers.get(parent)
            if manager is None:
                from . import connections  # urllib3 and ssl load with the first plain request

                manager = self._managers[parent] = connections.new_manager(self.config, parent, self.tracker)
            return manager

    def checkout(
        self,
        scheme: str,
        host: str,
        port: int,
        parent: Parent | None,
        *,
        fresh: bool = False,
        dialer: Dialer = DIRECT,
    ) -> Lease:
        """A connected connection to origin (scheme, host, port), through `parent` if given.

        An idle pooled one if there is one (urllib3 drops it if its origin closed it),
        else a new one dialled with `dialer`; `fresh` always dials anew. A pooled one was
        dialled for another client, so `dialer` judges its address again (direct ones:
        a parent resolves for itself). Dial and TLS failures raise the ProxyError the
        client should see. The caller owns the lease.
        """
        if self._stop.is_set():  # a retry during stop() would otherwise dial again
            raise Overloaded("the proxy is shutting down", cause=Cause.SHUTDOWN)
        to_proxy = parent is not None and parent.scheme == "http" and scheme == "http"
        manager = self._manager(parent)
        if to_proxy:
            assert parent is not None
            pool = manager.host_pool("http", parent.host, parent.port)
        else:
            pool = manager.host_pool(scheme, host, port)
        conn: Any = pool.take()
        if fresh and conn.sock is not None:
            conn.close()  # the object and its slot are kept; it dials anew below
        if conn.sock is not None and not conn.dialer.same_overrides(dialer):
            conn.close()  # dialled before a reload moved its name: it may go elsewhere now
        reused = conn.sock is not None
        if reused and parent is None:
            try:
                dialer.check(conn.sock)
            except OSError:  # reset since urllib3 looked: dial anew below
                conn.close()
                reused = False
            except BaseException:
                pool.give_back(conn)  # fine for clients allowed there: back to the pool
                raise
        if not reused:
            conn.dialer = dialer
            try:
                conn.connect()
            except BaseException as exc:
                conn.close()
                pool.give_back(None)
                raise _connect_error(exc, scheme, host, port, parent) from exc
        return Lease(
            pool,
            conn,
            reused,
            "absolute" if to_proxy else "origin",
            parent.proxy_authorization() if to_proxy and parent is not None else None,
        )

    def start(self) -> None:
        self._reaper.start()

    def _reap(self) -> None:
        """Close idle connections past the idle timeout, even for hosts never asked for again."""
        interval = min(self.config.pool_idle_timeout / 4, IDLE_WATCH_INTERVAL)
        while not self._stop.wait(interval):
            for pool in self._pools():
                pool.close_idle(older_than=self.config.pool_idle_timeout, stirring=True)

    def _pools(self) -> list[Any]:
        with self._managers_lock:
            managers = list(self._managers.values())
        return [pool for manager in managers for pool in manager.host_pools()]

    def usage(self) -> dict[str, dict[str, int]]:
        """Connections per origin, {"http://host:port": {"in_use": n, "idle": n}}, for the stats.

        Through an HTTP parent, plain requests share pooled connections to the parent:
        those are listed under the parent's address.
        """
        usage: dict[str, dict[str, int]] = {}
        for pool in self._pools():
            key = origin_key(pool.scheme, pool.host, pool.port)
            usage.setdefault(key, {"in_use": 0, "idle": 0})["idle"] += pool.idle_count()
        for origin, count in self.slots.in_use().items():
            usage.setdefault(origin, {"in_use": 0, "idle": 0})["in_use"] = count
        return usage

    def close(self) -> None:
        """Stop the reaper, close idle connections and abort those in use (their threads fail fast)."""
        self._stop.set()
        if self._reaper.is_alive():
            self._reaper.join(timeout=5.0)  # it wakes at once: _stop is set
        with self._managers_lock:
            managers = list(self._managers.values())
        for manager in managers:
            manager.clear()
        self.tracker.abort_all()


def _connect_error(
    exc: BaseException, scheme: str, host: str, port: int, parent: Parent | None
) -> BaseException:
    """What a client is told when a new connection could not be set up.

    The dial itself already raises ProxyErrors (net/dialer.py, net/chain.py); what is
    left is TLS with the origin, and errors of our own making, which pass unchanged.
    """
    if isinstance(exc, ProxyError) or not isinstance(exc, OSError):  # TLS errors are OSErrors
        return exc
    origin = join_host_port(host, port)
    if parent is not None:
        origin += f" (via {label(parent)})"
    what = "timed out" if isinstance(exc, TimeoutError) else "failed"
    return ORIGIN_TLS.of(exc, f"TLS with {origin} {what}")
