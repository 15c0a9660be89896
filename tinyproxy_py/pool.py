"""The bounded urllib3 PoolManager that carries plain HTTP to origins.

Bounds: `pool_hosts` host pools (LRU), `pool_idle_per_host` idle connections per host
(`block=False`: extra connections are made when needed and closed when returned to a
full pool), connect and read timeouts on every connection, no retries or redirects
(forward.py decides). The connection classes report to a tracker so the proxy knows
which upstream sockets are open (gauges, forced shutdown) and whether the request in
flight on this thread went over a reused connection (the one retry we allow).
Imports: config, stats; urllib3, certifi.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse

from .config import Config
from .errors import Overloaded
from .stats import Stats
from .upstream import Upstream, join_host_port
from .upstream_connect import connect_through


class ConnectionTracker:
    """Knows every open upstream connection of one pool manager."""

    def __init__(self, stats: Stats) -> None:
        self._lock = threading.Lock()
        self._open: set[HTTPConnection] = set()
        self._local = threading.local()
        self._stats = stats

    def opened(self, conn: HTTPConnection) -> None:
        with self._lock:
            if conn not in self._open:
                self._open.add(conn)
                self._stats.adjust("upstream_open", 1)

    def closed(self, conn: HTTPConnection) -> None:
        with self._lock:
            if conn in self._open:
                self._open.discard(conn)
                self._stats.adjust("upstream_open", -1)

    def sending(self, reused: bool) -> None:
        self._local.reused = reused

    def last_request_reused(self) -> bool:
        """Whether this thread's latest request went over a previously used connection."""
        return bool(getattr(self._local, "reused", False))

    def abort_all(self) -> None:
        """Shut down every open upstream socket, waking threads blocked reading them."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                try:
                    # The base method: SSLSocket.shutdown would tear down its SSL
                    # object under the thread that is still using it.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class _TrackedConnectionMixin:
    tracker: ConnectionTracker | None = None
    _requests_sent = 0
    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.tracker is not None:
            self.tracker.opened(self)  # type: ignore[arg-type]

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.sending(self._requests_sent > 0 and self.sock is not None)
        self._requests_sent += 1
        super().request(*args, **kwargs)  # type: ignore[misc]

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            self._requests_sent = 0
            if self.tracker is not None:
                self.tracker.closed(self)  # type: ignore[arg-type]


class _HTTPConnection(_TrackedConnectionMixin, HTTPConnection):
    pass


class _HTTPSConnection(_TrackedConnectionMixin, HTTPSConnection):
    pass


class _TrackedPoolMixin:
    tracker: ConnectionTracker
    pool: queue.LifoQueue[Any] | None

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        conn.tracker = self.tracker
        return conn

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn.idle_since = time.monotonic()
            if self.pool is not None and self.pool.full():
                conn.close()  # quietly: urllib3 would log a warning for every surplus connection
                return
        super()._put_conn(conn)  # type: ignore[misc]

    def close_idle(self, older_than: float = 0.0) -> int:
        """Close pooled connections idle for `older_than` seconds or more; never one in use.

        Connections in use are not in the queue, and holding the queue's mutex keeps any
        thread from taking one out while we look.
        """
        idle_queue, now, closed = self.pool, time.monotonic(), 0
        if idle_queue is None:
            return 0
        with idle_queue.mutex:
            for conn in idle_queue.queue:
                if conn is not None and conn.sock is not None and now - conn.idle_since >= older_than:
                    conn.close()
                    closed += 1
        return closed

    def idle_count(self) -> int:
        idle_queue = self.pool
        if idle_queue is None:
            return 0
        with idle_queue.mutex:
            return sum(1 for conn in idle_queue.queue if conn is not None and conn.sock is not None)


class _HTTPPool(_TrackedPoolMixin, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_TrackedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _TrackedManagerMixin:
    tracker: ConnectionTracker

    def _new_pool(self, scheme: str, host: str, port: int, request_context: Any = None) -> Any:
        pool = super()._new_pool(scheme, host, port, request_context)  # type: ignore[misc]
        pool.tracker = self.tracker
        return pool


class _PoolManager(_TrackedManagerMixin, urllib3.PoolManager):
    pass


class _ProxyManager(_TrackedManagerMixin, urllib3.ProxyManager):
    def _set_proxy_headers(self, url: str, headers: Any = None) -> Any:
        # urllib3 would add "Accept: */*" (and a Host we already set): the client's
        # headers go as they are, no invented ones.
        return headers


class _SocksConnectionMixin:
    """Dial through a SOCKS5 upstream instead of connecting to the origin directly."""

    upstream: Upstream
    host: str
    port: int
    timeout: Any

    def _new_conn(self) -> socket.socket:
        # Handshake failures raise UpstreamError/UpstreamTimeout, not OSError: urllib3 lets
        # them through (closing this connection) and they already name the upstream.
        sock, _ = connect_through(self.upstream, self.host, self.port, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _socks_pool_classes(upstream: Upstream) -> dict[str, type]:
    """Pool classes whose connections go through `upstream` (bound as a class attribute)."""
    attrs = {"upstream": upstream}
    http = type("SocksHTTPConnection", (_SocksConnectionMixin, _HTTPConnection), attrs)
    https = type("SocksHTTPSConnection", (_SocksConnectionMixin, _HTTPSConnection), attrs)
    return {
        "http": type("SocksHTTPPool", (_HTTPPool,), {"ConnectionCls": http}),
        "https": type("SocksHTTPSPool", (_HTTPSPool,), {"ConnectionCls": https}),
    }


def origin_key(scheme: str, host: str, port: int) -> str:
    """One spelling of an origin for gauges and caps: scheme://host:port, IPv6 in brackets."""
    host = host.strip("[]")
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class HostSlots:
    """Requests in flight per origin, with an optional cap (Go's MaxConnsPerHost).

    Entries exist only while an origin has requests in flight, so the table is bounded
    by max_clients. With a cap, a request waits for a slot up to the deadline, then 503.
    """

    def __init__(self, cap: int, wait: float) -> None:
        self._cap, self._wait = cap, wait
        self._in_use: dict[str, int] = {}
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, origin: str) -> Iterator[None]:
        deadline = time.monotonic() + self._wait
        with self._changed:
            while self._cap and self._in_use.get(origin, 0) >= self._cap:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Overloaded(
                        f"{origin} already has {self._cap} connections in use", cause="host-busy"
                    )
                self._changed.wait(remaining)
            self._in_use[origin] = self._in_use.get(origin, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                self._in_use[origin] -= 1
                if not self._in_use[origin]:
                    del self._in_use[origin]
                self._changed.notify()

    def in_use(self) -> dict[str, int]:
        with self._changed:
            return dict(self._in_use)


class UpstreamPool:
    """The bounded pool managers (direct, and one per upstream proxy), the tracker of their
    open connections, and the idle reaper. The number of managers is bounded by the
    upstreams configured."""

    def __init__(self, config: Config, stats: Stats) -> None:
        self.config = config
        self.tracker = ConnectionTracker(stats)
        self.slots = HostSlots(config.max_conns_per_host, config.connect_timeout)
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="tinyproxy-py-reaper", daemon=True)
        self._managers_lock = threading.Lock()
        self._managers: dict[Upstream | None, urllib3.PoolManager] = {}

    def _manager(self, via: Upstream | None) -> urllib3.PoolManager:
        with self._managers_lock:
            manager = self._managers.get(via)
            if manager is None:
                manager = self._managers[via] = self._new_manager(via)
            return manager

    def _new_manager(self, via: Upstream | None) -> urllib3.PoolManager:
        config = self.config
        settings: dict[str, Any] = {
            "num_pools": config.pool_hosts,
            "maxsize": config.pool_idle_per_host,
            "block": False,
            "timeout": urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
            "retries": False,
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": config.ca_bundle or certifi.where(),
        }
        manager: urllib3.PoolManager
        if via is not None and via.scheme == "http":
            auth = via.proxy_authorization()
            headers = {"Proxy-Authorization": auth} if auth else None
            manager = _ProxyManager(f"http://{via.authority}", proxy_headers=headers, **settings)
        else:
            manager = _PoolManager(**settings)
        manager.tracker = self.tracker
        if via is not None and via.scheme == "socks5":
            manager.pool_classes_by_scheme = _socks_pool_classes(via)
        else:
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        # urllib3 does not close an evicted host pool (a80c248c: another thread may still
        # be using it). Close its idle connections; one in use goes back into the evicted
        # pool when released, and urllib3's finalizer closes it once the pool is unreferenced.
        manager.pools.dispose_func = _close_all_idle
        return manager

    def start(self) -> None:
        self._reaper.start()

    def _reap(self) -> None:
        """Close idle connections past the idle timeout, even for hosts never asked for again."""
        interval = min(self.config.pool_idle_timeout / 4, 5.0)
        while not self._stop.wait(interval):
            for pool in self._pools():
                pool.close_idle(older_than=self.config.pool_idle_timeout)

    def _pools(self) -> list[_TrackedPoolMixin]:
        with self._managers_lock:
            managers = list(self._managers.values())
        found: list[Any] = []
        for manager in managers:
            with manager.pools.lock:
                found.extend(manager.pools._container.values())
        return found

    def usage(self) -> dict[str, dict[str, int]]:
        """Connections per origin, {"http://host:port": {"in_use": n, "idle": n}}, for the stats.

        Through an HTTP upstream, plain requests share pooled connections to the upstream:
        those are listed under the upstream's address.
        """
        usage: dict[str, dict[str, int]] = {}
        for pool in self._pools():
            key = origin_key(pool.scheme, pool.host, pool.port)  # type: ignore[attr-defined]
            usage.setdefault(key, {"in_use": 0, "idle": 0})["idle"] += pool.idle_count()
        for origin, count in self.slots.in_use().items():
            usage.setdefault(origin, {"in_use": 0, "idle": 0})["in_use"] = count
        return usage

    def urlopen(
        self,
        method: str,
        origin: tuple[str, str, int],
        path: str,
        body: Any,
        headers: Any,
        via: Upstream | None,
    ) -> BaseHTTPResponse:
        """Send a request to origin (scheme, host, port), through `via` if given.

        The caller owns the response and must release or close it. The origin is passed
        already parsed: urllib3 would otherwise parse the URL again on every request.
        """
        scheme, host, port = origin
        manager = self._manager(via)
        options: dict[str, Any] = {
            "body": body,
            "headers": headers,
            "redirect": False,
            "retries": False,
            "preload_content": False,
            "decode_content": False,
            "release_conn": False,
        }
        if isinstance(manager, urllib3.ProxyManager):  # it decides absolute form vs CONNECT
            url = f"{scheme}://{join_host_port(host, port)}{path}"
            return manager.urlopen(method, url, **options)
        pool = manager.connection_from_host(host, port, scheme)
        return pool.urlopen(method, path, assert_same_host=False, **options)

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


def _close_all_idle(pool: Any) -> None:
    pool.close_idle()
