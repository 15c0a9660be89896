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

from .support import MUST_NOT_EXPIRE


@dataclass
class SocksRequest:
    """What one client asked for, and what it was answered."""

    methods: bytes  # authentication methods offered in the greeting
    username: str | None = None  # as sent in RFC 1929 negotiation
    atyp: int = 0
    host: str = ""
    port: int = 0
    reply: int | None = None  # the SOCKS5 reply code sent (None: none sent)


class _Closed(Exception):
    """The client went away or broke the protocol: stop serving it."""


class SocksServer:
    def __init__(self, users: dict[str, str] | None = None, hosts: dict[str, str] | None = None) -> None:
        self.users = users
        self.hosts = hosts or {}
        self.requests: list[SocksRequest] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._accepter = threading.Thread(target=self._accept, name="socks-accept", daemon=True)
        self._accepter.start()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def close(self) -> None:
        self._closing.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._accepter.join(MUST_NOT_EXPIRE)
        with self._lock:
            live = list(self._sockets)
        for sock in live:  # wake threads blocked in recv; each closes its own sockets
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(MUST_NOT_EXPIRE)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), name="socks-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        self._own(client)
        upstream = None
        try:
            client.settimeout(MUST_NOT_EXPIRE)
            upstream = self._handshake(client)
            if upstream is not None:
                _relay(client, upstream, self._closing)
        except (_Closed, OSError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._disown(sock)

    def _own(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _disown(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def _handshake(self, client: socket.socket) -> socket.socket | None:
        version, count = _recv_exact(client, 2)
        if version != 5:
            raise _Closed
        request = SocksRequest(methods=_recv_exact(client, count))
        self.requests.append(request)
        if not self._authenticate(client, request):
            return None
        _version, command, _reserved, request.atyp = _recv_exact(client, 4)
        request.host = _read_address(client, request.atyp)
        request.port = int.from_bytes(_recv_exact(client, 2), "big")
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
        _version, length = _recv_exact(client, 2)
        username = _recv_exact(client, length).decode()
        password = _recv_exact(client, _recv_exact(client, 1)[0]).decode()
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
        self._own(upstream)
        self._reply(client, request, 0, upstream.getsockname()[:2])
        return upstream

    def _reply(
        self, client: socket.socket, request: SocksRequest, code: int, bound: tuple[str, int] = ("0.0.0.0", 0)
    ) -> None:
        request.reply = code
        ip = ipaddress.ip_address(bound[0])
        atyp = 1 if ip.version == 4 else 4
        client.sendall(bytes([5, code, 0, atyp]) + ip.packed + bound[1].to_bytes(2, "big"))


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return data


def _read_address(sock: socket.socket, atyp: int) -> str:
    if atyp == 1:
        return str(ipaddress.IPv4Address(_recv_exact(sock, 4)))
    if atyp == 4:
        return str(ipaddress.IPv6Address(_recv_exact(sock, 16)))
    if atyp == 3:
        return _recv_exact(sock, _recv_exact(sock, 1)[0]).decode("ascii")
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
