"""Raw HTTP/1.1 clients: tunnels, bulk downloads, connection churn, stalls and aborts.

Plain sockets, no HTTP library, so the client costs the same few microseconds whether
it talks to the origin or through a proxy: requests are a few bytes, bodies are read
with recv_into into one reused 1 MiB buffer. The *_worker functions run in a child
process (see bench.py) so the load does not share a GIL with the process that samples
the proxy; inside they use threads, which release the GIL in every socket call.
"""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

MiB = 1024 * 1024
TIMEOUT = 30.0  # any single socket call; a healthy exchange needs milliseconds
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects: the origin itself, or a proxy in front of it."""

    origin_port: int
    proxy_port: int | None = None  # None: straight to the origin

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.proxy_port or self.origin_port


def get_request(path: str, port: int, *, absolute: bool = False, close: bool = False) -> bytes:
    """A GET for 127.0.0.1:port; absolute-form is what a proxy expects for plain HTTP."""
    target = f"http://127.0.0.1:{port}{path}" if absolute else path
    extra = "Connection: close\r\n" if close else ""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()


def read_head(sock: socket.socket) -> tuple[int, int | None, bytes]:
    """(status, Content-Length or None, body bytes that came with the head)."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_HEAD:
            raise ConnectionError("response head too large")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the response head ended: {data[:60]!r}")
        data += chunk
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(None, 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, length, data[end + 4 :]


def open_socket(endpoint: Endpoint, target_port: int) -> socket.socket:
    """A connection to 127.0.0.1:target_port: direct, or a CONNECT tunnel through the proxy."""
    if endpoint.proxy_port is None:
        return socket.create_connection(("127.0.0.1", target_port), timeout=TIMEOUT)
    sock = socket.create_connection(endpoint.address, timeout=TIMEOUT)
    try:
        host = f"127.0.0.1:{target_port}"
        sock.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status, _, early = read_head(sock)
        if status != 200 or early:
            raise ConnectionError(f"CONNECT answered {status} with {len(early)} extra bytes")
        return sock
    except BaseException:
        sock.close()
        raise


def fetch(sock: socket.socket, request: bytes, buf: memoryview) -> int:
    """Send one GET and read its 200 response to the end of its body; the body's size."""
    sock.sendall(request)
    status, length, rest = read_head(sock)
    if status != 200 or length is None:
        raise ConnectionError(f"answered {status}, Content-Length {length}")
    read_exactly(sock, length - len(rest), buf)
    return length


def read_exactly(sock: socket.socket, count: int, buf: memoryview) -> None:
    while count > 0:
        n = sock.recv_into(buf, min(len(buf), count))
        if not n:
            raise ConnectionError(f"closed with {count} bytes of the body missing")
        count -= n


# --- bulk downloads (scenario c) ---


@dataclass(frozen=True)
class BulkSpec:
    endpoint: Endpoint
    path: str
    streams: int
    repeats: int  # responses per stream, one after another on the same connection


def bulk_worker(spec: BulkSpec) -> tuple[int, float]:
    """`streams` connections at once, each fetching `path` `repeats` times: (bytes, seconds)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(spec.streams) as pool:
        sizes = list(pool.map(lambda _: _bulk_stream(spec), range(spec.streams)))
    return sum(sizes), time.perf_counter() - started


def _bulk_stream(spec: BulkSpec) -> int:
    buf = memoryview(bytearray(MiB))
    request = get_request(spec.path, spec.endpoint.origin_port)
    total = 0
    with open_socket(spec.endpoint, spec.endpoint.origin_port) as sock:
        for _ in range(spec.repeats):
            total += fetch(sock, request, buf)
    return total


# --- connection churn (scenario d) ---


@dataclass(frozen=True)
class ChurnSpec:
    endpoint: Endpoint
    target_port: int  # the origin's HTTP port, or its HTTPS port when cafile is set
    cafile: str | None
    threads: int
    seconds: float
    path: str = "/100b"


def churn_worker(spec: ChurnSpec) -> tuple[int, int]:
    """Open, (CONNECT,) (TLS,) GET, read to EOF, close, in a loop for `seconds`: (done, failed)."""
    context = None
    if spec.cafile:
        context = ssl.create_default_context(cafile=spec.cafile)
    deadline = time.monotonic() + spec.seconds
    with ThreadPoolExecutor(spec.threads) as pool:
        counts = list(pool.map(lambda _: _churn(spec, context, deadline), range(spec.threads)))
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _churn(spec: ChurnSpec, context: ssl.SSLContext | None, deadline: float) -> tuple[int, int]:
    done = failed = 0
    while time.monotonic() < deadline:
        try:
            _exchange(spec, context)
            done += 1
        except OSError:  # ConnectionError, ssl.SSLError and timeouts are all OSErrors
            failed += 1
    return done, failed


def _exchange(spec: ChurnSpec, context: ssl.SSLContext | None) -> None:
    sock = open_socket(spec.endpoint, spec.target_port)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")  # takes over the fd
        sock.sendall(get_request(spec.path, spec.target_port, close=True))
        status, length, rest = read_head(sock)
        if status != 200 or length is None:
            raise ConnectionError(f"answered {status}")
        read_exactly(sock, length - len(rest), memoryview(bytearray(4096)))
        if sock.recv(1):  # the server closes: wait for its EOF, as a real client would
            raise ConnectionError("bytes after the body")
    finally:
        sock.close()
