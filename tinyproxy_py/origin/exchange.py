"""One plain-HTTP request through a pooled connection, streamed both ways.

The proxy speaks HTTP/1.1 to the origin itself: it writes the request head and body,
reads the response with wire/response.py (as strictly as requests are read), relays
interim responses, and streams the body framed for this client. urllib3 only owns the
connections (origin/pool.py). A connection is finished in one of two places: `_relay` puts it
back in the pool the moment a response body has ended exactly where its length or chunks
say (never after a bodiless HEAD, 204 or 304 answer) and the origin allows reuse
(before the last bytes go to the client, so the client's next request finds it there),
and the `finally` in `forward` closes it in every other case.
After a 101 to a request that asked to upgrade it is handed to the tunnel hub instead.

The one retry: an idempotent request without a body that failed on a reused pooled
connection before any response byte arrived (the origin closed an idle connection as
we sent on it). Nothing reached the origin's application, so sending again is safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Aborted, BadResponse, NotImplementedByProxy, Overloaded, ProxyError
from ..net import nowait
from ..net.chain import auth_refused, label
from ..net.clientconn import ClientConnection
from ..net.dialer import DIRECT, Dialer
from ..net.faultstream import target_stream
from ..net.stream import ORIGIN_BODY, ORIGIN_BODY_SENT, ORIGIN_HEAD, ORIGIN_REQUEST, Stream
from ..observe.accesslog import AccessRecord
from ..settings.config import Config
from ..settings.faults import Rule
from ..settings.routes import Parent
from ..tunnel.hub import TunnelHub
from ..wire.grammar import HOP_BY_HOP, MAX_INTERIM, Headers
from ..wire.request import RequestHead
from ..wire.response import BodyReader, ResponseHead, parse_response_head
from ..wire.writer import LAST_CHUNK, chunk, request_line, status_line, strip_hop_by_hop, via_value
from ..wire.writer import head as write_head
from .pool import Lease, OriginPool, origin_key

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# One read of a body from the origin, into the thread's read buffer and sent on from there
# (net/nowait.py): larger pieces mean fewer syscalls per MiB (a read returns what has
# arrived, so a slow stream is still relayed as it comes). A body decoded from chunks or
# framed in chunks anew is copied into new bytes per piece: those stay below malloc's mmap
# threshold (128 KiB), as one freed block above it makes every thread's arena keep more.
CHUNK_SIZE = 256 * 1024
FRAMED_PIECE = 64 * 1024
HEAD_RECV_SIZE = 65536
COALESCE_LIMIT = 65536  # a known-length body up to this size goes out with the head
_NOT_FORWARDED = frozenset({"host", "content-length", "expect"})
# Fields the proxy sets, strips or frames with. Spelled with underscores they are dropped:
# CGI, PHP and many frameworks read X_Forwarded_For as X-Forwarded-For (nginx drops them).
_MANAGED = (
    HOP_BY_HOP | _NOT_FORWARDED | {"transfer-encoding", "via", "x-forwarded-for", "forwarded", "x-tinyproxy"}
)
_FRAMING_FIELDS = frozenset({"content-length", "transfer-encoding"})


@dataclass
class Outcome:
    """What happened to one request, for the access log and the keep-alive decision."""

    status: int = 0
    keep_alive: bool = False
    bytes_down: int = 0
    logged: bool = True  # False for health probes: a balancer checks every second or so


@dataclass(frozen=True)
class Rewrite:
    """How forwarded requests and responses are changed, compiled once from the config."""

    pseudonym: str = ""  # our Via member; "" adds no Via
    forwarded_for: bool = False  # append the client's address to X-Forwarded-For
    x_tinyproxy: bool = False  # tinyproxy's X-Tinyproxy: client address
    add_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: Config, pseudonym: str) -> Rewrite:
        added = tuple(
            (name, value.strip()) for name, _, value in (h.partition(":") for h in config.add_headers)
        )
        return cls(pseudonym, config.forwarded_for, config.x_tinyproxy, added)


@dataclass
class _Exchange:
    """One request on one leased connection, up to its final response head."""

    lease: Lease
    stream: Stream
    response: ResponseHead
    leftover: bytes  # bytes read after the head: the body's first bytes
    early: bool  # the origin answered before taking the whole request body


@dataclass(slots=True)
class Route:
    """How one plain request reaches its origin, as the handler decided it: through
    `parent` (None: direct), on connections from `pool` that `dialer` makes (and judges
    for this client), its fields rewritten by `rewrite`; an upgrade goes to `hub`."""

    pool: OriginPool
    hub: TunnelHub
    rewrite: Rewrite
    client_ip: str
    parent: Parent | None = None
    dialer: Dialer = DIRECT
    fault: Rule | None = None  # a TCP-level fault shapes the origin's stream (net/faultstream.py)


def forward(head: RequestHead, client: ClientConnection, route: Route) -> Outcome:
    """Forward `head` (and its body) to the origin along `route` and relay the response."""
    pool, parent, rewrite = route.pool, route.parent, route.rewrite
    upgrade = _upgrade_token(head)
    if upgrade:
        _check_upgrade(head, route.hub)
    headers = _origin_headers(head, rewrite, route.client_ip, upgrade)
    with pool.slots.hold(origin_key(head.scheme, head.host, head.port)):
        exchange = _exchange(head, headers, client, route)
        try:
            if exchange.response.status == 407 and exchange.lease.target_form == "absolute" and parent:
                raise auth_refused(label(parent), exchange.lease.proxy_authorization is not None)
            if exchange.response.status == 101:
                return _hand_off(head, exchange, client, route)
            return _relay(head, exchange, client, route, reusable=not upgrade)
        finally:
            exchange.lease.release(False)  # closed if it failed; nothing after a release or hand-off


def _upgrade_token(head: RequestHead) -> str:
    """The Upgrade field of a request that asks to switch protocols (RFC 9110 §7.8), or ""."""
    if head.version != "HTTP/1.1" or "upgrade" not in head.connection_tokens:
        return ""
    return head.get("Upgrade") or ""


def _check_upgrade(head: RequestHead, hub: TunnelHub) -> None:
    if head.scheme == "https":
        raise NotImplementedByProxy("upgrading an https:// origin: use CONNECT (wss://) instead")
    if hub.full:
        raise Overloaded(f"too many open tunnels (max {hub.config.max_tunnels}) for an upgraded connection")


def _origin_headers(head: RequestHead, rewrite: Rewrite, client_ip: str, upgrade: str) -> Headers:
    """The request's fields as the origin gets them (the request line and Host aside)."""
    headers = [
        (name, value)
        for name, value in strip_hop_by_hop(head.headers, head.connection_tokens | _NOT_FORWARDED)
        if "_" not in name or name.replace("_", "-").lower() not in _MANAGED
    ]
    if head.content_length is not None:
        headers.append(("Content-Length", str(head.content_length)))
    elif head.chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    if upgrade:
        headers += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
    if rewrite.pseudonym:
        headers.append(("Via", via_value(head.version, rewrite.pseudonym)))
    if rewrite.forwarded_for:
        prior = [value for name, value in headers if name.lower() == "x-forwarded-for"]
        headers = [(name, value) for name, value in headers if name.lower() != "x-forwarded-for"]
        headers.append(("X-Forwarded-For", ", ".join([*prior, client_ip])))
    if rewrite.x_tinyproxy:  # the proxy's word alone: a client's own would come first
        headers = [(name, value) for name, value in headers if name.lower() != "x-tinyproxy"]
        headers.append(("X-Tinyproxy", client_ip))
    headers += rewrite.add_headers
    return headers


def _request_bytes(head: RequestHead, headers: Headers, lease: Lease) -> bytes:
    target = head.url if lease.target_form == "absolute" else head.path
    fields = [("Host", head.authority), *headers]
    if lease.proxy_authorization is not None:
        fields.append(("Proxy-Authorization", lease.proxy_authorization))
    return write_head(request_line(head.method, target), fields)


def _exchange(head: RequestHead, headers: Headers, client: ClientConnection, route: Route) -> _Exchange:
    """Send the request and read up to its final response head, retrying once if allowed."""
    pool, parent, dialer = route.pool, route.parent, route.dialer
    retry = head.method in IDEMPOTENT and not head.has_body
    peer = f"{head.host}:{head.port}" + (f" (via {label(parent)})" if parent is not None else "")
    lease = pool.checkout(head.scheme, head.host, head.port, parent, dialer=dialer)
    while True:
        stream = target_stream(lease.sock, route.fault, client.sock)
        reader = _HeadReader(head, client, pool.config)
        try:
            early = _send_request(head, _request_bytes(head, headers, lease), client, stream, reader)
            response, leftover = _read_head(stream, reader, client, pool.config, peer)
            return _Exchange(lease, stream, response, leftover, early)
        except BadResponse as exc:
            lease.release(False)
            raise BadResponse(f"{peer} sent a bad response: {exc.message}") from None
        except OSError as exc:
            lease.release(False)
            stale = lease.reused and stream.received == 0 and not isinstance(exc, TimeoutError)
            stale = stale and not stream.broke  # a fault's doing, not an idle close
            if not (retry and stale):
                raise _origin_error(exc, peer, stream.received) from exc
            log.debug(
                "retrying %s %s once: reused connection was closed by the origin", head.method, head.url
            )
        except BaseException:
            lease.release(False)
            raise
        retry = False
        lease = pool.checkout(head.scheme, head.host, head.port, parent, fresh=True, dialer=dialer)


class _HeadReader:
    """The origin's bytes up to its final response head.

    Interim responses are relayed to HTTP/1.1 clients as each completes (dropped for
    HTTP/1.0 clients, and a 100 Continue always: the proxy answered Expect itself), at
    most MAX_INTERIM of them. `final` is set once the final head is complete; `buffer`
    then holds the bytes that came after it.
    """

    def __init__(self, head: RequestHead, client: ClientConnection, config: Config) -> None:
        self.head, self.client, self.config = head, client, config
        self.buffer = bytearray()
        self.interim = 0
        self.final: ResponseHead | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data
        # A head ends, or shows a fault, only at a line end or past the size limit:
        # parsing after every other read would cost O(n^2) for an origin dribbling bytes.
        if b"\n" not in data and len(self.buffer) < self.config.max_response_head_bytes:
            return
        while self.final is None and self.buffer:
            parsed = parse_response_head(self.buffer, self.config, self.head.method)
            if parsed is None:
                return
            response, used = parsed
            del self.buffer[:used]
            if response.interim and response.status != 101:
                self._relay_interim(response)
            elif response.status == 101 and not _upgrade_token(self.head):
                raise BadResponse("101 Switching Protocols to a request that did not ask to upgrade")
            else:
                self.final = response

    def _relay_interim(self, response: ResponseHead) -> None:
        self.interim += 1
        if self.interim > MAX_INTERIM:
            raise BadResponse(f"more than {MAX_INTERIM} interim responses")
        if self.head.version == "HTTP/1.1" and response.status != 100:
            self.client.send(_client_head(response, [], ""))


def _send_request(
    head: RequestHead, request: bytes, client: ClientConnection, stream: Stream, reader: _HeadReader
) -> bool:
    """Write the request; True if the origin gave its final answer before taking the
    whole body (a 413, say): the rest is then not sent, and neither connection is reused.

    A body is relayed as the client sends it (chunked bodies re-chunked).
    """
    timeout = reader.config.read_timeout
    if not head.has_body:
        stream.send(request, timeout)
        return False
    pending = request
    for piece in client.body(head):
        if _send_until_answered(stream, pending + (chunk(piece) if head.chunked else piece), reader):
            return True
        pending = b""
    return _send_until_answered(stream, pending + LAST_CHUNK if head.chunked else pending, reader)


def _send_until_answered(stream: Stream, data: bytes, reader: _HeadReader) -> bool:
    """Send `data`, reading whatever the origin says while it takes no more. True once
    its final head (or its close) has come, with `data` perhaps not all sent. What it
    says meanwhile is not an answer yet: TLS session tickets, interim responses."""
    rest = memoryview(data)
    try:
        while rest:
            rest = stream.send(rest, reader.config.read_timeout, until_readable=True)
            if rest and _listen(stream, reader):
                return True
    except OSError:
        _listen(stream, reader)  # an answer sent before it stopped reading is still queued
        if stream.received:
            return True
        raise
    return False


def _listen(stream: Stream, reader: _HeadReader) -> bool:
    """Read what the origin has said so far; True once its final head or its close came."""
    while True:
        try:
            said = stream.recv_nowait(HEAD_RECV_SIZE)
        except OSError:
            return True  # reset: what it said before is read; _read_head tells the rest
        if said is None:
            return reader.final is not None
        if not said:
            return True
        reader.feed(said)
        if reader.final is not None:
            return True


def _read_head(
    stream: Stream, reader: _HeadReader, client: ClientConnection, config: Config, peer: str
) -> tuple[ResponseHead, bytes]:
    """The final response head, and the bytes read after it.

    One deadline for all of it, from now (the request has been sent): an origin that
    dribbles its head, or sends 1xx after 1xx, cannot extend it.
    """
    deadline = time.monotonic() + config.response_header_timeout
    stream.watch_client(not client.buffer)  # a pipelined request already read is not a hang-up
    try:
        while reader.final is None:
            reader.feed(_recv_head_bytes(stream, deadline, peer, config))
    finally:
        stream.watch_client(False)
    return reader.final, bytes(reader.buffer)


def _recv_head_bytes(stream: Stream, deadline: float, peer: str, config: Config) -> bytes:
    started = stream.received > 0
    try:
        data = stream.recv(HEAD_RECV_SIZE, deadline, wait_first=not started)
    except TimeoutError as exc:
        limit = config.response_header_timeout
        raise ORIGIN_HEAD.of(exc, f"{peer} did not send its response head within {limit:g} s") from exc
    if not data:
        if started:
            raise BadResponse("the connection closed in the middle of the response head")
        raise ConnectionResetError("origin closed the connection without answering")
    return data


def _origin_error(exc: OSError, peer: str, received: int) -> ProxyError:
    """A socket failure before the response head, as the client should hear it."""
    if isinstance(exc, TimeoutError):
        what = "did not take the request in time"
    else:
        what = "broke off its response" if received else "closed the connection without answering"
    return ORIGIN_REQUEST.of(exc, f"{peer} {what}")


def _client_head(
    response: ResponseHead, headers: Headers, pseudonym: str, drop: frozenset[str] = frozenset()
) -> bytes:
    """A response head for the client: the origin's fields minus hop-by-hop ones (and
    those in `drop`), then `headers`."""
    fields = strip_hop_by_hop(response.headers, response.connection_tokens | drop)
    if response.status == 101:  # the switch itself needs them (RFC 9110 §7.8)
        fields += [(k, v) for k, v in response.headers if k.lower() in ("connection", "upgrade")]
    if pseudonym:
        fields.append(("Via", via_value(response.version, pseudonym)))
    return write_head(status_line(response.status, response.reason), fields + headers)


def _relay(
    head: RequestHead, exchange: _Exchange, client: ClientConnection, route: Route, reusable: bool
) -> Outcome:
    """Send the response head and stream the body, framed for this client; the origin
    connection goes back (if `reusable`) or is closed as the module docstring says."""
    response, config = exchange.response, route.pool.config
    reader = BodyReader(response, config)

    def origin_done() -> None:
        # Only a body that says where it ends proves the connection quiet. After a head
        # with no body (HEAD, 204, 304) an origin may still send one a moment later (the
        # common `do_HEAD = do_GET` bug): read as the next request's answer, it would reach
        # another client. So such a connection is closed, never pooled.
        delimited = response.framing in ("length", "chunked")
        clean = response.keep_alive and reader.done and not reader.unused and delimited
        exchange.lease.release(clean and reusable and not exchange.early and not exchange.stream.buffered())

    bodiless = response.framing == "none"
    length = response.length if response.framing == "length" else None
    http11 = head.version == "HTTP/1.1"
    if response.codings and not http11:
        raise BadResponse(f"transfer coding {', '.join(response.codings)} cannot reach an HTTP/1.0 client")
    # A body whose codings already include chunked (not last: read to close) cannot be
    # chunked again (RFC 9112 §6.1): it goes on as it came, delimited by the close.
    chunked = not bodiless and length is None and http11 and "chunked" not in response.codings
    keep_alive = (
        head.keep_alive and (bodiless or length is not None or chunked)
        and not client.body_pending and not client.draining.is_set()
    )  # fmt: skip
    extra: Headers = []
    if not bodiless:
        if length is not None:
            extra.append(("Content-Length", str(length)))
        if chunked:
            extra.append(("Transfer-Encoding", ", ".join([*response.codings, "chunked"])))
        elif response.codings:
            extra.append(("Transfer-Encoding", ", ".join(response.codings)))
    if not keep_alive:
        extra.append(("Connection", "close"))
    elif not http11:
        extra.append(("Connection", "keep-alive"))
    head_bytes = _client_head(
        response, extra, route.rewrite.pseudonym, frozenset() if bodiless else _FRAMING_FIELDS
    )
    # No body or a small one of known length is sent with the head in one write (one
    # syscall, one packet). Otherwise the head goes first: a streaming origin may take a
    # while to send its first body byte, and the client should not wait for the head meanwhile.
    if not bodiless and (length is None or length > COALESCE_LIMIT):
        client.send(head_bytes)
        head_bytes = b""
    sent = _stream_body(reader, exchange, client, chunked, head_bytes, config, origin_done)
    return Outcome(status=response.status, keep_alive=keep_alive, bytes_down=sent)


def _stream_body(
    reader: BodyReader,
    exchange: _Exchange,
    client: ClientConnection,
    chunked: bool,
    head: bytes,
    config: Config,
    origin_done: Callable[[], None],
) -> int:
    """Relay the body until its framing ends; `head`, if not yet sent, goes with its first piece.
    `origin_done` is called once the origin's part has ended, before the last send.

    If it cannot, the Aborted it raises says what the client had (`status`, body bytes).
    """
    sent = 0
    pending = head
    data: bytes | memoryview = exchange.leftover
    piece = FRAMED_PIECE if chunked or reader.framing == "chunked" else CHUNK_SIZE
    try:
        while True:
            if data:
                body = reader.feed(data)
                out = chunk(body) if chunked and body else body
                if reader.done:
                    origin_done()
                if out or pending:
                    client.send(pending + out if pending else out)
                    pending = b""
                sent += len(body)
            if reader.done:
                origin_done()  # once is enough: a lease released stays so
                break
            view = nowait.scratch(min(piece, reader.remaining) if reader.framing == "length" else piece)
            data = view[: exchange.stream.read_into(view, time.monotonic() + config.read_timeout)]
            if not data:
                reader.end_of_stream()
                origin_done()
                break
        client.send(pending + LAST_CHUNK if chunked else pending)
        return sent
    except (OSError, BadResponse) as exc:
        error = _broken_body(exc, head_sent=not pending)
        error.__cause__ = exc
    except Aborted as exc:  # the client went away (or the proxy stopped) mid-body
        error = exc
    if isinstance(error, Aborted):
        error.status_sent, error.bytes_sent = (0 if pending else exchange.response.status), sent
    raise error


def _broken_body(exc: Exception, head_sent: bool) -> ProxyError:
    """The origin's body stalled or broke off. If the client has had nothing yet (a small
    body's head waits to go with it), it can still be told; otherwise only cut off."""
    what = "stalled" if isinstance(exc, TimeoutError) else f"broke off ({exc})"
    if not head_sent:
        return ORIGIN_BODY.of(exc, f"the origin's response {what} before its body")
    return ORIGIN_BODY_SENT.of(exc, f"the origin's response {what} after its head")


def _hand_off(head: RequestHead, exchange: _Exchange, client: ClientConnection, route: Route) -> Outcome:
    """The origin switched protocols: both sockets become a tunnel in the hub, whose
    close gets an access line of its own (the 101 has had one)."""
    greeting = _client_head(exchange.response, [], route.rewrite.pseudonym) + exchange.leftover
    origin = target_stream(exchange.lease.detach(), route.fault)  # a fault goes on shaping it
    label = f"{client.peer} -> {head.host}:{head.port}"
    # Its close's line names the request the client sent and the 101 it got, with the bytes.
    record = AccessRecord(route.client_ip, head.method, head.target, head.version, status=101)
    client.hand_off(route.hub.adopt, origin, label, greeting, record)
    return Outcome(status=101, keep_alive=False)  # the hub has the client now
