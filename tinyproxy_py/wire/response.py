"""Sans-IO HTTP/1.1 for the origin side: response heads in, body framing decided.

Strategy (as wire/request.py, after h11): `parse_response_head` is handed the bytes received
so far and returns a head and how many bytes it used, or None for "need more", or
raises BadResponse (502); `BodyReader` then finds where the body ends.
Rules: an origin is as untrusted as a client. Every field is checked before it can reach
a client (a bare CR or a NUL would let an origin split the response), the head is
bounded in size and fields, and framing follows RFC 9112 §6.3 with no guessing: any
doubt about where a response ends is a 502, never a connection to reuse. Lines may end
in a bare LF (§2.2 allows a recipient that), and are sent on with CRLF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BadResponse
from .body import ChunkedDecoder
from .grammar import (
    BARE_CR,
    CONTROL,
    DIGITS,
    STATUS_LINE,
    TOKEN,
    TOKEN_TEXT,
    Headers,
    HeadLimits,
    field_index,
    list_values,
    persistence,
)


@dataclass
class ResponseHead:
    """A parsed, validated response head and how its body is delimited.

    `framing` is "none", "length", "chunked" or "close". `codings` are the transfer
    codings that stay on the body once chunked framing (if final) is removed.
    """

    status: int
    reason: str
    version: str
    headers: Headers
    framing: str = "close"
    length: int | None = None
    keep_alive: bool = True
    codings: tuple[str, ...] = ()
    connection_tokens: frozenset[str] = frozenset()
    fields: dict[str, list[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fields = field_index(self.headers)

    @property
    def interim(self) -> bool:
        return self.status < 200


def parse_response_head(
    buf: bytes | bytearray, limits: HeadLimits, method: str
) -> tuple[ResponseHead, int] | None:
    """One response head (to a request of `method`) from the front of `buf`, as above."""
    end = _head_end(buf, limits.max_response_head_bytes)
    if end < 0:
        _check_incomplete(buf, limits)
        return None
    raw = bytes(buf[:end])
    _check_bytes(raw)
    lines = [line.removesuffix(b"\r") for line in raw.split(b"\n")]
    version, status, reason = _status_line(lines[0])
    headers = _fields(lines[1:-2], limits)  # the last two: the empty line, and after it
    head = ResponseHead(status, reason, version, headers)
    head.connection_tokens, head.keep_alive = persistence(head.fields, head.version)
    _apply_framing(head, method)
    return head, end


def _head_end(buf: bytes | bytearray, limit: int) -> int:
    """The offset just past the empty line that ends the head, or -1 if none within `limit`."""
    crlf = buf.find(b"\n\r\n", 0, limit)
    lf = buf.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else limit)  # only an earlier one matters
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def _check_incomplete(buf: bytes | bytearray, limits: HeadLimits) -> None:
    """Refuse a partial head that can never be valid, without waiting for the rest."""
    if len(buf) >= limits.max_response_head_bytes:
        raise BadResponse(f"response head larger than {limits.max_response_head_bytes} bytes")
    if buf and not b"HTTP/".startswith(bytes(buf[:5])):
        raise BadResponse("response does not start with an HTTP/1.x status line")
    _check_bytes(buf[:-1] if buf.endswith(b"\r") else buf)  # a final CR may be half a CRLF
    first_end = buf.find(b"\n")
    if first_end >= 0:
        _status_line(bytes(buf[:first_end]).removesuffix(b"\r"))
    folds = buf.count(b"\n ") + buf.count(b"\n\t")  # continuations, not fields
    if buf.count(b"\n") - folds > limits.max_response_headers + 1:
        raise BadResponse(f"more than {limits.max_response_headers} response header fields")


def _check_bytes(data: bytes | bytearray) -> None:
    if CONTROL.search(data):
        raise BadResponse("control character in response head")
    if BARE_CR.search(data):
        raise BadResponse("bare CR in response head")


def _status_line(line: bytes) -> tuple[str, int, str]:
    match = STATUS_LINE.fullmatch(line)
    if match is None:
        raise BadResponse("malformed status line")
    major, minor, status, reason = match.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise BadResponse(f"unsupported version HTTP/{major.decode()}.{minor.decode()}")
    code = int(status)
    if not 100 <= code <= 599:
        raise BadResponse(f"invalid status code {code}")
    return f"HTTP/1.{minor.decode()}", code, (reason or b"").decode("latin-1")


def _fields(lines: list[bytes], limits: HeadLimits) -> Headers:
    headers: Headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not headers:
                raise BadResponse("folded line before the first header field")
            field, before = headers[-1]  # obs-fold: replaced by one SP (RFC 9112 §5.2)
            folded = line.strip(b" \t").decode("latin-1")
            headers[-1] = (field, f"{before} {folded}" if before and folded else before or folded)
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")  # a proxy removes whitespace before the colon (§5.1)
        if not colon or not TOKEN.fullmatch(name):
            raise BadResponse("response header field name is not a token")
        headers.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
        if len(headers) > limits.max_response_headers:
            raise BadResponse(f"more than {limits.max_response_headers} response header fields")
    return headers


def _apply_framing(head: ResponseHead, method: str) -> None:
    """RFC 9112 §6.3, in its order."""
    if method == "HEAD" or head.status < 200 or head.status in (204, 304):
        head.framing = "none"
    elif "transfer-encoding" in head.fields:
        _apply_transfer_encoding(head)
    else:
        lengths = head.fields.get("content-length", [])
        if len(lengths) > 1:
            raise BadResponse("more than one Content-Length")
        if lengths:
            if not DIGITS.fullmatch(lengths[0]):
                raise BadResponse(f"invalid Content-Length {lengths[0]!r}")
            head.framing, head.length = "length", int(lengths[0])


def _apply_transfer_encoding(head: ResponseHead) -> None:
    if head.version == "HTTP/1.0":
        raise BadResponse("Transfer-Encoding in an HTTP/1.0 response")  # §6.1: faulty framing
    codings = list_values(head.fields, "transfer-encoding")
    if not codings or not all(TOKEN_TEXT.fullmatch(coding) for coding in codings):
        raise BadResponse("malformed Transfer-Encoding")
    if codings.count("chunked") > 1:
        raise BadResponse("chunked applied more than once")
    if codings[-1] == "chunked":
        head.framing, head.codings = "chunked", tuple(codings[:-1])
    else:
        head.framing, head.codings = "close", tuple(codings)  # §6.3 rule 4: read until close


class BodyReader:
    """Where a response body ends, fed the bytes that follow its head.

    `feed` returns the body bytes in what it was given (chunk framing removed). `done` is
    set when the body ended exactly where its framing says; `unused` then holds whatever
    came after it, which makes the connection unfit for another request.
    """

    def __init__(self, head: ResponseHead, limits: HeadLimits) -> None:
        self.framing = head.framing
        self.remaining = head.length or 0
        self.done = head.framing == "none" or (head.framing == "length" and not self.remaining)
        self.unused = b""
        self._chunks: ChunkedDecoder | None = None
        if head.framing == "chunked":
            self._chunks = ChunkedDecoder(
                max_line=limits.max_line_bytes,
                max_trailer=limits.max_response_head_bytes,
                error=BadResponse,
                too_large=BadResponse,
            )

    def feed(self, data: bytes | memoryview) -> bytes | memoryview:
        """The body bytes in `data`: a slice of it, or new bytes with chunk framing removed."""
        if self.done:
            self.unused += data
            return b""
        if self._chunks is not None:
            body = self._chunks.feed(data)
            if self._chunks.done:
                self.done, self.unused = True, self._chunks.unused
            return body
        if self.framing == "close":
            return data
        if len(data) < self.remaining:
            self.remaining -= len(data)
            return data
        end, self.unused = self.remaining, bytes(data[self.remaining :])
        self.remaining, self.done = 0, True
        return data[:end]

    def end_of_stream(self) -> None:
        """The origin closed the connection: complete for "close" framing, else cut short."""
        if self.framing == "close":
            self.done = True
        elif not self.done:
            raise BadResponse("origin closed the connection before the body ended")
