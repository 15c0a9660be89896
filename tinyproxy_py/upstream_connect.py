"""Reach a target through an upstream proxy: HTTP CONNECT, or SOCKS5 (socks5.py).

`http_connect_handshake` asks an HTTP proxy for a tunnel and returns the bytes that
arrived after its response head: they are the target's and belong to the tunnel.
`connect_through` dials the upstream and runs the handshake its scheme needs, all under
one deadline. Rule: it owns the socket until it returns it, and closes it on any raise.
Imports: errors, dialer, socks5, upstream; socket, time.
"""

from __future__ import annotations

import re
import socket
import time
from http import HTTPStatus

from .dialer import UPSTREAM_CAUSES, dial
from .errors import BadRequest, LoopDetected, UpstreamError
from .socks5 import HandshakeIO, peer_label, socks5_handshake
from .upstream import Upstream, join_host_port

# A CONNECT answer is a status line and a few fields; 16 KiB is h11's default bound for
# an incomplete event, and four times what common proxies (squid, tinyproxy) send.
MAX_RESPONSE_HEAD = 16 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")
_TARGET = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+")


def http_connect_handshake(
    sock: socket.socket,
    host: str,
    port: int,
    proxy_authorization: str | None = None,
    *,
    deadline: float,
    label: str | None = None,
    via: str = "",
) -> bytes:
    """Send `CONNECT host:port` to the HTTP proxy at the other end of `sock`; on a 2xx,
    return the bytes that came after the response head (the tunnel's first bytes).

    Interim 1xx answers are skipped. 407 raises UpstreamError (cause "upstream-auth"),
    any other status UpstreamError ("upstream-status"), the deadline UpstreamTimeout.
    `via`, if given, is sent as a Via member: a CONNECT that comes back through the
    same proxy is then recognised as a loop. On return the socket's timeout is as it
    was; on a raise the caller closes it.
    """
    io = HandshakeIO(sock, deadline, label or peer_label(sock, "upstream proxy"))
    previous = sock.gettimeout()
    authority = join_host_port(host.strip("[]"), port)
    io.send(connect_head(authority, proxy_authorization, via))
    status, rest = _read_head(io, b"")
    while 100 <= status < 200 and status != HTTPStatus.SWITCHING_PROTOCOLS:
        status, rest = _read_head(io, rest)
    _check_status(io.label, status, authority, proxy_authorization is not None)
    sock.settimeout(previous)
    return rest


def connect_head(authority: str, proxy_authorization: str | None, via: str = "") -> bytes:
    """The CONNECT request head; refuses a target or credential that would break framing."""
    if not _TARGET.fullmatch(authority):
        raise BadRequest(f"bad CONNECT target {authority!r}")
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if via:
        if not via.isprintable() or not via.isascii():
            raise ValueError("Via must be printable ASCII")
        lines.append(f"Via: {via}")
    if proxy_authorization is not None:
        if not proxy_authorization.isprintable() or not proxy_authorization.isascii():
            raise ValueError("Proxy-Authorization must be printable ASCII")
        lines.append(f"Proxy-Authorization: {proxy_authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _read_head(io: HandshakeIO, buffered: bytes) -> tuple[int, bytes]:
    """(status, bytes after the head), reading no further than the head's end plus one recv."""
    buffer = bytearray(buffered)
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) >= MAX_RESPONSE_HEAD:
            raise io.protocol_error(f"sent a response head over {MAX_RESPONSE_HEAD} bytes")
        chunk = io.recv_some(MAX_RESPONSE_HEAD + 4 - len(buffer))
        if not chunk:
            raise io.protocol_error("closed the connection before answering CONNECT")
        buffer += chunk
    return _status(io, bytes(buffer[: end + 2])), bytes(buffer[end + 4 :])


def _status(io: HandshakeIO, head: bytes) -> int:
    match = _STATUS_LINE.fullmatch(head.split(b"\r\n", 1)[0])
    if match is None:
        raise io.protocol_error("did not answer CONNECT with an HTTP/1.x status line")
    return int(match[1])


def _check_status(label: str, status: int, authority: str, sent_credentials: bool) -> None:
    if 200 <= status < 300:
        return
    if status == HTTPStatus.PROXY_AUTHENTICATION_REQUIRED:
        raise auth_refused(label, sent_credentials)
    if status == HTTPStatus.LOOP_DETECTED:  # our own Via came back: say so, not "bad gateway"
        raise LoopDetected(f"{label} reports a loop for CONNECT to {authority}")
    raise UpstreamError(
        f"{label} refused CONNECT to {authority}: {_describe(status)}", cause="upstream-status"
    )


def auth_refused(label: str, sent_credentials: bool) -> UpstreamError:
    """An upstream proxy answered 407: say whether our credentials were wrong or missing."""
    why = (
        "refused the configured credentials" if sent_credentials else "wants credentials; none are configured"
    )
    return UpstreamError(f"{label} {why} (407)", cause="upstream-auth")


def _describe(status: int) -> str:
    """The status and its standard phrase; the upstream's own reason text is not repeated."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def connect_through(
    upstream: Upstream, host: str, port: int, *, timeout: float, via: str = ""
) -> tuple[socket.socket, bytes]:
    """A socket tunnelled to host:port through `upstream`, and the target's first bytes.

    `via` is our Via member, sent with a CONNECT to an HTTP upstream (loop detection).
    `timeout` bounds the whole: connecting to the upstream and its handshake (which
    includes the upstream's own connect to the target). The caller owns the returned
    socket; on any raise the socket has already been closed.
    """
    deadline = time.monotonic() + timeout
    label = f"upstream {upstream}"
    sock = dial(upstream.address, max(deadline - time.monotonic(), 0.001), name=label, causes=UPSTREAM_CAUSES)
    try:
        if upstream.scheme == "socks5":
            socks5_handshake(
                sock, host, port, upstream.username, upstream.password, deadline=deadline, label=label
            )
            return sock, b""
        pending = http_connect_handshake(
            sock, host, port, upstream.proxy_authorization(), deadline=deadline, label=label, via=via
        )
        return sock, pending
    except BaseException:
        sock.close()
        raise
