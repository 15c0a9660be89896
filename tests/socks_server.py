"""A real SOCKS5 server for the wire tests: loopback, port 0, one thread per connection.

CONNECT only; ATYP 1, 3 and 4; no authentication, or username/password (RFC 1929) when
`users` is given. Names are looked up in `hosts` (name → address literal), never in DNS:
an unknown name gets reply 4 (host unreachable). A refused connect gets reply 5. After a
success the server relays bytes both ways until both sides have ended.

Every request is recorded in `requests`. The server owns every socket it opens and
`close()` closes them all and joins its threads.
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .kit.clients import recv_exactly
from .kit.servers import ScriptedServer
from .kit.waits import MUST_NOT_EXPIRE


@dataclass
class SocksRequest:
    """What one client asked for, and what it was answered."""

    methods: bytes  # authentication methods offered in the greeting
    username: str | None = None  # as sent in RFC 1929 negotiation
    atyp: int = 0
    host: str = ""
    port: int = 0
    reply: int | None = None  # the SOCKS5 reply code sent (None: none sent)


class _Closed(ConnectionError):
    """The client went away or broke the protocol: stop serving it."""


class SocksServer:
    def __init__(self, users: dict[str, str] | None = None, hosts: dict[str, str] | None = None) -> None:
        self.users = users
        self.hosts = hosts or {}
        self.requests: list[SocksRequest] = []
        self._server = ScriptedServer(self._serve, wake=True)  # close() wakes handshakes in recv
        self.port = self._server.port

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def close(self) -> None:
        self._server.close()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(MUST_NOT_EXPIRE)
        upstream = self._handshake(client)  # a ConnectionError ends the script quietly
        if upstream is not None:
            with upstream:
                _relay(client, upstream, self._server.release)

    def _handshake(self, client: socket.socket) -> socket.socket | None:
        version, count = recv_exactly(client, 2)
        if version != 5:
            raise _Closed
        request = SocksRequest(methods=recv_exactly(client, count))
        self.requests.append(request)
        if not self._authenticate(client, request):
            return None
        _version, command, _reserved, request.atyp = recv_exactly(client, 4)
        request.host = _read_address(client, request.atyp)
        request.port = int.from_bytes(recv_exactly(client, 2), "big")
        if command != 1:
            self._reply(client, request, 7)
            return None
        return self._connect(client, request)

    def _authenticate(self, client: socket.socket, request: SocksRequest) -> bool:
        if self.users is None:
            client.sendall(b"\x05\x00" if 0 in request.methods else b"\x05\xff")
            return 0 in request.methods
        if 2 not in request.methods:
            client.sendall(b"\x05\xff")
            return False
        client.sendall(b"\x05\x02")
        _version, length = recv_exactly(client, 2)
        username = recv_exactly(client, length).decode()
        password = recv_exactly(client, recv_exactly(client, 1)[0]).decode()
        request.username = username
        accepted = self.users.get(username) == password
        client.sendall(b"\x01\x00" if accepted else b"\x01\x01")
        return accepted

    def _connect(self, client: socket.socket, request: SocksRequest) -> socket.socket | None:
        address = request.host if request.atyp != 3 else self.hosts.get(request.host)
        if address is None:
            self._reply(client, request, 4)
            return None
        try:
            upstream = socket.create_connection((address, request.port), timeout=MUST_NOT_EXPIRE)
        except ConnectionRefusedError:
            self._reply(client, request, 5)
            return None
        except OSError:
            self._reply(client, request, 1)
            return None
        try:
            self._reply(client, request, 0, upstream.getsockname()[:2])
        except BaseException:
            upstream.close()
            raise
        return upstream

    def _reply(
        self, client: socket.socket, request: SocksRequest, code: int, bound: tuple[str, int] = ("0.0.0.0", 0)
    ) -> None:
        request.reply = code
        ip = ipaddress.ip_address(bound[0])
        atyp = 1 if ip.version == 4 else 4
        client.sendall(bytes([5, code, 0, atyp]) + ip.packed + bound[1].to_bytes(2, "big"))


def _read_address(sock: socket.socket, atyp: int) -> str:
    if atyp == 1:
        return str(ipaddress.IPv4Address(recv_exactly(sock, 4)))
    if atyp == 4:
        return str(ipaddress.IPv6Address(recv_exactly(sock, 16)))
    if atyp == 3:
        return recv_exactly(sock, recv_exactly(sock, 1)[0]).decode("ascii")
    raise _Closed


def _relay(a: socket.socket, b: socket.socket, closing: threading.Event) -> None:
    """Copy both ways; pass each EOF on as a half-close; stop when both ended or on close()."""
    peers = {a: b, b: a}
    with selectors.DefaultSelector() as selector:
        for sock in peers:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and not closing.is_set():
            for key, _ in selector.select(0.1):
                source = key.fileobj
                assert isinstance(source, socket.socket)
                data = source.recv(65536)
                if data:
                    peers[source].settimeout(MUST_NOT_EXPIRE)
                    peers[source].sendall(data)
                    peers[source].setblocking(False)
                else:
                    selector.unregister(source)
                    peers[source].shutdown(socket.SHUT_WR)


@contextmanager
def socks_server(
    users: dict[str, str] | None = None, hosts: dict[str, str] | None = None
) -> Iterator[SocksServer]:
    server = SocksServer(users, hosts)
    try:
        yield server
    finally:
        server.close()
