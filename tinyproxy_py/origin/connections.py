"""The urllib3 adapter: the one module that knows urllib3's insides. Its connection and
pool classes dial with net/dialer.py (or through a parent, net/chain.py), report every
connection to the pool's tracker and keep idle ones quietly; origin/pool.py uses only
the names defined here.

urllib3 names it relies on beyond its public API, and why (CI runs the wire tests with
the oldest urllib3 setup.cfg allows as well as the newest):
- `HTTPConnectionPool._get_conn` / `_put_conn`: take a pooled connection (or an empty
  slot) and give it back, because the proxy writes requests and reads responses itself
  instead of calling `urlopen`; `_put_conn` is overridden to close surplus connections
  without urllib3's warning and to stamp when one went idle.
- `HTTPConnectionPool.pool` (a `queue.LifoQueue`) and its `mutex`/`queue`: to count and
  close idle connections without taking them out (the reaper, the stats page).
- `PoolManager._merge_pool_kwargs`, `key_fn_by_scheme`, `connection_from_pool_key`: to
  build a host pool's key once per host instead of on every request.
- `PoolManager.pools` (a `RecentlyUsedContainer`): its `lock`, `_container` to list the
  host pools and `dispose_func` to close an evicted one's idle connections.
- `HTTPConnection.is_connected`, which `_get_conn` asks of a pooled connection.
- `pool_classes_by_scheme`, `ConnectionCls`, and classes built with `type()` per parent.
- `HTTPConnectionPool.QueueCls`: a queue of our own (`_IdleQueue`), which urllib3 only
  fills, `get`s and `put`s without blocking.

origin/pool.py imports this module when it builds its first pool manager: urllib3 brings
http.client and ssl, about 12 MiB of a process that may only ever tunnel. Relies on the
GIL for reads without a lock: `Manager._keys`, `_IdleQueue.full()` (as does
observe/stats.py for its counters; free-threaded Python is not supported).
"""

from __future__ import annotations

import queue
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..errors import BadGateway, Cause
from ..net import nowait
from ..net.chain import connect_through, dial_parent, label
from ..net.dialer import DIRECT, Dialer
from ..settings.config import Config
from ..settings.routes import Parent
from .tracker import ConnectionTracker


class Manager(urllib3.PoolManager):
    """A PoolManager that hands out its host pools by a key built once per host."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keys: dict[tuple[str, str, int], tuple[Any, dict[str, Any]]] = {}
        self._keys_bound = 4 * int(kwargs.get("num_pools", 10))

    def host_pool(self, scheme: str, host: str, port: int) -> Any:
        """connection_from_host, without building urllib3's 30-field pool key anew on
        every request (a tenth of a keep-alive request's Python time)."""
        key = self._keys.get((scheme, host, port))
        if key is None:
            context = self._merge_pool_kwargs(None)
            context.update(scheme=scheme, host=host, port=port)
            key = (self.key_fn_by_scheme[scheme](context), context)
            if len(self._keys) >= self._keys_bound:
                self._keys.clear()
            self._keys[(scheme, host, port)] = key
        pool_key, context = key
        return self.connection_from_pool_key(pool_key, request_context=dict(context))

    def host_pools(self) -> list[Any]:
        with self.pools.lock:
            return list(self.pools._container.values())


def new_manager(config: Config, parent: Parent | None, tracker: ConnectionTracker) -> Manager:
    """A bounded PoolManager whose connections reach origins directly or through `parent`."""
    manager = Manager(
        num_pools=config.pool_hosts,
        maxsize=config.pool_idle_per_host,
        block=False,
        timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
        retries=False,
        cert_reqs="CERT_REQUIRED",
        ca_certs=config.ca_bundle or certifi.where(),
    )
    manager.pool_classes_by_scheme = _pool_classes(parent, tracker)
    # urllib3 does not close an evicted host pool (a80c248c: another thread may still
    # be using it). Close its idle connections; one in use goes back into the evicted
    # pool when released, and urllib3's finalizer closes it once the pool is unreferenced.
    manager.pools.dispose_func = _close_all_idle
    return manager


class _DialingConnectionMixin:
    """Connections dial with net/dialer.py (or through a parent proxy, net/chain.py) and report to a tracker.

    `parent` and `to_proxy` are bound per pool class: `parent` set and `to_proxy` False tunnels
    through that parent (CONNECT or SOCKS5) to the origin; `to_proxy` True is a plain
    connection to the HTTP parent itself, for absolute-form requests. Dial
    failures are ProxyErrors naming the right peer; urllib3 lets them through.
    """

    tracker: ConnectionTracker | None = None
    parent: Parent | None = None
    to_proxy = False
    dialer: Dialer = DIRECT  # set by checkout() for each connection it dials
    host: str
    port: int
    timeout: Any
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        if self.parent is None:
            return self.dialer.dial((self.host, self.port), self.timeout)
        if self.to_proxy:
            return dial_parent(self.parent, self.timeout, self.dialer)
        sock, early = connect_through(
            self.parent, self.host, self.port, timeout=self.timeout, dialer=self.dialer
        )
        if early:  # the origin speaks after we do: bytes now are not the origin's
            sock.close()
            raise BadGateway(f"{label(self.parent)} sent bytes after its 200", cause=Cause.PARENT_PROTOCOL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        tls: Any = self.sock  # an SSLSocket, or urllib3's SSLTransport (TLS in TLS)
        if hasattr(tls, "suppress_ragged_eofs"):
            # A close without close_notify is a cut, not the end of a close-delimited
            # body (RFC 9112 §9.8): recv raises SSLEOFError instead of returning b"".
            tls.suppress_ragged_eofs = False
        if self.tracker is not None:
            self.tracker.opened(self)

    @property
    def is_connected(self) -> bool:
        """urllib3's test of a pooled connection before reuse (anything to read, or its
        EOF, means it is done), with a peek that keeps the GIL instead of a poll."""
        if self.sock is None:
            return False
        try:
            return nowait.peek(self.sock) is None
        except OSError:
            return False

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            if self.tracker is not None:
                self.tracker.closed(self)

    def detach(self) -> socket.socket:
        """Take the socket away from this connection (an upgraded stream leaves the pool)."""
        sock = self.sock
        assert sock is not None
        self.sock = None
        if self.tracker is not None:
            self.tracker.closed(self)
        return sock


class _IdleQueue(queue.LifoQueue):  # type: ignore[type-arg]
    """A host pool's queue of idle connections (and free slots), without Queue's
    Condition round trips: nobody waits on it (the pools are made with block=False), so
    a plain lock is all that get and put need. At 50 busy clients, Queue's get, put and
    full() were a fifth of the Python time per request."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            raise RuntimeError("host pools never wait for a connection: make them with block=False")
        with self.mutex:
            if not self.queue:
                raise queue.Empty
            return self.queue.pop()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self.mutex:
            if 0 < self.maxsize <= len(self.queue):
                raise queue.Full
            self.queue.append(item)

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self.queue)  # a glance: put() decides under the lock


class _TrackedPoolMixin:
    QueueCls = _IdleQueue
    tracker: ConnectionTracker
    pool: queue.LifoQueue[Any] | None

    def take(self) -> Any:
        """A pooled connection, or an unconnected one in an empty slot: one of the
        pool's slots either way, for give_back()."""
        return self._get_conn()  # type: ignore[attr-defined]

    def give_back(self, conn: Any) -> None:
        """Back to the pool; None frees the slot of a connection that was closed."""
        self._put_conn(conn)

    def _put_conn(self, conn: Any) -> None:
        if self.pool is not None and self.pool.full():
            if conn is not None:  # quietly: urllib3 would log a warning for every surplus one
                conn.close()
            return
        if conn is not None:
            conn.idle_since = time.monotonic()
        super()._put_conn(conn)  # type: ignore[misc]

    def close_idle(self, older_than: float = 0.0, *, stirring: bool = False) -> int:
        """Close pooled connections idle for `older_than` seconds or more, and with
        `stirring` those whose origin closed them or sent bytes; never one in use.

        Connections in use are not in the queue, and holding the queue's mutex keeps any
        thread from taking one out while we look.
        """
        idle_queue, now, closed = self.pool, time.monotonic(), 0
        if idle_queue is None:
            return 0
        with idle_queue.mutex:
            idle = [conn for conn in idle_queue.queue if conn is not None and conn.sock is not None]
            stirred = _readable(conn.sock for conn in idle) if stirring else set()
            for conn in idle:
                if now - conn.idle_since >= older_than or conn.sock.fileno() in stirred:
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
    pass  # ConnectionCls: _pool_classes sets it


class _HTTPSPool(_TrackedPoolMixin, HTTPSConnectionPool):
    pass


def _pool_classes(parent: Parent | None, tracker: ConnectionTracker) -> dict[str, type]:
    """Pool classes whose connections report to `tracker` and dial as `parent` needs.

    Without `parent`, and with a SOCKS5 parent, both schemes go to the origin (through
    the parent for SOCKS5). With an HTTP parent, https:// origins are reached through
    a CONNECT tunnel and http:// requests go to the parent itself in absolute form, so
    its "http" pool is a pool of plain connections to the parent.
    """
    attrs = {"tracker": tracker, "parent": parent}
    to_proxy = parent is not None and parent.scheme == "http"
    http = type("HTTPConnection", (_DialingConnectionMixin, HTTPConnection), {**attrs, "to_proxy": to_proxy})
    https = type("HTTPSConnection", (_DialingConnectionMixin, HTTPSConnection), attrs)
    return {
        "http": type("HTTPPool", (_HTTPPool,), {"ConnectionCls": http, "tracker": tracker}),
        "https": type("HTTPSPool", (_HTTPSPool,), {"ConnectionCls": https, "tracker": tracker}),
    }


def _readable(socks: Iterator[socket.socket]) -> set[int]:
    """The descriptors among `socks` with something to read (bytes or EOF) right now."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    return {fd for fd, _ in poller.poll(0)}


def _close_all_idle(pool: Any) -> None:
    pool.close_idle()
