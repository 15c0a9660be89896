"""ProxyServer: the listening socket, bounded client threads, start and stop.

A ThreadingTCPServer runs one thread per client connection, at most `max_clients`;
beyond that a client gets a canned 503 on the accepting thread and is closed at once
instead of waiting in a queue. `stop()` stops accepting, lets in-flight requests finish
within the grace period, then closes client sockets, tunnels and the pool.
Imports: handler, tunnel, pool, config, stats, errors.
"""

from __future__ import annotations

import logging
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from .config import Config, load_credentials
from .errors import Overloaded, render
from .handler import ProxyRequestHandler
from .policy import Policy, check_exposure
from .pool import UpstreamPool
from .stats import Stats
from .tunnel import TunnelHub

log = logging.getLogger(__name__)

_OVERLOADED = render(Overloaded("too many client connections"))


class _ThreadingServer(socketserver.ThreadingTCPServer):
    # Threads are tracked by ProxyServer (it joins them with a deadline on stop), so
    # socketserver need not keep a list of its own nor block forever in server_close.
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # the kernel's accept backlog, not a queue of ours

    def __init__(self, proxy: ProxyServer, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.proxy = proxy
        handler = type("Handler", (ProxyRequestHandler,), {"proxy": proxy})
        super().__init__((proxy.config.host, proxy.config.port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.proxy._slots.acquire(blocking=False):
            self.proxy.stats.count("errors.overloaded")
            log.warning(
                "rejecting %s: max_clients (%d) reached", client_address[0], self.proxy.config.max_clients
            )
            request.settimeout(1.0)
            try:
                request.sendall(_OVERLOADED)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.proxy._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            with self.proxy.stats.live("handler_threads"), self.proxy._registered(request):
                super().process_request_thread(request, client_address)
        finally:
            self.proxy._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unexpected error serving %s", client_address)


class ProxyServer:
    """A running proxy. Use as a context manager, or call start() and stop().

    >>> with ProxyServer(Config(port=0)) as proxy:
    ...     proxy.url  # 'http://127.0.0.1:43121'
    """

    def __init__(self, config: Config | None = None) -> None:
        """Check the configuration (ValueError names what is wrong); nothing is opened yet."""
        self.config = config or Config()
        users = load_credentials(self.config.auth_file) if self.config.auth_file else ()
        check_exposure(self.config, has_users=bool(users))
        # A token unique to this instance, carried in our Via member: seeing it come
        # back in a request means the request looped through us.
        token = secrets.token_hex(4)
        self.pseudonym = f"{self.config.via_name} ({token})" if self.config.via_name else ""
        self.policy = Policy(self.config, users=users, via_token=self.pseudonym)
        self.stats = Stats()
        self._slots = threading.BoundedSemaphore(self.config.max_clients)
        self._clients_lock = threading.Lock()
        self._clients: set[socket.socket] = set()
        self._server: _ThreadingServer | None = None
        self.draining = threading.Event()  # set once stop() begins: no more keep-alive
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        """Bind, then serve from a background thread. Returns once connections are accepted."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        self.pool = UpstreamPool(self.config, self.stats)
        self.hub = TunnelHub(self.config, self.stats)
        try:
            self._server = _ThreadingServer(self, family)
        except BaseException:
            self.hub.close()
            raise
        self.hub.start()
        self.pool.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="tinyproxy-py-accept",
            daemon=True,
        )
        self._thread.start()
        log.info("listening on %s", self.url)

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close everything."""
        server, self._server = self._server, None
        if server is None:
            return
        self.draining.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
        if not self._wait_until_zero("requests_in_flight", self.config.shutdown_grace):
            log.warning(
                "grace period over: aborting %d requests in flight", self.stats.gauge("requests_in_flight")
            )
        self._abort_clients()
        self.pool.close()
        self.hub.close()
        self._wait_until_zero("clients", 5.0)
        log.info("stopped")

    def _wait_until_zero(self, gauge: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.stats.gauge(gauge) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.stats.gauge(gauge)

    def _abort_clients(self) -> None:
        with self._clients_lock:
            clients = list(self._clients)
        for sock in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @contextmanager
    def _registered(self, sock: socket.socket) -> Iterator[None]:
        """Count a client connection and let stop() reach its socket while it is open."""
        with self._clients_lock:
            self._clients.add(sock)
        try:
            with self.stats.live("clients"):
                yield
        finally:
            with self._clients_lock:
                self._clients.discard(sock)

    # The listening socket, the hub's epoll object and its wake-up socket pair.
    _FIXED_FDS = 4

    def resources(self) -> dict[str, int]:
        """Live objects by kind, and how many file descriptors they account for.

        Compare `fds_accounted` with the process's open descriptors (minus those it had
        before the proxy started) to detect a leak: the difference must not grow.
        """
        gauges = self.stats.snapshot()["gauges"]
        assert isinstance(gauges, dict)
        upstream_idle = sum(usage["idle"] for usage in self.pool.usage().values())
        upstream_open = gauges.get("upstream_open", 0)
        counts = {
            "clients": gauges.get("clients", 0),
            "handler_threads": gauges.get("handler_threads", 0),
            "requests_in_flight": gauges.get("requests_in_flight", 0),
            "tunnels": self.hub.count,
            "upstream_open": upstream_open,
            "upstream_idle": upstream_idle,
            "upstream_in_use": upstream_open - upstream_idle,
        }
        counts["fds_accounted"] = self._FIXED_FDS + counts["clients"] + 2 * counts["tunnels"] + upstream_open
        return counts
