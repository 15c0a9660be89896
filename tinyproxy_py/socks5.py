"""SOCKS5 client handshake (RFC 1928, with RFC 1929 username/password) on a connected socket.

Host names go to the SOCKS server as names (ATYP 3) and it resolves them: this proxy
never asks DNS for a target it reaches through SOCKS. Address literals go as ATYP 1 / 4.
Every read and write is bounded by one deadline (a time.monotonic() value), and the reply
is read to its exact length, so bytes the target sends at once stay in the socket for the
tunnel. `HandshakeIO` is shared with the HTTP CONNECT handshake (upstream_connect.py).

Rule: failures raise UpstreamError / UpstreamTimeout whose message names the upstream
and the target, never an internal exception's text (that stays in __cause__ for the log).
Imports: errors; socket, ipaddress, time.
"""

from __future__ import annotations

import ipaddress
import socket
import time

from .errors import UpstreamError, UpstreamTimeout

VERSION = 5
NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
AUTH_VERSION = 1  # RFC 1929 subnegotiation
CMD_CONNECT = 1
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4

# RFC 1928 section 6 reply codes → (text, cause). TTL expired is what several servers
# send when their own connect to the target timed out, hence a timeout (504).
REPLIES = {
    1: ("general SOCKS server failure", "upstream-error"),
    2: ("connection not allowed by ruleset", "upstream-forbidden"),
    3: ("network unreachable", "upstream-unreachable"),
    4: ("host unreachable", "upstream-unreachable"),
    5: ("connection refused", "upstream-refused"),
    6: ("TTL expired", "upstream-timeout"),
    7: ("command not supported", "upstream-protocol"),
    8: ("address type not supported", "upstream-protocol"),
}


class HandshakeIO:
    """A connected blocking socket, read and written under one deadline, for one upstream.

    Maps socket failures to UpstreamError / UpstreamTimeout that name `label`.
    """

    def __init__(self, sock: socket.socket, deadline: float, label: str) -> None:
        self.sock = sock
        self.deadline = deadline
        self.label = label

    def send(self, data: bytes) -> None:
        try:
            self._arm()
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise self.timed_out() from exc
        except OSError as exc:
            raise UpstreamError(f"{self.label} broke off the handshake", cause="upstream-error") from exc

    def recv_some(self, limit: int) -> bytes:
        """Up to `limit` bytes; b"" once the upstream has closed."""
        try:
            self._arm()
            return self.sock.recv(limit)
        except TimeoutError as exc:
            raise self.timed_out() from exc
        except OSError as exc:
            raise UpstreamError(f"{self.label} broke off the handshake", cause="upstream-error") from exc

    def recv_exact(self, count: int) -> bytes:
        """Exactly `count` bytes, never more: what follows belongs to the tunnel."""
        data = b""
        while len(data) < count:
            chunk = self.recv_some(count - len(data))
            if not chunk:
                raise self.protocol_error("closed the connection during the handshake")
            data += chunk
        return data

    def timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"{self.label} did not complete the handshake in time", cause="upstream-timeout"
        )

    def protocol_error(self, what: str) -> UpstreamError:
        return UpstreamError(f"{self.label} {what}", cause="upstream-protocol")

    def _arm(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)


def peer_label(sock: socket.socket, kind: str) -> str:
    """'<kind> host:port' for the socket's peer, to name the upstream in errors."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return kind
    return f"{kind} [{host}]:{port}" if ":" in host else f"{kind} {host}:{port}"


def socks5_handshake(
    sock: socket.socket,
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    *,
    deadline: float,
    label: str | None = None,
) -> None:
    """Ask the SOCKS5 server at the other end of `sock` to connect to host:port.

    On return the socket carries the tunnel, with its timeout as it was before. On a
    raise the socket is in an unknown state: the caller (its owner) closes it.
    `label` names the upstream in errors (default: "SOCKS5 upstream <peer address>").
    """
    io = HandshakeIO(sock, deadline, label or peer_label(sock, "SOCKS5 upstream"))
    previous = sock.gettimeout()
    request = connect_request(host, port)  # a bad target fails before any byte is sent
    _negotiate(io, username, password)
    io.send(request)
    _read_reply(io, host, port)
    sock.settimeout(previous)


def greeting(offer_password: bool) -> bytes:
    methods = [NO_AUTH, USER_PASS] if offer_password else [NO_AUTH]
    return bytes([VERSION, len(methods), *methods])


def auth_request(username: str, password: str) -> bytes:
    """RFC 1929: VER, ULEN, UNAME, PLEN, PASSWD."""
    user, secret = username.encode(), password.encode()
    if not 0 < len(user) <= 255 or len(secret) > 255:
        raise ValueError("a SOCKS5 user name is 1 to 255 bytes and a password at most 255")
    return bytes([AUTH_VERSION, len(user)]) + user + bytes([len(secret)]) + secret


def connect_request(host: str, port: int) -> bytes:
    """VER, CMD=CONNECT, RSV, then the address: ATYP 1 / 4 for literals, 3 for names."""
    if not 0 < port <= 65535:
        raise ValueError(f"port must be within 1..65535, got {port}")
    return bytes([VERSION, CMD_CONNECT, 0]) + _address(host) + port.to_bytes(2, "big")


def _address(host: str) -> bytes:
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        return _domain(literal)
    return bytes([ATYP_IPV4 if ip.version == 4 else ATYP_IPV6]) + ip.packed


def _domain(name: str) -> bytes:
    try:
        raw = name.encode("ascii") if name.isascii() else name.encode("idna")
    except UnicodeError:
        raw = b""
    if not 0 < len(raw) <= 255:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise UpstreamError(f"host name {shown} cannot be sent to a SOCKS5 server", cause="dns")
    return bytes([ATYP_DOMAIN, len(raw)]) + raw


def _negotiate(io: HandshakeIO, username: str | None, password: str | None) -> None:
    io.send(greeting(username is not None))
    version, method = io.recv_exact(2)
    if version != VERSION:
        raise io.protocol_error("is not a SOCKS5 server")
    if method == NO_AUTH:
        return
    if method == USER_PASS and username is not None:
        _authenticate(io, username, password or "")
    elif method == USER_PASS:
        raise UpstreamError(
            f"{io.label} wants a user name and password; none is configured", cause="upstream-auth"
        )
    elif method == NO_ACCEPTABLE:
        raise UpstreamError(
            f"{io.label} accepts none of the offered authentication methods", cause="upstream-auth"
        )
    else:
        raise io.protocol_error(f"chose authentication method {method}, which was not offered")


def _authenticate(io: HandshakeIO, username: str, password: str) -> None:
    io.send(auth_request(username, password))
    _version, status = io.recv_exact(2)  # some servers answer VER 5 here: only STATUS counts
    if status != 0:
        raise UpstreamError(f"{io.label} refused the user name or password", cause="upstream-auth")


def _read_reply(io: HandshakeIO, host: str, port: int) -> None:
    version, reply, _reserved, atyp = io.recv_exact(4)
    if version != VERSION:
        raise io.protocol_error("sent a reply that is not SOCKS5")
    if reply != 0:
        raise _reply_error(io.label, reply, f"{host}:{port}")
    io.recv_exact(_bound_length(io, atyp))  # BND.ADDR and BND.PORT: not needed for CONNECT


def _bound_length(io: HandshakeIO, atyp: int) -> int:
    if atyp == ATYP_IPV4:
        return 4 + 2
    if atyp == ATYP_IPV6:
        return 16 + 2
    if atyp == ATYP_DOMAIN:
        return io.recv_exact(1)[0] + 2
    raise io.protocol_error(f"sent an unknown address type {atyp}")


def _reply_error(label: str, reply: int, target: str) -> UpstreamError | UpstreamTimeout:
    text, cause = REPLIES.get(reply, ("unknown reply", "upstream-error"))
    message = f"{label} could not connect to {target}: {text} (SOCKS5 reply {reply})"
    if cause == "upstream-timeout":
        return UpstreamTimeout(message, cause=cause)
    return UpstreamError(message, cause=cause)
