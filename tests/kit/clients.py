"""Raw client sockets: request bytes, response heads, exact reads, CONNECT tunnels, resets.

No HTTP library: a test or a soak sees exactly the bytes the proxy sent, and a peer
that misbehaves on purpose (a reset, a half-close) is one call.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from .waits import MUST_NOT_EXPIRE


@contextmanager
def client_from(source: str, address: tuple[str, int]) -> Iterator[socket.socket]:
    """A client connection from `source` (127.0.0.2 is "another machine" to a proxy whose
    local clients are 127.0.0.1 only)."""
    sock = socket.create_connection(address, timeout=MUST_NOT_EXPIRE, source_address=(source, 0))
    with sock:
        yield sock


KiB, MiB = 1024, 1024 * 1024
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def abort(sock: socket.socket) -> None:
    """Close with a reset, no FIN, as a crashing peer or a pulled cable would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    finally:
        sock.close()


def request(method: str, url: str, body: bytes = b"", headers: str = "") -> bytes:
    """A request for a proxy (absolute-form `url`); a POST always says its length."""
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {url} HTTP/1.1\r\nHost: x\r\n{length}{headers}\r\n".encode() + body


def connect_request(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def recv_head(sock: socket.socket, limit: int = 256 * KiB) -> bytes:
    """Bytes up to the blank line that ends a head, and whatever came with them.

    Raises ConnectionError if the peer closes first or the head outgrows `limit`.
    """
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > limit:
            raise ConnectionError(f"a head of over {limit} bytes: {buf[:80]!r}")
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a full head: {buf[:200]!r}")
        buf += data
    return buf


def read_head(sock: socket.socket) -> tuple[int, bytes]:
    """The status of a response, and the bytes that came after its head."""
    head, _, rest = recv_head(sock).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def read_response(sock: socket.socket, timeout: float = MUST_NOT_EXPIRE) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body (or none): status, fields, body."""
    sock.settimeout(timeout)
    head, _, rest = recv_head(sock).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), fields, recv_exactly(sock, int(fields.get("content-length", "0")), rest)


def recv_exactly(sock: socket.socket, n: int, already: bytes = b"") -> bytes:
    """`n` bytes, counting `already`; raises ConnectionError if the peer closes first."""
    data = bytearray(already)
    while len(data) < n:
        piece = sock.recv(min(1 << 20, n - len(data)))
        if not piece:
            raise ConnectionError(f"EOF after {len(data)} of {n} bytes")
        data += piece
    return bytes(data)


def recv_to_eof(sock: socket.socket, limit: int = 256 * MiB) -> bytes:
    """Everything until the peer's FIN (at most `limit`); a reset raises."""
    data = bytearray()
    while len(data) < limit and (piece := sock.recv(1 << 20)):
        data += piece
    return bytes(data)


def recv_all(sock: socket.socket, timeout: float = MUST_NOT_EXPIRE) -> bytes:
    """Everything the peer sends until it closes, resets, or the timeout passes."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = MUST_NOT_EXPIRE) -> bytes:
    """Send raw bytes to `address` and return all it answers until it closes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        return recv_all(sock, timeout)


def open_tunnel(
    address: tuple[str, int],
    target: str,
    early: bytes = b"",
    *,
    answer: bytes = b"HTTP/1.1 200 ",
    rcvbuf: int = 0,
    timeout: float = MUST_NOT_EXPIRE,
) -> tuple[socket.socket, bytes]:
    """A client socket with a CONNECT tunnel to `target`, and the tunnel bytes read with the 200.

    `early` goes in the same send as the CONNECT head. The answer must start with
    `answer` (pass the whole head to check it exactly), else ConnectionError.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        if rcvbuf:  # before connect(), so that the window is scaled to it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(connect_request(target) + early)
        buf = recv_head(sock)
        if not buf.startswith(answer):
            raise ConnectionError(f"CONNECT {target} answered {buf[:200]!r}")
    except BaseException:
        sock.close()
        raise
    return sock, buf.partition(b"\r\n\r\n")[2]
