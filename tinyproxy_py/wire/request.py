"""Sans-IO HTTP/1.1 for the client side: request heads in (wire/writer.py writes).

Strategy (after h11): a parser is handed the bytes received so far and either
1) returns a parsed head and how many bytes it used, 2) returns None, meaning
"I need more data", or 3) raises a ProxyError whose status is the answer.
Rules: strict RFC 9112 (lenient parsing is how smuggling happens); every input
is bounded by a limit from Config; this module knows no sockets. The head parser
keeps no state and rescans the buffer on each call, so its checks on a partial head
are C-level scans (find/count); a head fed a byte per call still costs O(n^2), which
max_head_bytes and the header deadline bound.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

from ..errors import (
    BadRequest,
    ExpectationFailed,
    HeadTooLarge,
    NotImplementedByProxy,
    URITooLong,
    VersionNotSupported,
)
from .grammar import (
    DEFAULT_PORTS,
    DIGITS,
    TOKEN,
    Headers,
    HeadLimits,
    field_index,
    list_values,
    parse_field,
    persistence,
)

# Visible ASCII without "#": a request-target never carries a fragment (RFC 9112 §3.2).
_TARGET = re.compile(rb"[\x21\x22\x24-\x7e]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_HOST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
_AUTHORITY_AND_TAIL = re.compile(r"([^/?#]*)(.*)", re.DOTALL)
_BLANK_LINES = re.compile(rb"(?:\r\n)*")


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


def parse_request_head(buf: bytes | bytearray, limits: HeadLimits) -> tuple[RequestHead, int] | None:
    """One request head from the front of `buf`, as above. Empty lines before the request
    line are skipped (RFC 9112 §2.2: some clients send a CRLF after a body) but count
    towards the head's size, so they cannot grow without bound."""
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
    headers = [parse_field(line) for line in lines[1:]]
    head = RequestHead(method, target, version, headers)
    _apply_target(head)
    _apply_framing(head)
    _check_host(head)
    _apply_connection(head)
    return head, end + 4


def _check_incomplete(buf: bytes | bytearray, start: int, limits: HeadLimits) -> None:
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
    if not TOKEN.fullmatch(method):
        raise BadRequest("method is not a token")
    if not _TARGET.fullmatch(target):
        raise BadRequest("request target is not visible ASCII, or has a fragment")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise BadRequest("malformed HTTP version")
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        raise VersionNotSupported(f"{version.decode('ascii')} is not supported")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


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


@functools.lru_cache(maxsize=256)
def parse_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets) into a host without brackets and a port.
    Cached: a client's requests name the same few origins, twice each (target and Host)."""
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
    if not host or not _HOST.fullmatch(host) or not _valid_host(host):
        raise BadRequest(f"bad host in {authority!r}")
    if not has_port:
        if default_port is None:
            raise BadRequest(f"{authority!r} has no port")
        return host.strip("[]"), default_port
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise BadRequest(f"bad port in {authority!r}")
    return host.strip("[]"), int(port_text)


def _valid_host(host: str) -> bool:
    """A bracketed host must be an IPv6 address (IPvFuture is not dialable), a name must
    have DNS's shape (RFC 1035 §2.3.4): labels of 1 to 63 octets, 253 in all. A name that
    breaks it cannot be looked up (Python's IDNA codec refuses it): 400, not 502."""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    name = host[:-1] if host.endswith(".") else host
    return len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


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
    codings = list_values(head.fields, "transfer-encoding")
    if not codings or codings[-1] != "chunked":
        raise NotImplementedByProxy("final transfer coding is not chunked")
    if len(codings) > 1:
        raise NotImplementedByProxy("transfer codings other than chunked")
    head.chunked = True


def _content_length(values: list[str]) -> int:
    """One length; a list of identical values is that value (RFC 9110 §8.6)."""
    members = {item.strip(" \t") for value in values for item in value.split(",")}
    if len(members) != 1 or not DIGITS.fullmatch(next(iter(members))):
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


def _apply_connection(head: RequestHead) -> None:
    head.connection_tokens, head.keep_alive = persistence(head.fields, head.version)
    expect = list_values(head.fields, "expect")
    if expect:
        if expect != ["100-continue"]:
            raise ExpectationFailed("only 'Expect: 100-continue' is supported")
        head.expect_continue = head.version == "HTTP/1.1"
