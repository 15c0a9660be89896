"""The order a host's addresses are tried in (RFC 8305 §4), and what each override means."""

from __future__ import annotations

import socket

import pytest

from tinyproxy_py.net.dialer import _interleaved
from tinyproxy_py.settings.config import parse_override

V4, V6 = socket.AF_INET, socket.AF_INET6


def addresses(*hosts: str) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    return [(V6 if ":" in host else V4, (host, 80)) for host in hosts]


@pytest.mark.parametrize(
    ("resolved", "tried"),
    [
        (["::1", "::2", "10.0.0.1", "10.0.0.2"], ["::1", "10.0.0.1", "::2", "10.0.0.2"]),
        (["10.0.0.1", "::1", "::2"], ["10.0.0.1", "::1", "::2"]),  # the first family leads
        (["10.0.0.1", "10.0.0.1", "::1"], ["10.0.0.1", "::1"]),  # duplicates tried once
        ([], []),
    ],
)
def test_families_alternate_starting_with_the_first(resolved: list[str], tried: list[str]) -> None:
    assert [sockaddr[0] for _, sockaddr in _interleaved(addresses(*resolved))] == tried


@pytest.mark.parametrize(
    ("name", "line", "parsed"),
    [
        ("resolve", "API.test:443:127.0.0.1", (("api.test", 443), ("127.0.0.1",))),
        ("resolve", "a.test:80:[::1],127.0.0.2", (("a.test", 80), ("::1", "127.0.0.2"))),
        ("connect_to", "a.test:443:[::1]:8443", (("a.test", 443), ("::1", "8443"))),
        ("connect_to", "a.test:80:Local.test:8080", (("a.test", 80), ("local.test", "8080"))),
    ],
)
def test_override_lines(name: str, line: str, parsed: object) -> None:
    assert parse_override(name, line) == parsed


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("resolve", "a.test:443"),
        ("resolve", "a.test:0:127.0.0.1"),
        ("resolve", "a.test:443:nowhere"),
        ("connect_to", "a.test:443:b.test"),
        ("connect_to", "a.test:443:b.test:70000"),
    ],
)
def test_bad_override_lines_are_refused(name: str, line: str) -> None:
    with pytest.raises(ValueError):
        parse_override(name, line)
