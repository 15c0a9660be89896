"""Chaining: reaching a target through a parent proxy, by HTTP CONNECT or SOCKS5.

The two handshakes are sans-IO, like h11: `ConnectHandshake` and `Socks5Handshake` are
given the bytes the parent has sent so far and answer with a `Step` (how many bytes it
used, what to send next, whether the tunnel is open) or None ("need more"), or raise a
ProxyError that names the parent. `connect_through` is their one driver: it dials the
parent and runs a handshake on the socket under one deadline. `dial_parent` and
`auth_refused` are the other two ways the proxy meets a parent (origin/pool.py, origin/exchange.py).

SOCKS5 (RFC 1928, RFC 1929 user/password) sends host names as names: the parent
resolves them, never this proxy. Errors name the parent with its password masked and
never echo what it sent. Rule: `connect_through` owns the socket until it returns it,
and closes it on any raise.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

from ..errors import BadGateway, BadRequest, Cause, GatewayTimeout, LoopDetected, ProxyError
from ..settings.routes import Parent, join_host_port
from ..wire.grammar import MAX_INTERIM, STATUS_LINE
from ..wire.writer import head, reason_phrase, request_line
from .dialer import DIRECT, Dialer
from .stream import PARENT_HANDSHAKE, Stream

# A handshake answer is a status line and a few fields (or a few SOCKS bytes); 16 KiB is
# h11's bound for an incomplete event and four times what squid or tinyproxy send.
MAX_ANSWER_BYTES = 16 * 1024

_TARGET = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+")


@dataclass(frozen=True)
class Step:
    """The handshake used `consumed` received bytes; send `send` next; `done`: the tunnel
    is open and every later byte is the target's."""

    consumed: int
    send: bytes = b""
    done: bool = False


class Handshake(Protocol):
    label: str

    def start(self) -> bytes:
        """The first bytes to send."""

    def advance(self, received: bytes) -> Step | None:
        """The next step for the bytes received since the last step, or None: need more."""


def protocol_error(label: str, what: str) -> BadGateway:
    return BadGateway(f"{label} {what}", cause=Cause.PARENT_PROTOCOL)


def auth_refused(label: str, sent_credentials: bool) -> BadGateway:
    """A parent answered 407: say whether our credentials were wrong or missing."""
    why = (
        "refused the configured credentials" if sent_credentials else "wants credentials; none are configured"
    )
    return BadGateway(f"{label} {why} (407)", cause=Cause.PARENT_AUTH)


# --- HTTP CONNECT ----------------------------------------------------------------------------


class ConnectHandshake:
    """`CONNECT host:port` to an HTTP parent. `via`, if given, goes as a Via member, so a
    CONNECT that comes back through this same proxy is recognised as a loop."""

    def __init__(
        self, label: str, host: str, port: int, proxy_authorization: str | None = None, via: str = ""
    ) -> None:
        self.label = label
        self.authority = join_host_port(host.strip("[]"), port)
        self.request = connect_head(self.authority, proxy_authorization, via)  # BadRequest first
        self.sent_credentials = proxy_authorization is not None
        self.interim = 0

    def start(self) -> bytes:
        return self.request

    def advance(self, received: bytes) -> Step | None:
        end = received.find(b"\r\n\r\n", 0, MAX_ANSWER_BYTES + 4)
        if end < 0:
            return None
        status = self._status(received[: end + 2])
        if 100 <= status < 200 and status != HTTPStatus.SWITCHING_PROTOCOLS:
            self.interim += 1
            if self.interim > MAX_INTERIM:
                raise protocol_error(self.label, f"sent more than {MAX_INTERIM} interim answers")
            return Step(end + 4)
        self._check(status)
        return Step(end + 4, done=True)

    def _status(self, head: bytes) -> int:
        match = STATUS_LINE.fullmatch(head.split(b"\r\n", 1)[0])
        if match is None or match[1] != b"1" or match[2] not in (b"0", b"1"):
            raise protocol_error(self.label, "did not answer CONNECT with an HTTP/1.x status line")
        return int(match[3])

    def _check(self, status: int) -> None:
        if 200 <= status < 300:
            return
        if status == HTTPStatus.PROXY_AUTHENTICATION_REQUIRED:
            raise auth_refused(self.label, self.sent_credentials)
        if status == HTTPStatus.LOOP_DETECTED:  # our own Via came back: say so, not "bad gateway"
            raise LoopDetected(f"{self.label} reports a loop for CONNECT to {self.authority}")
        raise BadGateway(
            f"{self.label} refused CONNECT to {self.authority}: {_describe(status)}",
            cause=Cause.PARENT_STATUS,
        )


def connect_head(authority: str, proxy_authorization: str | None, via: str = "") -> bytes:
    """The CONNECT request head; refuses a target or credential that would break framing."""
    if not _TARGET.fullmatch(authority):
        raise BadRequest(f"bad CONNECT target {authority!r}")
    fields = [("Host", authority)]
    for name, value in (("Via", via), ("Proxy-Authorization", proxy_authorization or "")):
        if value and not (value.isprintable() and value.isascii()):
            raise ValueError(f"{name} must be printable ASCII")
        if value:
            fields.append((name, value))
    return head(request_line("CONNECT", authority), fields, encoding="ascii")


def _describe(status: int) -> str:
    """The status and its standard phrase; the parent's own reason text is not repeated."""
    phrase = reason_phrase(status)
    return f"{status} {phrase}" if phrase else str(status)


# --- SOCKS5 ----------------------------------------------------------------------------------

VERSION = 5
NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
AUTH_VERSION = 1  # RFC 1929 subnegotiation
CMD_CONNECT = 1
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4

# RFC 1928 section 6 reply codes → (text, cause). TTL expired is what several servers
# send when their own connect to the target timed out, hence a timeout (504).
REPLIES = {
    1: ("general SOCKS server failure", Cause.PARENT_ERROR),
    2: ("connection not allowed by ruleset", Cause.PARENT_FORBIDDEN),
    3: ("network unreachable", Cause.PARENT_UNREACHABLE),
    4: ("host unreachable", Cause.PARENT_UNREACHABLE),
    5: ("connection refused", Cause.PARENT_REFUSED),
    6: ("TTL expired", Cause.PARENT_TIMEOUT),
    7: ("command not supported", Cause.PARENT_PROTOCOL),
    8: ("address type not supported", Cause.PARENT_PROTOCOL),
}


class Socks5Handshake:
    """Method choice, then (if the parent asks) RFC 1929 user/password, then CONNECT."""

    def __init__(
        self, label: str, host: str, port: int, username: str | None = None, password: str | None = None
    ) -> None:
        self.label = label
        self.target = f"{host}:{port}"
        self.request = connect_request(host, port)  # a bad target fails before any byte is sent
        self.credentials = auth_request(username, password or "") if username is not None else None
        self.state = self._method

    def start(self) -> bytes:
        return greeting(self.credentials is not None)

    def advance(self, received: bytes) -> Step | None:
        return self.state(received)

    def _method(self, received: bytes) -> Step | None:
        if len(received) < 2:
            return None
        version, method = received[:2]
        if version != VERSION:
            raise protocol_error(self.label, "is not a SOCKS5 server")
        if method == NO_AUTH:
            self.state = self._reply
            return Step(2, self.request)
        if method == USER_PASS and self.credentials is not None:
            self.state = self._auth_status
            return Step(2, self.credentials)
        if method == USER_PASS:
            raise self._auth_error("wants a user name and password; none is configured")
        if method == NO_ACCEPTABLE:
            raise self._auth_error("accepts none of the offered authentication methods")
        raise protocol_error(self.label, f"chose authentication method {method}, which was not offered")

    def _auth_status(self, received: bytes) -> Step | None:
        if len(received) < 2:
            return None
        if received[1] != 0:  # some servers answer VER 5 here: only STATUS counts
            raise self._auth_error("refused the user name or password")
        self.state = self._reply
        return Step(2, self.request)

    def _reply(self, received: bytes) -> Step | None:
        if len(received) < 4:
            return None
        version, reply, _reserved, atyp = received[:4]
        if version != VERSION:
            raise protocol_error(self.label, "sent a reply that is not SOCKS5")
        if reply != 0:
            raise _reply_error(self.label, reply, self.target)
        if atyp == ATYP_DOMAIN and len(received) < 5:
            return None
        length = 4 + _bound_length(self.label, atyp, received)  # BND.ADDR, BND.PORT: unused
        return Step(length, done=True) if len(received) >= length else None

    def _auth_error(self, what: str) -> BadGateway:
        return BadGateway(f"{self.label} {what}", cause=Cause.PARENT_AUTH)


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
        raise BadGateway(f"host name {shown} cannot be sent to a SOCKS5 server", cause=Cause.DNS)
    return bytes([ATYP_DOMAIN, len(raw)]) + raw


def _bound_length(label: str, atyp: int, received: bytes) -> int:
    if atyp == ATYP_IPV4:
        return 4 + 2
    if atyp == ATYP_IPV6:
        return 16 + 2
    if atyp == ATYP_DOMAIN:
        return 1 + received[4] + 2
    raise protocol_error(label, f"sent an unknown address type {atyp}")


def _reply_error(label: str, reply: int, target: str) -> ProxyError:
    text, cause = REPLIES.get(reply, ("unknown reply", Cause.PARENT_ERROR))
    message = f"{label} could not connect to {target}: {text} (SOCKS5 reply {reply})"
    if cause is Cause.PARENT_TIMEOUT:
        return GatewayTimeout(message, cause=cause)
    return BadGateway(message, cause=cause)


# --- the driver ------------------------------------------------------------------------------


def dial_parent(parent: Parent, timeout: float, dialer: Dialer = DIRECT) -> socket.socket:
    """A connection to the parent itself; failures name it, with its password masked. The
    operator chose the parent: the destination policy is for where clients go."""
    return dialer.dial(parent.address, timeout, name=label(parent), to_parent=True)


def label(parent: Parent) -> str:
    return f"parent proxy {parent}"


def connect_through(
    parent: Parent, host: str, port: int, *, timeout: float, via: str = "", dialer: Dialer = DIRECT
) -> tuple[socket.socket, bytes]:
    """A socket tunnelled to host:port through `parent`, and the target's first bytes;
    `timeout` bounds the whole, the parent's own connect to the target included."""
    deadline = time.monotonic() + timeout
    name = label(parent)
    handshake: Handshake
    if parent.scheme == "socks5":
        handshake = Socks5Handshake(name, host, port, parent.username, parent.password)
    else:
        handshake = ConnectHandshake(name, host, port, parent.proxy_authorization(), via)
    sock = dial_parent(parent, max(deadline - time.monotonic(), 0.001), dialer)
    try:
        return sock, run(sock, handshake, deadline)
    except BaseException:
        sock.close()
        raise


def run(sock: socket.socket, handshake: Handshake, deadline: float) -> bytes:
    """Run `handshake` on `sock` until done; the bytes that came after it.

    Every send and receive is bounded by `deadline` (a time.monotonic() value). On return
    the socket's timeout is as it was; on a raise the caller (its owner) closes it.
    """
    previous, received = sock.gettimeout(), b""
    stream = Stream(sock)
    try:
        stream.send(handshake.start(), _left(deadline))
        while True:
            step = handshake.advance(received)
            if step is None:
                if len(received) >= MAX_ANSWER_BYTES:
                    raise protocol_error(handshake.label, f"sent an answer over {MAX_ANSWER_BYTES} bytes")
                _left(deadline)
                data = stream.recv(MAX_ANSWER_BYTES + 4 - len(received), deadline)
                if not data:
                    raise protocol_error(handshake.label, "closed the connection during the handshake")
                received += data
                continue
            received = received[step.consumed :]
            if step.send:
                stream.send(step.send, _left(deadline))
            if step.done:
                sock.settimeout(previous)
                return received
    except OSError as exc:
        raise _handshake_failed(exc, handshake.label) from exc


def _left(deadline: float) -> float:
    """Seconds to `deadline`; TimeoutError once it has passed, even with bytes waiting."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


def _handshake_failed(exc: OSError, name: str) -> ProxyError:
    timed_out = isinstance(exc, TimeoutError)
    what = "did not complete the handshake in time" if timed_out else "broke off the handshake"
    return PARENT_HANDSHAKE.error(f"{name} {what}", timed_out=timed_out)
