"""The per-client loop: read a head, dispatch it, repeat while keep-alive holds.

Rule: any ProxyError ends the connection; the reply it carries is sent if nothing of a
response has been sent yet. A CONNECT ends the loop too: the sockets go to the hub.
Imports: clientconn, forward, tunnel, http1, errors, stats.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import time
from typing import TYPE_CHECKING

from .clientconn import ClientConnection
from .errors import Aborted, BadRequest, Overloaded, ProxyError, render
from .forward import Outcome, forward
from .http1 import RequestHead
from .tunnel import dial

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger(__name__)
access_log = logging.getLogger("tinyproxy_py.access")

CONNECTION_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class ProxyRequestHandler(socketserver.BaseRequestHandler):
    """socketserver closes `self.request` after `handle()`, unless the hub took it."""

    proxy: ProxyServer  # set on the subclass the server builds

    def handle(self) -> None:
        config = self.proxy.config
        client = ClientConnection(self.request, config, self.proxy.draining)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.proxy.policy.check_client(self.client_address[0])
        except ProxyError as error:
            self._fail(error, None, client, time.monotonic())
            return
        idle_timeout = config.header_timeout
        while True:
            started = time.monotonic()
            head: RequestHead | None = None
            try:
                head = client.read_head(idle_timeout)
                if head is None:
                    return
                self._admit(head)
                if head.method == "CONNECT":
                    self._tunnel(head, client)
                    return
                outcome = self._forward(head, client)
            except ProxyError as error:
                self._fail(error, head, client, started)
                return
            self._log(head, outcome.status, outcome.bytes_down, started)
            if not outcome.keep_alive:
                return
            idle_timeout = config.client_idle_timeout

    def _admit(self, head: RequestHead) -> None:
        """Apply the policy (policy.py gives the order) before anything goes upstream."""
        if head.form == "origin":
            raise BadRequest("this is a proxy: send absolute-form requests (http://host/path)")
        policy = self.proxy.policy
        policy.check_credentials(head.get("Proxy-Authorization"))
        via = [value for name, value in head.headers if name.lower() == "via"]
        policy.check_loop(head.host, head.port, via, self.proxy.address)
        if head.method == "CONNECT":
            policy.check_connect_port(head.port)
        policy.check_host(head.host)

    def _forward(self, head: RequestHead, client: ClientConnection) -> Outcome:
        client_ip = self.client_address[0] if self.proxy.config.forwarded_for else None
        with self.proxy.stats.live("requests_in_flight"):
            return forward(head, client, self.proxy.pool, self.proxy.pseudonym, client_ip)

    def _tunnel(self, head: RequestHead, client: ClientConnection) -> None:
        """Dial the target, answer 200 and hand both sockets to the hub."""
        hub = self.proxy.hub
        if hub.full:
            raise Overloaded(f"too many open tunnels (max {hub.config.max_tunnels})")
        upstream: socket.socket | None = dial(head.host, head.port, self.proxy.config.connect_timeout)
        client_sock: socket.socket | None = None
        try:
            client.send(CONNECTION_ESTABLISHED)
            client_sock, pending = client.detach()
            label = f"{self.client_address[0]}:{self.client_address[1]} -> {head.target}"
            hub.adopt(client_sock, upstream, pending, label)  # type: ignore[arg-type]
            upstream = client_sock = None  # the hub owns them now
            self._log(head, 200, 0, time.monotonic())
        finally:
            for sock in (upstream, client_sock):
                if sock is not None:
                    sock.close()

    def _fail(
        self, error: ProxyError, head: RequestHead | None, client: ClientConnection, started: float
    ) -> None:
        self.proxy.stats.count(f"errors.{error.cause}")
        if not isinstance(error, Aborted):
            client.send_quietly(render(error))
        status = 0 if isinstance(error, Aborted) else error.status.value
        self._log(head, status, 0, started, cause=f"{error.cause}: {error.message}")

    def _log(self, head: RequestHead | None, status: int, sent: int, started: float, cause: str = "") -> None:
        self.proxy.stats.count(f"responses.{status // 100}xx" if status else "responses.none")
        if access_log.isEnabledFor(logging.INFO):
            request = f"{head.method} {head.target}" if head else "-"
            access_log.info(
                "%s %s %s %d %.3fs%s",
                self.client_address[0],
                request,
                status or "-",
                sent,
                time.monotonic() - started,
                f" ({cause})" if cause else "",
            )
