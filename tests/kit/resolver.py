"""A resolver for proxies under test: addresses and a fixed table, never DNS (TESTING.md).

`offline_resolver({"dual.test": ["192.0.2.1", "127.0.0.1"]})` answers those names with
those addresses in that order (a test of Happy Eyeballs puts a black hole first);
numeric hosts are parsed as getaddrinfo parses them (so `127.1` and `2130706433` are
127.0.0.1); `localhost` is 127.0.0.1; every other name fails as an unknown name would.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence

Resolved = list[tuple[socket.AddressFamily, tuple[str, int]]]


def offline_resolver(table: Mapping[str, Sequence[str]] | None = None) -> Callable[[str, int], Resolved]:
    names = {"localhost": ["127.0.0.1"], **(table or {})}

    def resolve(host: str, port: int) -> Resolved:
        if host.lower() in names:
            return [(_family(address), (address, port)) for address in names[host.lower()]]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test resolver's table") from None
        return [(socket.AddressFamily(family), (str(addr[0]), port)) for family, _, _, _, addr in infos]

    return resolve


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET
