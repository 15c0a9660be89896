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

import socket
import threading
from typing import Any

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse

from .config import Config
from .stats import Stats


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

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        conn.tracker = self.tracker
        return conn


class _HTTPPool(_TrackedPoolMixin, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_TrackedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _PoolManager(urllib3.PoolManager):
    tracker: ConnectionTracker

    def _new_pool(self, scheme: str, host: str, port: int, request_context: Any = None) -> Any:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.tracker = self.tracker  # type: ignore[attr-defined]
        return pool


class UpstreamPool:
    """One bounded PoolManager plus the tracker of its open connections."""

    def __init__(self, config: Config, stats: Stats) -> None:
        self.tracker = ConnectionTracker(stats)
        self._manager = _PoolManager(
            num_pools=config.pool_hosts,
            maxsize=config.pool_idle_per_host,
            block=False,
            timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=config.ca_bundle or certifi.where(),
        )
        self._manager.tracker = self.tracker
        self._manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def urlopen(self, method: str, url: str, body: Any, headers: Any) -> BaseHTTPResponse:
        """Send a request; the caller owns the response and must release or close it."""
        return self._manager.urlopen(
            method,
            url,
            body=body,
            headers=headers,
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
            release_conn=False,
        )

    def close(self) -> None:
        """Close idle connections and abort those in use (their threads then fail fast)."""
        self._manager.clear()
        self.tracker.abort_all()
