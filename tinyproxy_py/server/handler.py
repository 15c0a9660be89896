"""The per-client loop: read a head, dispatch it, repeat while keep-alive holds.

Rule: a ProxyError ends the connection; the reply it carries is sent if nothing of a
response has been sent yet. One exception: a 407 to a request with nothing left unread
keeps the connection for the client's retry with credentials. A CONNECT ends the loop
too: the sockets go to the hub.
The handler knows its server only as `Services`, the few things it uses of it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import (
    Aborted,
    BadRequest,
    Cause,
    NotFound,
    Overloaded,
    ProxyAuthRequired,
    ProxyError,
    exhausted,
)
from ..net.chain import connect_through
from ..net.clientconn import ClientConnection
from ..net.dialer import DIRECT, Dialer, is_local_address
from ..net.faultstream import shaping, target_stream
from ..net.stream import ORIGIN_CONNECT
from ..observe import statspage
from ..observe.accesslog import AccessRecord
from ..observe.quietlog import EpisodeLog
from ..observe.statspage import Snapshot
from ..origin.exchange import Outcome, Route, forward
from ..settings.faults import ANSWERED, Faults, Rule
from ..wire.proxyprotocol import BadProxyHeader
from ..wire.request import RequestHead
from ..wire.writer import CONNECTION_ESTABLISHED, reason_phrase, render, response_head, via_value
from . import faultapi

if TYPE_CHECKING:
    from ..observe.stats import Stats
    from ..origin.pool import OriginPool
    from ..settings.policy import Policy
    from ..tunnel.hub import TunnelHub
    from .runtime import Runtime
    from .tls import ServerTLS

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz"})
# Connections closed for a missing or bad PROXY header: anyone can send them by the thousand.
_strangers = EpisodeLog(log, logging.WARNING)


class Services(Protocol):
    """What a handler uses of the proxy that runs it (server.proxy.ProxyServer)."""

    runtime: Runtime  # replaced whole by a reload: read it once per request
    stats: Stats
    faults: Faults
    pool: OriginPool
    hub: TunnelHub
    draining: threading.Event  # set by drain(): /readyz 503, no more keep-alive
    cut_off: threading.Event  # set when stop()'s grace period is over and it cuts the rest

    addresses: tuple[tuple[str, int], ...]  # every address it listens on

    def snapshot(self) -> Snapshot: ...

    def wants_access_records(self) -> bool: ...

    def record_access(self, record: AccessRecord) -> None: ...

    def tunnel_opened(self, record: AccessRecord) -> None: ...

    def claim_address(self, client: ClientConnection, address: str) -> None: ...


class ClientHandler:
    """Serves one client connection on the listener's thread for it.

    The listener closes the client's socket after `handle()` returns or raises, unless
    the hub took it (`client.handed_off`). The listener counted the connection as opening when it
    accepted it; the handler stops counting it once its first request is done (or the
    connection ends first): a graceful stop waits a moment for those.
    """

    def __init__(
        self,
        client: ClientConnection,
        client_address: tuple[Any, ...],
        server: Services,
        tls: ServerTLS | None = None,
    ) -> None:
        self.client = client
        self.tls = tls  # a TLS listener's: the client handshakes first
        self.client_address = client_address
        self.server = server
        self.parent_url = ""  # the parent proxy the current request goes through
        self._dialing: tuple[Runtime | None, Dialer] = (None, DIRECT)
        self._opening = True

    def handle(self) -> None:
        """Serve the connection; the listener closes it unless `client.handed_off` (the hub's now)."""
        try:
            self.client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve(self.client, self.server.runtime)
        finally:
            self._opened()

    def _opened(self) -> None:
        """The first request is done (or there will be none): no longer opening."""
        if self._opening:
            self._opening = False
            self.server.stats.adjust("opening_clients", -1)

    def _serve(self, client: ClientConnection, runtime: Runtime) -> None:
        if runtime.config.proxy_protocol != "off" and not self._behind_balancer(client, runtime):
            return
        peer = self.client_address[0]
        try:
            runtime.policy.check_client(peer)  # before reading a byte (or a TLS handshake)
            self.server.claim_address(client, peer)
        except ProxyError as error:
            # A TLS client could not read an answer in clear text: the close says it.
            self._fail(error, None, time.monotonic(), answer=self.tls is None)
            return
        if self.tls is not None:  # one deadline for the PROXY header and the handshake
            deadline = client.opened + runtime.config.header_timeout
            if not self.tls.handshake(client, peer, deadline, self.server.stats):
                return
        admitted_by = runtime.policy
        idle_timeout = runtime.config.header_timeout
        challenged = False  # a 407 was answered on this connection already
        while True:
            started = time.monotonic()
            head: RequestHead | None = None
            self.parent_url = ""
            try:
                head = client.read_head(idle_timeout)
                if head is None:
                    return
                runtime = self.server.runtime  # once per request: a reload applies whole
                if runtime.policy is not admitted_by:  # reloaded: revocations apply now
                    runtime.policy.check_client(self.client_address[0])
                    admitted_by = runtime.policy
                try:
                    outcome = self._dispatch(head, client, runtime)
                except OSError as exc:  # out of descriptors: a socket, an import, a file
                    if (overloaded := exhausted(exc)) is None:
                        raise
                    raise overloaded from exc
            except ProxyError as error:
                # A second 407 closes: a connection without credentials holds a slot for nothing.
                retry = not challenged and _retry_expected(error, head, client)
                challenged = retry
                self._fail(error, head, started, close=not retry)
                if not retry:
                    return
                self._opened()
                idle_timeout = runtime.config.client_idle_timeout
                continue
            if outcome is None:
                return  # a tunnel: the hub owns the connection now
            self._log(head, outcome, started)  # an upgrade's 101 too, then the hub has it
            if not outcome.keep_alive:
                return
            self._opened()
            idle_timeout = runtime.config.client_idle_timeout

    def _behind_balancer(self, client: ClientConnection, runtime: Runtime) -> bool:
        """Take the client's address from the PROXY header a trusted balancer sends first.
        False: the connection is to be closed, unanswered (the spec forbids guessing)."""
        peer = self.client_address[0]
        if not runtime.policy.may_send_proxy_header(peer):
            _strangers("closing %s: not a --proxy-protocol-from address", peer)
            return False
        try:
            header = client.read_proxy_header(runtime.config.proxy_protocol)
        except BadProxyHeader as exc:
            _strangers("closing %s: %s", peer, exc)
            self.server.stats.count("errors.bad-proxy-header")
            return False
        if header.source is not None:  # LOCAL (a health check) or UNKNOWN: the peer it is
            self.client_address = header.source
        return True

    def _dispatch(self, head: RequestHead, client: ClientConnection, runtime: Runtime) -> Outcome | None:
        policy = runtime.policy
        if head.form == "origin" or head.host.lower() in runtime.stat_hosts:
            if head.path in PROBES:  # load balancers probe without credentials; the ACL held
                return self._answer_probe(head, client)
            return self._answer_stats(head, client, policy)
        self._admit(head, policy)
        fault = self.server.faults.match(
            head.host, head.port, head.method, None if head.method == "CONNECT" else head.path
        )
        if fault is not None and fault.kind in ANSWERED:
            return _fault_answer(head, client, fault)
        if head.method == "CONNECT":
            with self.server.stats.live("requests_in_flight"):  # a graceful stop waits for the dial
                self._tunnel(head, client, runtime, fault)
            return None
        parent = runtime.routes.choose(head.host, head.port, head.scheme)
        self.parent_url = parent.url if parent is not None else ""
        dialer = self._dialer(runtime)
        if parent is not None:
            dialer.judge_before_parent(head.host, head.port)  # a parent on this host is no way around
        with self.server.stats.live("requests_in_flight"), shaping(client, fault):
            route = Route(
                self.server.pool,
                self.server.hub,
                runtime.rewrite,
                self.client_address[0],
                parent,
                dialer,
                fault,
            )
            return forward(head, client, route)

    def _dialer(self, runtime: Runtime) -> Dialer:
        """The runtime's dialer, judging addresses by the destination policy for this
        client: made once per connection and runtime (keep-alive requests reuse it)."""
        if self._dialing[0] is not runtime:
            client, policy = self.client_address[0], runtime.policy
            judge = policy.destination_judge(client, self.server.addresses, is_local_address)
            self._dialing = (runtime, runtime.dialer.judging(judge, recheck=not policy.only_loops(client)))
        return self._dialing[1]

    def _admit(self, head: RequestHead, policy: Policy) -> None:
        """Apply the policy (settings/policy.py gives the order) before anything is sent on."""
        policy.check_credentials(head.get("Proxy-Authorization"))
        via = head.fields.get("via", [])
        policy.check_loop(head.host, head.port, via, self.server.addresses)
        if head.method == "CONNECT":
            policy.check_connect_port(head.port)
        else:
            policy.check_http_port(head.port)
        policy.check_host(head.host)

    def _answer_stats(self, head: RequestHead, client: ClientConnection, policy: Policy) -> Outcome:
        """The proxy's own pages: /, /metrics, /json (origin-form, or via the stat host),
        for the clients `stats_allow` names, with credentials if the proxy wants them."""
        if not statspage.has_page(head.path) and not faultapi.is_fault_path(head.path):
            if head.form == "origin":
                raise BadRequest("this is a proxy: send absolute-form requests (http://host/path)")
            raise NotFound(f"no stats page at {head.path} (try /, /metrics or /json)")
        policy.check_stats_client(self.client_address[0])
        policy.check_credentials(head.get("Proxy-Authorization"))
        if faultapi.is_fault_path(head.path):
            return self._answer_faults(head, client)
        if head.has_body or head.method not in ("GET", "HEAD"):
            raise BadRequest("the stats pages take GET or HEAD without a body")
        content_type, body = statspage.render(head.path, self.server.snapshot)
        return _answer(head, client, 200, content_type, body)

    def _answer_faults(self, head: RequestHead, client: ClientConnection) -> Outcome:
        """The fault rules' JSON endpoint (server/faultapi.py), after the stats pages' checks."""
        if (head.content_length or 0) > faultapi.MAX_BODY or head.chunked:
            raise BadRequest(
                f"a fault rule is sent with a Content-Length of at most {faultapi.MAX_BODY} bytes"
            )
        body = b"".join(client.body(head)) if head.has_body else b""
        workers = self.server.runtime.config.workers
        status, document = faultapi.answer(head.method, head.path, body, self.server.faults, workers)
        data = json.dumps(document, indent=2).encode() + b"\n"
        return _answer(head, client, status, "application/json", data)

    def _answer_probe(self, head: RequestHead, client: ClientConnection) -> Outcome:
        """/healthz: the process serves. /readyz: it takes new work; 503 once a drain began
        (open requests and tunnels still finish). Cheap: no stats snapshot, no access log
        line (counted with the responses still)."""
        if head.has_body or head.method not in ("GET", "HEAD"):
            raise BadRequest("health probes take GET or HEAD without a body")
        draining = head.path == "/readyz" and self.server.draining.is_set()
        status, body = (503, b"draining\n") if draining else (200, b"ok\n")
        return replace(_answer(head, client, status, "text/plain; charset=utf-8", body), logged=False)

    def _tunnel(
        self, head: RequestHead, client: ClientConnection, runtime: Runtime, fault: Rule | None
    ) -> None:
        """Dial the target (directly or through a parent proxy) and hand both sockets to the hub.

        The 200 goes to the client as the hub's greeting, so a refused adoption never
        told the client yes; bytes a parent proxy sent after its own 200 follow it.
        """
        hub, timeout = self.server.hub, runtime.config.connect_timeout
        if hub.full:
            raise Overloaded(f"too many open tunnels (max {hub.config.max_tunnels})")
        parent = runtime.routes.choose(head.host, head.port, "https")
        self.parent_url = parent.url if parent is not None else ""
        dialer = self._dialer(runtime)
        if parent is None:
            target, early = dialer.dial((head.host, head.port), timeout, blocking=False), b""
        else:
            dialer.judge_before_parent(head.host, head.port)  # a parent on this host is no way around
            pseudonym = runtime.rewrite.pseudonym
            member = via_value(head.version, pseudonym) if pseudonym else ""
            target, early = connect_through(
                parent, head.host, head.port, timeout=timeout, via=member, dialer=dialer
            )
        label = f"{self.client_address[0]}:{self.client_address[1]} -> {head.target}"
        record = self._record(head, Outcome(status=200), time.monotonic())
        if record is not None:
            record.ongoing = True  # before the hand-off: the hub may close the tunnel at once
        greeting = CONNECTION_ESTABLISHED + early
        client.hand_off(hub.adopt, target_stream(target, fault), label, greeting, record=record)
        self.server.stats.count("responses.2xx")
        if record is not None:
            self.server.tunnel_opened(record)  # its log line is written when it closes

    def _fail(
        self,
        error: ProxyError,
        head: RequestHead | None,
        started: float,
        close: bool = True,
        answer: bool = True,
    ) -> None:
        if self.server.cut_off.is_set():  # stop() cut it: whatever failed, that is why
            if not isinstance(error, Aborted):  # nothing sent yet: the 503 a stop answers
                error = Overloaded(f"the proxy is shutting down ({error.message})")
            error.cause = Cause.SHUTDOWN
        self.server.stats.count(f"errors.{error.cause}")
        if isinstance(error, Aborted):  # nothing more can be said: log what was sent
            outcome = Outcome(status=error.status_sent, bytes_down=error.bytes_sent)
            if error.status_sent:  # a response went out and broke off: it must not look whole
                self.client.cut_off()
        elif not answer:
            outcome = Outcome(status=0)
        else:
            outcome = Outcome(status=error.status.value)
            self.client.send_quietly(render(error, close=close))
        self._log(head, outcome, started, cause=error.cause)
        log.debug("%s: %s (%s)", self.client_address[0], error.message, error.cause)

    def _log(self, head: RequestHead | None, outcome: Outcome, started: float, cause: str = "") -> None:
        status = outcome.status
        self.server.stats.count(f"responses.{status // 100}xx" if status else "responses.none")
        record = self._record(head, outcome, started, cause) if outcome.logged else None
        if record is not None:
            self.server.record_access(record)

    def _record(
        self, head: RequestHead | None, outcome: Outcome, started: float, cause: str = ""
    ) -> AccessRecord | None:
        """The request's AccessRecord, or None when nobody reads them (a record per
        request costs a tenth of a small request's time)."""
        if not self.server.wants_access_records():
            return None
        record = AccessRecord(
            client=self.client_address[0],
            status=outcome.status,
            bytes_up=self.client.body_bytes,
            bytes_down=outcome.bytes_down,
            duration=time.monotonic() - started,
            cause=cause,
            parent=self.parent_url,
        )
        if head is not None:
            record.method, record.target, record.version = head.method, head.target, head.version
            record.referer = head.get("Referer") or "-"
            record.user_agent = head.get("User-Agent") or "-"
        return record


def _retry_expected(error: ProxyError, head: RequestHead | None, client: ClientConnection) -> bool:
    """The module docstring's 407 exception: clients expect it (some .NET clients loop forever)."""
    return (
        isinstance(error, ProxyAuthRequired)
        and head is not None
        and head.method != "HEAD"  # the 407 carries a body, which a HEAD answer must not
        and not head.has_body
        and head.keep_alive
        and not client.draining.is_set()
    )


def _fault_answer(head: RequestHead, client: ClientConnection, fault: Rule) -> Outcome:
    """A status fault's answer (the origin is not contacted), or a refused dial's."""
    if fault.kind == "refuse":
        message = f"{head.host}:{head.port} refused the connection (refuse fault, rule {fault.id})"
        raise ORIGIN_CONNECT.error(message)
    status = fault["status"]
    body = fault["body"].encode() or f"{status} {_phrase(status)} (fault rule {fault.id})\n".encode()
    extra = [("Retry-After", fault["retry_after"])] if fault["retry_after"] else []
    return _answer(head, client, status, "text/plain; charset=utf-8", body, extra, unread_body=head.has_body)


def _phrase(status: int) -> str:
    return reason_phrase(status) or "Fault"  # a status fault may name any code


def _answer(
    head: RequestHead,
    client: ClientConnection,
    status: int,
    content_type: str,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
    *,
    unread_body: bool = False,
) -> Outcome:
    """One of the proxy's own answers (stats pages, probes, status faults), never cached."""
    keep_alive = head.keep_alive and not client.draining.is_set() and not unread_body
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *(extra or [])]
    headers += [("Cache-Control", "no-store")] + ([] if keep_alive else [("Connection", "close")])
    if head.method == "HEAD":
        body = b""
    client.send(response_head(status, _phrase(status), headers) + body)
    return Outcome(status=status, keep_alive=keep_alive, bytes_down=len(body))
