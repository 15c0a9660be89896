"""The listening side: one TCPServer per address, the client slots every listener
shares (Clients), and accept() that pauses instead of spinning without descriptors.
Each accepted connection becomes a job for a handler thread (net.threads).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..errors import EXHAUSTED, Overloaded
from ..net.clientconn import ClientConnection, send_quietly, shut_down
from ..net.threads import HandlerThreads
from ..observe.quietlog import EpisodeLog
from ..observe.stats import Stats
from ..settings.config import Config
from ..settings.routes import join_host_port
from ..wire.writer import render
from .handler import ClientHandler, Services

if TYPE_CHECKING:
    from .tls import ServerTLS  # loads ssl: only a TLS listener has one

log = logging.getLogger(__name__)

_OVERLOADED = render(Overloaded("too many client connections"))
EVICTION_WAIT = 1.0  # how long a new connection waits for an evicted one's thread to end
ACCEPT_PAUSE = (0.1, 1.0)  # out of descriptors: accepts pause this long, doubling up to the second
_rejections = EpisodeLog(log, logging.WARNING)
# At the open-files limit, each freed descriptor admits one connection before the next
# pause: episodes, not a line per connection.
_starved, _recovered = EpisodeLog(log, logging.WARNING), EpisodeLog(log, logging.INFO)


class Clients:
    """The client connections of every listener: at most `max_clients` at once, each
    counted and reachable by stop() while it is open, and the threads that serve them.

    Slots cannot be hoarded by idle connections: when none is free, the connection that
    has waited longest for its next request is closed to admit the new one (as nginx
    does when it runs out of connections)."""

    def __init__(self, max_clients: int, stats: Stats) -> None:
        self.max_clients, self.stats = max_clients, stats
        self._slots = threading.BoundedSemaphore(max_clients)
        self._lock = threading.Lock()
        self._open: set[ClientConnection] = set()
        self._per_address: Counter[str] = Counter()  # claimed connections by client address
        # A thread frees its connection's slot once it is idle again: never more
        # threads than slots.
        self.threads = HandlerThreads(max_clients, "tinyproxy-py-handler", stats, done=self.free_slot)

    def take_slot(self) -> bool:
        """A slot now, or after closing the longest-idle connection (waiting a moment
        for its thread to end); False if every connection is busy."""
        if self._slots.acquire(blocking=False):
            return True
        with self._lock:
            evicted = self._evict_idle(None)
        return evicted and self._slots.acquire(timeout=EVICTION_WAIT)

    def free_slot(self) -> None:
        self._slots.release()

    def _evict_idle(self, address: str | None) -> bool:
        """Close the connection idle longest (of `address`, if given); whether there was one."""
        now = time.monotonic()
        idle = [c for c in self._open if address in (None, c.address) and c.evictable(now)]
        oldest = min(idle, key=lambda c: c.idle_since or 0.0, default=None)
        if oldest is None:
            return False
        oldest.evict()
        self.stats.count("clients_evicted")
        return True

    def claim_address(self, client: ClientConnection, address: str, cap: int) -> None:
        """Count `client` as one of `address`'s connections. At `cap` (0: none), the
        address's longest-idle connection makes room (it ends in a moment), else Overloaded."""
        with self._lock:
            if cap and self._per_address[address] >= cap and not self._evict_idle(address):
                raise Overloaded(f"too many connections from {address} (max {cap})")
            self._per_address[address] += 1
            client.address = address

    def register(self, client: ClientConnection) -> None:
        """Open: counted, and reachable by abort(). unregister() when it ends."""
        with self._lock:
            self._open.add(client)
        self.stats.adjust("clients", 1)

    def unregister(self, client: ClientConnection) -> None:
        self.stats.adjust("clients", -1)
        with self._lock:
            self._open.discard(client)
            if client.address:
                self._per_address[client.address] -= 1
                if not self._per_address[client.address]:
                    del self._per_address[client.address]

    def abort(self) -> None:
        """Shut every open client connection down: its thread sees EOF and ends."""
        with self._lock:
            clients = list(self._open)
        for client in clients:
            shut_down(client.sock)


class Listener(socketserver.TCPServer):
    """One listening address: accepts clients and hands each to a handler thread, within
    the slots every listener shares. Handlers get `services` (the ProxyServer, see
    handler.Services) instead of this server."""

    allow_reuse_address = True
    request_queue_size = 128  # the kernel's accept backlog, not a queue of ours

    def __init__(
        self,
        address: tuple[str, int],
        services: Services,
        config: Config,
        clients: Clients,
        tls: ServerTLS | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.allow_reuse_port = config.workers > 1  # sibling workers share the port
        # With several addresses, `::` is IPv6 only (as tinyproxy does): `Listen ::` and
        # `Listen 0.0.0.0` together must not collide. A lone `::` stays dual-stack.
        self.v6only = len(config.host) > 1
        self.services, self.clients = services, clients
        self.tls = tls  # set: a TLS listener, whose clients handshake first
        self._starved_since: float | None = None  # out of descriptors since (monotonic)
        self._accept_pause = ACCEPT_PAUSE[0]
        self._stopping = threading.Event()
        # finish_request builds the handler, with the services instead of this server
        super().__init__(address, socketserver.BaseRequestHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """accept(), pausing when the process is out of descriptors (or the host of
        buffers): the connection stays in the kernel's queue, and retrying at once
        would spin a CPU for as long as that lasts (nginx and HAProxy pause too)."""
        try:
            request = super().get_request()
        except OSError as exc:
            if exc.errno in EXHAUSTED:
                self._starving(exc)
            raise  # socketserver skips this round
        if self._starved_since is not None:
            _recovered(
                "accepting again after %.1f s out of resources", time.monotonic() - self._starved_since
            )
            self._starved_since, self._accept_pause = None, ACCEPT_PAUSE[0]
        return request

    def _starving(self, exc: OSError) -> None:
        if self._starved_since is None:
            self._starved_since = time.monotonic()
            _starved(
                "cannot accept on port %s: %s; pausing accepts until resources free up "
                "(raise the open-files limit or lower max_clients/max_tunnels)",
                self.server_address[1],
                exc.strerror,
            )
        self.clients.stats.count("accept_pauses")
        self._stopping.wait(self._accept_pause)
        self._accept_pause = min(self._accept_pause * 2, ACCEPT_PAUSE[1])

    def shutdown(self) -> None:
        self._stopping.set()  # a pause ends at once
        super().shutdown()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.v6only:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        """On the accepting thread: a slot, then a handler thread (the slot is freed
        when that thread is idle again); without a slot, the 503."""
        if not self.clients.take_slot():
            self.clients.stats.count("errors.overloaded")
            _rejections(
                "rejecting %s: max_clients (%d) reached and no connection is idle",
                client_address[0],
                self.clients.max_clients,
            )
            if self.tls is None:  # a TLS client cannot read a clear 503: just the close
                send_quietly(request, _OVERLOADED)
            self.shutdown_request(request)
            return
        self.clients.stats.adjust("opening_clients", 1)  # until its first request is done
        try:
            self.clients.threads.submit(_Accepted(self, request, client_address))
        except BaseException:  # socketserver logs it and closes the request
            self.clients.stats.adjust("opening_clients", -1)
            self.clients.free_slot()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """On a handler thread, as socketserver.ThreadingMixIn does it."""
        client: ClientConnection | None = None
        try:
            client = ClientConnection(request, self.services.runtime.config, self.services.draining)
            self.clients.register(client)
            with self.clients.stats.live("handler_threads"):
                ClientHandler(client, client_address, self.services, self.tls).handle()
        except Exception:
            self.handle_error(request, client_address)
        finally:
            try:
                sock = request if client is None else client.sock  # an SSLSocket after a handshake
                if client is not None and client.cut:
                    sock.close()  # a reset: shutdown() would send a FIN first
                elif client is None or not client.handed_off:  # else the hub owns it now
                    self.shutdown_request(sock)
            finally:
                if client is not None:
                    self.clients.unregister(client)

    def shutdown_request(self, request: Any) -> None:
        """TCPServer's FIN and close, after TLS's close_notify (not waiting for the
        client's): without it, a client reading up to the close would see a cut."""
        if hasattr(request, "unwrap"):
            try:
                request.unwrap()
            except (OSError, ValueError):  # unfinished handshake, no room, unread bytes
                pass
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unexpected error serving %s", client_address)


class _Accepted:
    """An accepted connection, as a job for a handler thread (net.threads.Job)."""

    __slots__ = ("client_address", "listener", "request")

    def __init__(self, listener: Listener, request: socket.socket, client_address: Any) -> None:
        self.listener, self.request, self.client_address = listener, request, client_address

    def run(self) -> None:
        self.listener.process_request_thread(self.request, self.client_address)

    def cancel(self, stopping: bool) -> None:
        self.listener.clients.stats.adjust("opening_clients", -1)
        self.listener.shutdown_request(self.request)


def bind(
    host: str, port: int, services: Services, config: Config, clients: Clients, tls: ServerTLS | None
) -> Listener:
    try:
        return Listener((host, port), services, config, clients, tls)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, join_host_port(host, port)) from exc
