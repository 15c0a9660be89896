"""The PROXY protocol parser as tables (HAProxy's proxy-protocol.txt): each header is also
fed a byte at a time, which must give "need more" until its last byte."""

from __future__ import annotations

import socket
import struct

import pytest

from tinyproxy_py.wire.proxyprotocol import MAX_V2_BODY, V2_SIGNATURE, BadProxyHeader, ProxyHeader, parse

AFTER = b"GET http://o/ HTTP/1.1\r\n\r\n"  # the client's request follows the header


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    pton = socket.inet_pton
    return pton(socket.AF_INET6, src) + pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport)


TLV = bytes([0x04, 0x00, 0x03]) + b"abc"  # PP2_TYPE_NOOP with 3 bytes: skipped

VALID = [
    ("v1 tcp4", b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 8888\r\n", ("192.0.2.7", 56324)),
    ("v1 tcp6", b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 8888\r\n", ("2001:db8::7", 4000)),
    ("v1 unknown", b"PROXY UNKNOWN\r\n", None),
    ("v1 unknown, addresses", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    ("v2 proxy tcp4", v2(1, 0x11, tcp4("192.0.2.7", "198.51.100.1", 56324, 8888)), ("192.0.2.7", 56324)),
    ("v2 proxy tcp6", v2(1, 0x21, tcp6("2001:db8::7", "2001:db8::1", 4000, 8888)), ("2001:db8::7", 4000)),
    ("v2 with a TLV", v2(1, 0x11, tcp4("192.0.2.8", "198.51.100.1", 1, 2) + TLV), ("192.0.2.8", 1)),
    ("v2 local (health check)", v2(0, 0x00, b""), None),
    ("v2 local with addresses", v2(0, 0x11, tcp4("192.0.2.7", "198.51.100.1", 1, 2)), None),
    ("v2 udp: not ours to use", v2(1, 0x12, tcp4("192.0.2.7", "198.51.100.1", 1, 2)), None),
    ("v2 unix", v2(1, 0x31, bytes(216)), None),
]


@pytest.mark.parametrize(("header", "source"), [(h, s) for _, h, s in VALID], ids=[n for n, _, _ in VALID])
def test_valid_headers(header: bytes, source: tuple[str, int] | None) -> None:
    assert parse(header + AFTER) == ProxyHeader(len(header), source)
    for cut in range(len(header)):  # a header split over reads: need more, never a guess
        assert parse(header[:cut]) is None


@pytest.mark.parametrize(
    ("data", "accept"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "any"),  # no header at all
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n", "any"),  # a port missing
        (b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n", "any"),  # family mismatch
        (b"PROXY TCP4 192.0.2.777 198.51.100.1 1 2\r\n", "any"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 70000 2\r\n", "any"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n", "any"),  # leading zero
        (b"PROXY TCP5 192.0.2.7 198.51.100.1 1 2\r\n", "any"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n", "any"),  # LF without CR
        (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "any"),  # over 107 bytes
        (b"PROXY " + b"x" * 120, "any"),  # no end within 107 bytes
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n", "v2"),  # a version not accepted
        (v2(1, 0x11, tcp4("192.0.2.7", "198.51.100.1", 1, 2)), "v1"),
        (V2_SIGNATURE + bytes([0x30, 0x11, 0, 12]) + bytes(12), "any"),  # version 3
        (V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12), "any"),  # command 2
        (v2(1, 0x11, b"\x00" * 8), "any"),  # address block too short for TCP4
        (V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", MAX_V2_BODY + 1), "any"),  # oversized
    ],
)
def test_junk_truncation_and_oversize_are_refused(data: bytes, accept: str) -> None:
    with pytest.raises(BadProxyHeader):
        parse(data, accept)
