"""A resolver for proxies under test: addresses and a fixed table, never DNS: tests make no DNS traffic.

`offline_resolver({"dual.test": ["192.0.2.1", "127.0.0.1"]})` answers those names with
those addresses in that order (a test of Happy Eyeballs puts a black hole first); an
entry may be an (address, port) pair, to send that address to another port;
numeric hosts are parsed as getaddrinfo parses them (so `127.1` and `2130706433` are
127.0.0.1); `localhost` is 127.0.0.1; every other name fails as an unknown name would.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence

Resolved = list[tuple[socket.AddressFamily, tuple[str, int]]]


def offline_resolver(
    table: Mapping[str, Sequence[str | tuple[str, int]]] | None = None,
) -> Callable[[str, int], Resolved]:
    names: dict[str, Sequence[str | tuple[str, int]]] = {"localhost": ["127.0.0.1"], **(table or {})}

    def resolve(host: str, port: int) -> Resolved:
        if host.lower() in names:
            pairs = [(e, port) if isinstance(e, str) else e for e in names[host.lower()]]
            return [(_family(address), (address, to)) for address, to in pairs]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test resolver's table") from None
        return [(socket.AddressFamily(family), (str(addr[0]), port)) for family, _, _, _, addr in infos]

    return resolve


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET
