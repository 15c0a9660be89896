"""The PROXY protocol header (HAProxy's spec, versions 1 and 2) a load balancer sends first.

Sans-IO: `parse(buffer, accept)` answers a `ProxyHeader` (how many bytes it took, and the
client address it carries, or None for a health check's LOCAL or an UNKNOWN peer), None
when more bytes are needed, or raises BadProxyHeader. The spec forbids guessing: anything
that is not a complete, valid header of an accepted version is an error, and the caller
closes the connection. Imports: stdlib only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107  # the spec's bound, CRLF included
MAX_V2_BODY = 1024  # addresses are at most 216 bytes; TLVs beyond this are not plausible
MAX_LENGTH = len(V2_SIGNATURE) + 4 + MAX_V2_BODY  # the longest header of either version
_V1 = re.compile(rb"PROXY (TCP4|TCP6) (\S+) (\S+) (\d{1,5}) (\d{1,5})\r\n|PROXY UNKNOWN[^\r\n]*\r\n")
_ADDRESS_BYTES = {0x1: 4, 0x2: 16}  # v2 family nibble: AF_INET, AF_INET6


class BadProxyHeader(ValueError):
    """Not a valid PROXY protocol header of an accepted version: close the connection."""


@dataclass(frozen=True)
class ProxyHeader:
    length: int  # bytes of the buffer the header took
    source: tuple[str, int] | None  # the client's address and port; None: use the TCP peer's


def parse(buffer: bytes | bytearray, accept: str = "any") -> ProxyHeader | None:
    """The header at the start of `buffer`; `accept` is "v1", "v2" or "any"."""
    data = bytes(buffer[:MAX_LENGTH])
    if accept in ("v2", "any") and V2_SIGNATURE.startswith(data[:12]):
        return _v2(data) if len(data) >= 12 else None
    if accept in ("v1", "any") and b"PROXY "[: len(data)] == data[:6]:
        return _v1(data)
    raise BadProxyHeader(f"no PROXY protocol {accept if accept != 'any' else 'v1 or v2'} header")


def _v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1 or b"\n" in data[:MAX_V1]:
            raise BadProxyHeader("a PROXY v1 line is at most 107 bytes and ends in CRLF")
        return None
    match = _V1.fullmatch(data[: end + 2])
    if match is None:
        raise BadProxyHeader("malformed PROXY v1 line")
    if match[1] is None:
        return ProxyHeader(end + 2, None)  # UNKNOWN: the balancer could not tell
    family = 4 if match[1] == b"TCP4" else 6
    source = _address(match[2].decode("ascii"), family)
    for port in (match[4], match[5]):
        if not 0 <= int(port) <= 65535 or (len(port) > 1 and port.startswith(b"0")):
            raise BadProxyHeader("bad port in a PROXY v1 line")
    _address(match[3].decode("ascii"), family)
    return ProxyHeader(end + 2, (source, int(match[4])))


def _address(text: str, family: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise BadProxyHeader(f"bad address in a PROXY header: {text[:40]!r}") from None
    if address.version != family:
        raise BadProxyHeader("a PROXY header's address is not of its family")
    return str(address)


def _v2(data: bytes) -> ProxyHeader | None:
    if data[:12] != V2_SIGNATURE:
        return None  # a prefix of the signature: more is coming
    if len(data) < 16:
        return None
    version, command = data[12] >> 4, data[12] & 0xF
    family, protocol = data[13] >> 4, data[13] & 0xF
    size = int.from_bytes(data[14:16], "big")
    if version != 2 or command > 1:
        raise BadProxyHeader("PROXY v2 header of an unknown version or command")
    if size > MAX_V2_BODY:
        raise BadProxyHeader(f"PROXY v2 header over {MAX_V2_BODY} bytes")
    if len(data) < 16 + size:
        return None
    length = 16 + size
    if command == 0 or family not in _ADDRESS_BYTES or protocol != 1:
        return ProxyHeader(length, None)  # LOCAL (a health check), or not TCP over IP
    width = _ADDRESS_BYTES[family]
    if size < 2 * width + 4:
        raise BadProxyHeader("PROXY v2 address block too short for its family")
    body = data[16:length]
    source = str(ipaddress.ip_address(body[:width]))
    port = int.from_bytes(body[2 * width : 2 * width + 2], "big")
    return ProxyHeader(length, (source, port))  # TLVs after the addresses are skipped
