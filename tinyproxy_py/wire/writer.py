"""The one HTTP/1 writer: every head the proxy sends goes through `head`, whether a
request to an origin, a CONNECT to a parent, a response relayed to a client, an interim
one, an error page or the proxy's own pages; with it, Via members, hop-by-hop fields
dropped, and chunk framing.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

from ..errors import ProxyError
from .grammar import FIELD_TEXT, HOP_BY_HOP, OBS_FOLD_TEXT, TOKEN_TEXT, Headers


def head(start_line: str, fields: Iterable[tuple[str, str]] = (), encoding: str = "latin-1") -> bytes:
    """A head: its start line, a `name: value` line per field, the empty line. The
    fields are the caller's to have checked (parsed ones are; see response_head)."""
    lines = [start_line, *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(encoding)


def status_line(status: int, reason: str) -> str:
    return f"HTTP/1.1 {status} {reason}"


def request_line(method: str, target: str) -> str:
    return f"{method} {target} HTTP/1.1"


CONTINUE = head(status_line(100, "Continue"))
CONNECTION_ESTABLISHED = head(status_line(200, "Connection established"))


def render(error: ProxyError, *, close: bool = True) -> bytes:
    """A complete response for `error`: short plain text that names the cause."""
    body = f"{error.status.value} {error.status.phrase}: {error.message}\n".encode()
    fields = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Tinyproxy-Py-Cause", str(error.cause)),
        *error.headers,
    ]
    if close:
        fields.append(("Connection", "close"))
    return head(status_line(error.status.value, error.status.phrase), fields) + body


def strip_hop_by_hop(headers: Iterable[tuple[str, str]], connection_tokens: Iterable[str] = ()) -> Headers:
    """Drop hop-by-hop fields (RFC 9110 §7.6.1), including those Connection names."""
    drop = HOP_BY_HOP.union(connection_tokens)
    return [(k, v) for k, v in headers if k.lower() not in drop]


def via_value(version: str, pseudonym: str) -> str:
    """A Via member (RFC 9110 §7.6.3): protocol version received, then our pseudonym."""
    return f"{version.removeprefix('HTTP/')} {pseudonym}"


def reason_phrase(status: int) -> str:
    """The standard reason phrase of `status`, "" for a code that has none."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def response_head(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialise a response head for the client, refusing what would corrupt its framing.

    Used for the proxy's own answers (the stats pages). An origin's response head is
    serialised by origin/exchange.py from fields wire/response.py has already checked, so it
    does not pay for these checks twice. Raises ValueError for a field that cannot be
    made safe (a bug in the caller).
    """
    if not 100 <= status <= 999:
        raise ValueError(f"invalid status code {status}")
    if not FIELD_TEXT.fullmatch(reason):
        reason = ""  # the reason phrase is optional and clients ignore it (RFC 9112 §4)
    return head(
        status_line(status, reason), [(name, _response_value(name, value)) for name, value in headers]
    )


def _response_value(name: str, value: str) -> str:
    if not TOKEN_TEXT.fullmatch(name):
        raise ValueError(f"response header name {name!r} is not a token")
    # RFC 9112 §5.2: a proxy replaces each obs-fold with SP before forwarding.
    value = OBS_FOLD_TEXT.sub(" ", value).strip(" \t")
    if not FIELD_TEXT.fullmatch(value):
        raise ValueError(f"control character in response header {name}")
    return value


def chunk(data: bytes | bytearray | memoryview) -> bytes:
    """One chunk of a chunked body: size line, data, CRLF (the data copied once)."""
    return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))


LAST_CHUNK = b"0\r\n\r\n"
