"""One plain-HTTP request through the pool, streamed both ways.

urllib3 is used as a dumb pipe: no redirects, no content decoding, no retries (except
the one below), no headers the client did not send (SKIP_HEADER). The `finally` in
`forward` is the only place an upstream response is finished: read to its end and
released to the pool, or closed. This is the only module that catches urllib3 errors.

The one retry: an idempotent request without a body that failed on a reused pooled
connection before any response byte arrived (the origin closed an idle connection as
we sent on it). Nothing reached the origin's application, so sending again is safe.
Imports: http1, clientconn, pool, errors, stats; urllib3.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import urllib3
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.response import BaseHTTPResponse
from urllib3.util import SKIP_HEADER

from .clientconn import ClientConnection
from .config import Config
from .errors import Aborted, ProxyError, UpstreamError, UpstreamTimeout
from .http1 import (
    LAST_CHUNK,
    RequestHead,
    chunk,
    connection_tokens,
    response_head,
    strip_hop_by_hop,
    via_value,
)
from .pool import UpstreamPool, origin_key
from .upstream import Upstream

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# One read1() from the origin: larger pieces mean fewer syscalls and allocations per MiB
# (read1 returns what has arrived, so a slow stream is still relayed as it comes).
CHUNK_SIZE = 256 * 1024
COALESCE_LIMIT = 65536  # a known-length body up to this size goes out with the head
_NOT_FORWARDED = frozenset({"host", "content-length", "expect"})


@dataclass
class Outcome:
    """What happened to one request, for the access log and the keep-alive decision."""

    status: int = 0
    keep_alive: bool = False
    bytes_down: int = 0


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


def forward(
    head: RequestHead,
    client: ClientConnection,
    pool: UpstreamPool,
    rewrite: Rewrite,
    client_ip: str,
    via: Upstream | None = None,
) -> Outcome:
    """Forward `head` (and its body) to the origin, through `via` if given, and relay the response."""
    with pool.slots.hold(origin_key(head.scheme, head.host, head.port)):
        response = _send(head, client, pool, _upstream_headers(head, rewrite, client_ip), via)
        complete = False
        try:
            if via is not None and response.status == 407:
                raise _upstream_auth_error(via)
            outcome = _relay(head, response, client, rewrite.pseudonym)
            complete = True
            return outcome
        finally:
            if not complete:
                response.close()
            response.release_conn()


def _send(
    head: RequestHead,
    client: ClientConnection,
    pool: UpstreamPool,
    headers: HTTPHeaderDict,
    via: Upstream | None,
) -> BaseHTTPResponse:
    body = client.body(head) if head.has_body else None
    try:
        return pool.urlopen(head.method, (head.scheme, head.host, head.port), head.path, body, headers, via)
    except HTTPError as exc:
        if not (body is None and head.method in IDEMPOTENT and _stale_connection(exc, pool)):
            raise _upstream_error(exc, head, via) from exc
        log.debug("retrying %s %s once: reused connection was closed by the origin", head.method, head.url)
    try:
        return pool.urlopen(head.method, (head.scheme, head.host, head.port), head.path, None, headers, via)
    except HTTPError as exc:
        raise _upstream_error(exc, head, via) from exc


def _stale_connection(exc: HTTPError, pool: UpstreamPool) -> bool:
    """The origin closed a reused connection before sending any byte of a response."""
    reason = exc.args[1] if len(exc.args) > 1 else exc.__context__
    stale = isinstance(reason, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError)
    return stale and pool.tracker.last_request_reused()


def _upstream_headers(head: RequestHead, rewrite: Rewrite, client_ip: str) -> HTTPHeaderDict:
    headers = HTTPHeaderDict()
    headers["Host"] = head.authority
    for name, value in strip_hop_by_hop(head.headers, head.connection_tokens):
        if name.lower() not in _NOT_FORWARDED:
            headers.add(name, value)
    if head.content_length is not None:
        headers["Content-Length"] = str(head.content_length)
    if rewrite.pseudonym:
        headers.add("Via", via_value(head.version, rewrite.pseudonym))
    if rewrite.forwarded_for:
        prior = headers.pop("X-Forwarded-For", None)
        headers["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    if rewrite.x_tinyproxy:
        headers["X-Tinyproxy"] = client_ip
    for name, value in rewrite.add_headers:
        headers.add(name, value)
    for name in ("User-Agent", "Accept-Encoding"):
        if name not in headers:
            headers[name] = SKIP_HEADER
    return headers


def _upstream_error(exc: HTTPError, head: RequestHead, via: Upstream | None) -> ProxyError:
    """Translate a urllib3 failure into the answer the client gets (DESIGN.md error table)."""
    origin = f"{head.host}:{head.port}"
    if isinstance(exc, urllib3.exceptions.ProxyError):
        return _proxy_error(exc, via)
    if via is not None:
        origin += f" (via upstream {via})"
    if isinstance(exc, NameResolutionError):
        return UpstreamError(f"cannot resolve {head.host}", cause="dns")
    if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError: it subclasses it
        return UpstreamError(f"cannot connect to {origin}", cause="refused")
    if isinstance(exc, ConnectTimeoutError):
        return UpstreamTimeout(f"connecting to {origin} timed out", cause="connect-timeout")
    if isinstance(exc, ReadTimeoutError):
        return UpstreamTimeout(f"{origin} did not answer in time", cause="read-timeout")
    if isinstance(exc, SSLError):
        return UpstreamError(f"TLS with {origin} failed", cause="tls")
    return UpstreamError(f"{origin} broke the HTTP exchange", cause="upstream-protocol")


def _proxy_error(exc: urllib3.exceptions.ProxyError, via: Upstream | None) -> ProxyError:
    """urllib3 could not use the upstream proxy itself: name it, never the raw dial error."""
    reason = exc.original_error
    if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
        return UpstreamTimeout(f"connecting to upstream proxy {via} timed out", cause="upstream-timeout")
    if isinstance(reason, NewConnectionError):
        return UpstreamError(f"cannot connect to upstream proxy {via}", cause="upstream-connect")
    if "407" in str(reason) and via is not None:
        return _upstream_auth_error(via)
    return UpstreamError(f"upstream proxy {via} failed the request", cause="upstream-protocol")


def _upstream_auth_error(via: Upstream) -> UpstreamError:
    if via.proxy_authorization() is None:
        why = "wants credentials; none are configured"
    else:
        why = "refused the configured credentials"
    return UpstreamError(f"upstream proxy {via} {why} (407)", cause="upstream-auth")


def _relay(
    head: RequestHead, response: BaseHTTPResponse, client: ClientConnection, pseudonym: str
) -> Outcome:
    """Send the response head and stream the body, framed for this client."""
    status = response.status
    raw = list(response.headers.items())
    headers = strip_hop_by_hop(raw, connection_tokens(raw))
    if pseudonym:
        headers.append(("Via", via_value(f"HTTP/{response.version / 10:.1f}", pseudonym)))
    bodiless = head.method == "HEAD" or status in (204, 304) or status < 200
    length = None if bodiless or response.chunked else response.length_remaining
    if not bodiless:
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        if length is not None:
            headers.append(("Content-Length", str(length)))
    chunked = not bodiless and length is None and head.version == "HTTP/1.1"
    framed = bodiless or length is not None or chunked
    keep_alive = head.keep_alive and framed and not client.body_pending and not client.draining.is_set()
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    if not keep_alive:
        headers.append(("Connection", "close"))
    elif head.version == "HTTP/1.0":
        headers.append(("Connection", "keep-alive"))
    head_bytes = response_head(status, response.reason or "", headers)
    # A small body of known length is sent with the head in one write (one syscall, one
    # packet). Otherwise the head goes first: a streaming origin may take a while to
    # send its first body byte, and the client should not wait for the head meanwhile.
    if bodiless or length is None or length > COALESCE_LIMIT:
        client.send(head_bytes)
        head_bytes = b""
    sent = 0 if bodiless else _stream_body(response, client, chunked, head_bytes)
    return Outcome(status=status, keep_alive=keep_alive, bytes_down=sent)


def _stream_body(response: BaseHTTPResponse, client: ClientConnection, chunked: bool, head: bytes) -> int:
    """Relay the body; `head`, if not yet sent, goes out with its first piece."""
    sent = 0
    pending = head
    try:
        for data in _read_chunks(response):
            client.send(pending + (b"".join(chunk(data)) if chunked else data))
            pending = b""
            sent += len(data)
    except HTTPError as exc:
        cause = "read-timeout" if isinstance(exc, ReadTimeoutError) else "upstream-abort"
        raise Aborted(f"origin response broke off after {sent} bytes", cause=cause) from exc
    client.send(pending + LAST_CHUNK if chunked else pending)
    return sent


def _read_chunks(response: BaseHTTPResponse) -> Iterator[bytes]:
    while data := response.read1(CHUNK_SIZE):
        yield data
