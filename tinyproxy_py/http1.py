"""Sans-IO HTTP/1.1 for the client side: request heads in, response heads out.

Strategy (after h11): a parser is handed the bytes received so far and either
1) returns a parsed head and how many bytes it used, 2) returns None, meaning
"I need more data", or 3) raises a ProxyError whose status is the answer.
Rules: strict RFC 9112 (lenient parsing is how smuggling happens); every input
is bounded by a limit from Config; this module knows no sockets. The head parser
keeps no state and rescans the buffer on each call, so its checks on a partial head
are C-level scans (find/count); a head fed a byte per call still costs O(n^2), which
max_head_bytes and the header deadline bound.
Imports: errors, config.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import Config
from .errors import (
    BadRequest,
    ExpectationFailed,
    HeadTooLarge,
    NotImplementedByProxy,
    ProxyError,
    URITooLong,
    VersionNotSupported,
)

Headers = list[tuple[str, str]]

_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(_TCHAR.encode() + rb"+")
_TOKEN_TEXT = re.compile(_TCHAR + "+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_FIELD_TEXT = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Visible ASCII without "#": a request-target never carries a fragment (RFC 9112 §3.2).
_TARGET = re.compile(rb"[\x21\x22\x24-\x7e]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_DIGITS = re.compile(r"[0-9]{1,18}")
_HOST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
_AUTHORITY_AND_TAIL = re.compile(r"([^/?#]*)(.*)", re.DOTALL)
_BLANK_LINES = re.compile(rb"(?:\r\n)*")
_OBS_FOLD_TEXT = re.compile(r"\r?\n[ \t]+")
# chunk = chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
# value = token / quoted-string (RFC 9112 §7.1.1). Anything else is refused, not skipped.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)(.*)", re.DOTALL)
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*" % (_TOKEN.pattern, _TOKEN.pattern, _QUOTED)
)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass
class RequestHead:
    """A parsed, validated request head. `form` is absolute, authority or origin."""

    method: str
    target: str
    version: str
    headers: Headers
    form: str = "absolute"
    scheme: str = ""
    host: str = ""
    port: int = 0
    path: str = "/"
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    expect_continue: bool = False
    connection_tokens: frozenset[str] = field(default_factory=frozenset)
    fields: dict[str, list[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fields = field_index(self.headers)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def authority(self) -> str:
        """host[:port] as it should appear in a Host header (default port left out)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS.get(self.scheme):
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"

    def get(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        values = self.fields.get(name.lower())
        return values[0] if values else None


def field_index(headers: Headers) -> dict[str, list[str]]:
    """Values by lower-case name, built once per head, so checks look fields up instead
    of scanning (and lower-casing) the whole list each time."""
    index: dict[str, list[str]] = {}
    for name, value in headers:
        index.setdefault(name.lower(), []).append(value)
    return index


def parse_request_head(buf: bytes | bytearray, limits: Config) -> tuple[RequestHead, int] | None:
    """Parse one request head from the front of `buf`.

    Returns (head, bytes used) or None when more bytes are needed. Raises a ProxyError
    for anything malformed or over a limit, as early as the bytes seen allow. Empty
    lines before the request line are skipped (RFC 9112 §2.2: some clients send a CRLF
    after a body) but count towards the head's size, so they cannot grow without bound.
    """
    blank = _BLANK_LINES.match(buf)
    start = blank.end() if blank else 0
    # The terminator must end within max_head_bytes: only then is the head within the limit.
    end = buf.find(b"\r\n\r\n", start, limits.max_head_bytes)
    if end < 0:
        _check_incomplete(buf, start, limits)
        return None
    _check_line_endings(buf, start, end + 2)
    lines = bytes(buf[start : end + 2]).split(b"\r\n")[:-1]
    if len(lines[0]) > limits.max_line_bytes:
        raise URITooLong(f"request line longer than {limits.max_line_bytes} bytes")
    method, target, version = _parse_request_line(lines[0])
    if len(lines) - 1 > limits.max_headers:
        raise HeadTooLarge(f"more than {limits.max_headers} header fields")
    headers = [_parse_field(line) for line in lines[1:]]
    head = RequestHead(method, target, version, headers)
    _apply_target(head)
    _apply_framing(head)
    _check_host(head)
    _apply_connection(head)
    return head, end + 4


def _check_incomplete(buf: bytes | bytearray, start: int, limits: Config) -> None:
    """Fail early on a partial head that can already never be valid.

    Without this a client could hold a thread until the header deadline with a head
    that was doomed from its first bytes (a lone LF, a 1 MB request line).
    """
    line_end = buf.find(b"\r\n", start, start + limits.max_line_bytes + 2)
    if line_end < 0 and len(buf) - start > limits.max_line_bytes + 1:
        raise URITooLong(f"request line longer than {limits.max_line_bytes} bytes")
    if len(buf) > limits.max_head_bytes:
        raise HeadTooLarge(f"request head larger than {limits.max_head_bytes} bytes")
    # A final CR may be the first half of a CRLF still in flight.
    crlf = _check_line_endings(buf, start, len(buf) - 1 if buf.endswith(b"\r") else len(buf))
    if crlf > limits.max_headers + 1:
        raise HeadTooLarge(f"more than {limits.max_headers} header fields")


def _check_line_endings(buf: bytes | bytearray, start: int, stop: int) -> int:
    """Every CR and every LF in buf[start:stop] is part of a CRLF (RFC 9112 §2.2).

    Returns the number of CRLFs, that is of complete lines.
    """
    crlf = buf.count(b"\r\n", start, stop)
    if buf.count(b"\n", start, stop) != crlf:
        raise BadRequest("line ending without CR")
    if buf.count(b"\r", start, stop) != crlf:
        raise BadRequest("bare CR in request head")
    return crlf


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest("request line is not 'method SP target SP version'")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest("method is not a token")
    if not _TARGET.fullmatch(target):
        raise BadRequest("request target is not visible ASCII, or has a fragment")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise BadRequest("malformed HTTP version")
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        raise VersionNotSupported(f"{version.decode('ascii')} is not supported")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _parse_field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise BadRequest("obsolete line folding in header")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise BadRequest("header field name is not a token")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise BadRequest(f"control character in header {name.decode('ascii')}")
    return name.decode("ascii"), value.decode("latin-1")


def _apply_target(head: RequestHead) -> None:
    """Check the request-target form against the method and split it."""
    target = head.target
    if head.method == "CONNECT":
        head.form = "authority"
        head.host, head.port = parse_authority(target, default_port=None)
        return
    if target.startswith("/"):
        head.form, head.path = "origin", target
        return
    scheme, sep, rest = target.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme.isalpha():
        raise BadRequest("request target must be an absolute URL (or host:port for CONNECT)")
    if scheme not in DEFAULT_PORTS:
        raise NotImplementedByProxy(f"scheme {scheme!r} is not supported")
    authority, tail = _AUTHORITY_AND_TAIL.fullmatch(rest).groups()  # type: ignore[union-attr]
    if "@" in authority:
        raise BadRequest("userinfo in request target")
    head.scheme = scheme
    head.host, head.port = parse_authority(authority, default_port=DEFAULT_PORTS[scheme])
    head.path = ("/" + tail if tail.startswith("?") else tail) or "/"


def parse_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets) into a host without brackets and a port."""
    if authority.startswith("["):
        host, bracket, port_part = authority.partition("]")
        host += bracket
        if port_part and not port_part.startswith(":"):
            raise BadRequest(f"bad authority {authority!r}")
        port_text = port_part[1:] if port_part else ""
        has_port = bool(port_part)
    else:
        host, colon, port_text = authority.rpartition(":")
        has_port = bool(colon)
        if not has_port:
            host = authority
    if not host or not _HOST.fullmatch(host) or not _valid_ip_literal(host) or not _valid_name(host):
        raise BadRequest(f"bad host in {authority!r}")
    if not has_port:
        if default_port is None:
            raise BadRequest(f"{authority!r} has no port")
        return host.strip("[]"), default_port
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise BadRequest(f"bad port in {authority!r}")
    return host.strip("[]"), int(port_text)


def _valid_ip_literal(host: str) -> bool:
    """A bracketed host must be an IPv6 address (IPvFuture is not dialable)."""
    if not host.startswith("["):
        return True
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def _valid_name(host: str) -> bool:
    """DNS's shape (RFC 1035 §2.3.4): labels of 1 to 63 octets, 253 in all. A name
    that breaks it cannot be looked up (Python's IDNA codec refuses it): 400, not 502."""
    if host.startswith("["):
        return True
    name = host[:-1] if host.endswith(".") else host
    return len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


def _values(fields: dict[str, list[str]], name: str) -> list[str]:
    """All comma-separated list members of header `name`, lower-cased and trimmed.

    Only OWS (SP, HTAB) is trimmed: str.strip() would also eat NBSP and NEL, and
    "chunked\xa0" must not pass for "chunked".
    """
    return [
        item.strip(" \t").lower()
        for value in fields.get(name, ())
        for item in value.split(",")
        if item.strip(" \t")
    ]


def _apply_framing(head: RequestHead) -> None:
    """RFC 9112 §6: decide how the body is delimited, refusing anything ambiguous."""
    has_te = "transfer-encoding" in head.fields
    lengths = head.fields.get("content-length", [])
    if has_te and lengths:
        # Two framings are how requests are smuggled (RFC 9112 §6.3): never pick one.
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if has_te:
        _apply_transfer_encoding(head)
    elif lengths:
        head.content_length = _content_length(lengths)
    if head.method == "CONNECT" and head.has_body:
        # CONNECT has no content (RFC 9110 §9.3.6): these bytes would go down the tunnel.
        raise BadRequest("CONNECT request with a body")


def _apply_transfer_encoding(head: RequestHead) -> None:
    if head.version == "HTTP/1.0":
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    codings = _values(head.fields, "transfer-encoding")
    if not codings or codings[-1] != "chunked":
        raise NotImplementedByProxy("final transfer coding is not chunked")
    if len(codings) > 1:
        raise NotImplementedByProxy("transfer codings other than chunked")
    head.chunked = True


def _content_length(values: list[str]) -> int:
    """One length; a list of identical values is that value (RFC 9110 §8.6)."""
    members = {item.strip(" \t") for value in values for item in value.split(",")}
    if len(members) != 1 or not _DIGITS.fullmatch(next(iter(members))):
        raise BadRequest("invalid or conflicting Content-Length")
    return int(members.pop())


def _check_host(head: RequestHead) -> None:
    """RFC 9112 §3.2: one Host (required in HTTP/1.1), and its value a valid authority.

    The proxy replaces Host with the target's authority, but a request whose Host is
    invalid or doubled is refused so that no hop downstream can read it differently.
    """
    hosts = head.fields.get("host", [])
    if len(hosts) > 1 or (head.version == "HTTP/1.1" and not hosts):
        raise BadRequest("an HTTP/1.1 request needs exactly one Host header")
    if hosts and hosts[0]:
        parse_authority(hosts[0], default_port=DEFAULT_PORTS["http"])


def persistence(fields: dict[str, list[str]], version: str) -> tuple[frozenset[str], bool]:
    """(Connection tokens, whether the connection persists) for a request or response
    (RFC 9112 §9.3: HTTP/1.1 unless "close", HTTP/1.0 only with "keep-alive")."""
    tokens = frozenset(_values(fields, "connection"))
    return tokens, "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens


def _apply_connection(head: RequestHead) -> None:
    head.connection_tokens, head.keep_alive = persistence(head.fields, head.version)
    expect = _values(head.fields, "expect")
    if expect:
        if expect != ["100-continue"]:
            raise ExpectationFailed("only 'Expect: 100-continue' is supported")
        head.expect_continue = head.version == "HTTP/1.1"


def strip_hop_by_hop(headers: Iterable[tuple[str, str]], connection_tokens: Iterable[str] = ()) -> Headers:
    """Drop hop-by-hop fields (RFC 9110 §7.6.1), including those Connection names."""
    drop = HOP_BY_HOP.union(connection_tokens)
    return [(k, v) for k, v in headers if k.lower() not in drop]


def via_value(version: str, pseudonym: str) -> str:
    """A Via member (RFC 9110 §7.6.3): protocol version received, then our pseudonym."""
    return f"{version.removeprefix('HTTP/')} {pseudonym}"


def response_head(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialise a response head for the client, refusing what would corrupt its framing.

    Used for the proxy's own answers (the stats pages). An origin's response head is
    serialised by forward.py from fields http1_response.py has already checked, so it
    does not pay for these checks twice. Raises ValueError for a field that cannot be
    made safe (a bug in the caller).
    """
    if not 100 <= status <= 999:
        raise ValueError(f"invalid status code {status}")
    if not _FIELD_TEXT.fullmatch(reason):
        reason = ""  # the reason phrase is optional and clients ignore it (RFC 9112 §4)
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{name}: {_response_value(name, value)}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response_value(name: str, value: str) -> str:
    if not _TOKEN_TEXT.fullmatch(name):
        raise ValueError(f"response header name {name!r} is not a token")
    # RFC 9112 §5.2: a proxy replaces each obs-fold with SP before forwarding.
    value = _OBS_FOLD_TEXT.sub(" ", value).strip(" \t")
    if not _FIELD_TEXT.fullmatch(value):
        raise ValueError(f"control character in response header {name}")
    return value


def chunk(data: bytes | bytearray | memoryview) -> list[bytes | bytearray | memoryview]:
    """One chunk of a chunked body, as pieces for a gathering send."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"


class ChunkedDecoder:
    """Decode a chunked body fed in arbitrary pieces.

    `feed` returns the data decoded from what it was given, as one piece (the proxy
    re-frames a body per read, never per chunk); once `done`, `unused` holds the bytes that
    follow the body (they belong to the next pipelined request, or make an origin's
    connection unfit for reuse). Chunk extensions are validated and dropped; trailers are
    validated and dropped. The same decoder reads clients' and origins' bodies: `error` is
    what a framing fault raises (400 for a client, 502 for an origin), `too_large` what a
    trailer section over its bound raises.

    The buffer is consumed by offset and compacted once per feed: a piece holding
    thousands of tiny chunks costs one pass, not a copy per chunk. `max_overhead`, if
    given, bounds the framing: once it exceeds that many bytes it may not outweigh the
    data (1-byte chunks cost a chunk's work per byte, which a client could use to burn
    the proxy's CPU at line rate).
    """

    MAX_SIZE_DIGITS = 16

    def __init__(
        self,
        max_line: int = 4096,
        max_trailer: int = 16384,
        error: type[ProxyError] = BadRequest,
        too_large: type[ProxyError] = HeadTooLarge,
        max_overhead: int | None = None,
    ) -> None:
        self._buf = bytearray()
        self._remaining = 0
        self._state = _SIZE
        self._trailer_bytes = 0
        self._max_line = max_line
        self._max_trailer = max_trailer
        self._error = error
        self._too_large = too_large
        self._max_overhead = max_overhead
        self.framing = 0  # bytes of size lines and chunk ends so far
        self.payload = 0  # bytes of chunk data so far
        self.done = False
        self.unused = b""

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        buf = self._buf
        buf += data
        spans: list[memoryview] = []
        with memoryview(buf) as view:
            pos = self._decode(buf, view, spans)
            out = b"".join(spans)
            spans.clear()  # every export of the view released before the buffer shrinks
        del buf[:pos]
        if self.done:
            self.unused += bytes(buf)  # bytes fed after the end belong to what follows
            buf.clear()
        return out

    def _decode(self, buf: bytearray, view: memoryview, spans: list[memoryview]) -> int:
        """Decode from the front of `buf`, adding data to `spans`; the offset reached."""
        pos, size = 0, len(buf)
        while not self.done:
            if self._state == _SIZE:
                simple = _SIMPLE_SIZE_LINE.match(buf, pos)  # most lines: hex digits only
                if simple is not None:
                    self._remaining = int(simple.group(1), 16)
                    self.framing += simple.end() - pos
                    pos = simple.end()
                    self._state = _DATA if self._remaining else _TRAILER
                    self._check_overhead()
                    continue
            elif self._state == _DATA:
                taken = min(self._remaining, size - pos)
                if not taken:
                    break
                spans.append(view[pos : pos + taken])
                pos += taken
                self._remaining -= taken
                self.payload += taken
                if not self._remaining:
                    self._state = _DATA_END
                continue
            elif self._state == _DATA_END and buf.startswith(b"\r\n", pos):
                pos += 2
                self.framing += 2
                self._state = _SIZE
                continue
            end = self._line_end(buf, pos)
            if end < 0:
                break
            line, pos = bytes(view[pos:end]), end + 2
            self._line(line)
        return pos

    def _line_end(self, buf: bytearray, pos: int) -> int:
        """Where the line at `pos` ends (its CR), or -1 if it is not complete yet."""
        end = buf.find(b"\r\n", pos, pos + self._max_line + 2)
        if end < 0:
            if len(buf) - pos > self._max_line + 1:
                raise self._error("chunk line too long")
            if buf.find(b"\n", pos) >= 0 or buf.find(b"\r", pos, len(buf) - 1) >= 0:
                raise self._error("bare CR or LF in chunked framing")
        return end

    def _line(self, line: bytes) -> None:
        """One complete line of framing (without its CRLF), in the current state."""
        if b"\r" in line or b"\n" in line:
            raise self._error("bare CR or LF in chunked framing")
        self.framing += len(line) + 2
        if self._state == _SIZE:
            self._remaining = self._parse_size(line)
            self._state = _DATA if self._remaining else _TRAILER
            self._check_overhead()
        elif self._state == _DATA_END:
            if line:
                raise self._error("chunk data longer than its size")
            self._state = _SIZE
        else:
            self._trailer_line(line)

    def _check_overhead(self) -> None:
        limit = self._max_overhead
        if limit is not None and self.framing > limit and self.framing > self.payload + self._remaining:
            raise self._error(f"chunked framing outweighs its data ({self.framing} framing bytes)")

    def _parse_size(self, line: bytes) -> int:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None or len(match.group(1)) > self.MAX_SIZE_DIGITS:
            raise self._error("invalid chunk size")
        if match.group(2) and not _CHUNK_EXT.fullmatch(match.group(2)):
            raise self._error("malformed chunk extension")
        return int(match.group(1), 16)

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > self._max_trailer:
            raise self._too_large(f"trailer section larger than {self._max_trailer} bytes")
        try:
            _parse_field(line)
        except BadRequest as exc:
            raise self._error(f"trailer: {exc.message}") from None


_SIZE, _DATA, _DATA_END, _TRAILER = "size", "data", "data-end", "trailer"
_SIMPLE_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")  # no extension: the fast path
