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
from .pool import UpstreamPool

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
CHUNK_SIZE = 65536
_NOT_FORWARDED = frozenset({"host", "content-length", "expect"})


@dataclass
class Outcome:
    """What happened to one request, for the access log and the keep-alive decision."""

    status: int = 0
    keep_alive: bool = False
    bytes_down: int = 0


def forward(
    head: RequestHead, client: ClientConnection, pool: UpstreamPool, pseudonym: str, client_ip: str | None
) -> Outcome:
    """Forward `head` (and its body) to the origin and relay the response to the client.

    `pseudonym` goes into Via ("" adds none); `client_ip`, if given, into X-Forwarded-For.
    """
    with pool.slots.hold(f"{head.scheme}://{head.authority}"):
        response = _send(head, client, pool, _upstream_headers(head, pseudonym, client_ip))
        complete = False
        try:
            outcome = _relay(head, response, client, pseudonym)
            complete = True
            return outcome
        finally:
            if not complete:
                response.close()
            response.release_conn()


def _send(
    head: RequestHead, client: ClientConnection, pool: UpstreamPool, headers: HTTPHeaderDict
) -> BaseHTTPResponse:
    body = client.body(head) if head.has_body else None
    try:
        return pool.urlopen(head.method, head.url, body, headers)
    except HTTPError as exc:
        if not (body is None and head.method in IDEMPOTENT and _stale_connection(exc, pool)):
            raise _upstream_error(exc, head) from exc
        log.debug("retrying %s %s once: reused connection was closed by the origin", head.method, head.url)
    try:
        return pool.urlopen(head.method, head.url, None, headers)
    except HTTPError as exc:
        raise _upstream_error(exc, head) from exc


def _stale_connection(exc: HTTPError, pool: UpstreamPool) -> bool:
    """The origin closed a reused connection before sending any byte of a response."""
    reason = exc.args[1] if len(exc.args) > 1 else exc.__context__
    stale = isinstance(reason, http.client.RemoteDisconnected | BrokenPipeError | ConnectionResetError)
    return stale and pool.tracker.last_request_reused()


def _upstream_headers(head: RequestHead, pseudonym: str, client_ip: str | None) -> HTTPHeaderDict:
    headers = HTTPHeaderDict()
    headers["Host"] = head.authority
    for name, value in strip_hop_by_hop(head.headers, head.connection_tokens):
        if name.lower() not in _NOT_FORWARDED:
            headers.add(name, value)
    if head.content_length is not None:
        headers["Content-Length"] = str(head.content_length)
    if pseudonym:
        headers.add("Via", via_value(head.version, pseudonym))
    if client_ip is not None:
        prior = headers.pop("X-Forwarded-For", None)
        headers["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    for name in ("User-Agent", "Accept-Encoding"):
        if name not in headers:
            headers[name] = SKIP_HEADER
    return headers


def _upstream_error(exc: HTTPError, head: RequestHead) -> ProxyError:
    """Translate a urllib3 failure into the answer the client gets (DESIGN.md error table)."""
    origin = f"{head.host}:{head.port}"
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
    client.send(response_head(status, response.reason or "", headers))
    sent = 0 if bodiless else _stream_body(response, client, chunked)
    return Outcome(status=status, keep_alive=keep_alive, bytes_down=sent)


def _stream_body(response: BaseHTTPResponse, client: ClientConnection, chunked: bool) -> int:
    sent = 0
    try:
        for data in _read_chunks(response):
            client.send(b"".join(chunk(data)) if chunked else data)
            sent += len(data)
    except HTTPError as exc:
        cause = "read-timeout" if isinstance(exc, ReadTimeoutError) else "upstream-abort"
        raise Aborted(f"origin response broke off after {sent} bytes", cause=cause) from exc
    if chunked:
        client.send(LAST_CHUNK)
    return sent


def _read_chunks(response: BaseHTTPResponse) -> Iterator[bytes]:
    while data := response.read1(CHUNK_SIZE):
        yield data
