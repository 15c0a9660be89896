"""Helpers shared by the wire tests: waits with deadlines, resource counts, raw exchanges."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

# Two named waits: one for things that must expire soon, one generous bound for things
# that must not (CI is slower than a quiet laptop).
EXPIRE_SOON = 1.0
MUST_NOT_EXPIRE = 20.0

# A host name that getaddrinfo rejects locally (over 255 octets): no DNS packet leaves.
UNRESOLVABLE = ".".join(["a" * 63] * 4) + ".invalid"


def wait_until(
    predicate: Callable[[], bool], timeout: float = MUST_NOT_EXPIRE, interval: float = 0.02
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def thread_count() -> int:
    return threading.active_count()


def stalled_listener(stack: ExitStack, accept_queue_full: bool = True) -> int:
    """A loopback port that never answers: its accept queue full (connect hangs), or
    connections completed by the kernel but never accepted (the handshake hangs).
    Everything it opens is closed by `stack`."""
    listener = stack.enter_context(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    if accept_queue_full:
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
    return port


def closed_port() -> int:
    """A loopback port nothing listens on: connecting gets ECONNREFUSED at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recv_all(sock: socket.socket, timeout: float = MUST_NOT_EXPIRE) -> bytes:
    """Everything the peer sends until it closes (or the timeout passes)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def recv_head(sock: socket.socket) -> bytes:
    """Bytes up to the blank line that ends a head (and whatever came with them); raises
    ConnectionError if the peer closes first. For scripted peers reading the proxy's side."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a full head: {buf!r}")
        buf += data
    return buf


def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = MUST_NOT_EXPIRE) -> bytes:
    """Send raw bytes to `address` and return all it answers until it closes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        return recv_all(sock, timeout)


def read_response(sock: socket.socket, timeout: float = MUST_NOT_EXPIRE) -> tuple[int, dict[str, str], bytes]:
    """Read one response with a Content-Length body (or none) from a raw socket."""
    sock.settimeout(timeout)
    head, _, rest = recv_head(sock).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return status, headers, rest


def client_env(**extra: str) -> dict[str, str]:
    """The environment for a spawned client: no inherited proxies or CA bundles."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    drop_ca = {"CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop and k not in drop_ca}
    env.update(extra)
    return env


class ScriptedServer:
    """A loopback listener whose connections are handled by `script(sock)` in threads.

    The server owns every accepted socket and closes it after the script returns;
    `release` is set on close so scripts blocked on it end promptly.
    """

    def __init__(self, script: Callable[[socket.socket], None], family: int = socket.AF_INET) -> None:
        self.script = script
        self.release = threading.Event()
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        with sock:
            try:
                self.script(sock)
            except OSError:
                pass

    def close(self) -> None:
        self.release.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._accepter.join(MUST_NOT_EXPIRE)
        for thread in self._threads:
            thread.join(MUST_NOT_EXPIRE)


@contextmanager
def scripted_server(script: Callable[[socket.socket], None]) -> Iterator[ScriptedServer]:
    server = ScriptedServer(script)
    try:
        yield server
    finally:
        server.close()


class Response:
    """A response parsed by http.client from a raw socket: status, header list, body."""

    def __init__(self, sock: Any, method: str = "GET") -> None:
        import http.client

        raw = http.client.HTTPResponse(sock, method=method)
        raw.begin()
        self.status = raw.status
        self.version = raw.version
        self.headers = raw.getheaders()
        self.chunked = raw.chunked
        self.will_close = raw.will_close
        self.body = raw.read()
        raw.close()

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _KeptOpen:
    """A file whose close() does nothing: http.client closes its file after each response."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


class _OneReader:
    def __init__(self, file: Any) -> None:
        self.file = _KeptOpen(file)

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return self.file


@contextmanager
def one_reader(sock: socket.socket) -> Iterator[Any]:
    """A stand-in socket for Response that gives every response one buffered file.

    Each http.client response reads ahead into a buffer of its own, so reading several
    pipelined responses with a reader each loses whatever arrived together.
    """
    with sock.makefile("rb") as file:
        yield _OneReader(file)


def request_over(sock: socket.socket, raw: bytes, method: str = "GET") -> Response:
    """Send one raw request on an open connection and read its response."""
    sock.sendall(raw)
    return Response(sock, method)


def get(proxy_address: tuple[str, int], url: str, headers: str = "", version: str = "HTTP/1.1") -> Response:
    """One absolute-form GET through the proxy on a new connection."""
    host = url.split("/")[2]
    raw = f"GET {url} {version}\r\nHost: {host}\r\n{headers}\r\n".encode()
    with socket.create_connection(proxy_address, timeout=MUST_NOT_EXPIRE) as sock:
        return request_over(sock, raw)


def proc_status(pid: int, field: str) -> int:
    """A numeric field of /proc/PID/status (VmRSS and VmHWM in KiB, Threads)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@contextmanager
def proxy_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m tinyproxy_py serve --port 0 ARGS` in a child; yields (process, proxy URL).

    Stopped with SIGTERM on exit (killed if it does not exit in time).
    """
    command = [sys.executable, "-m", "tinyproxy_py", "serve", "--port", "0", *args]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env()
    )
    try:
        line = _read_line(proc, MUST_NOT_EXPIRE)
        url = line.split("listening on ", 1)[1].split(";", 1)[0]
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(MUST_NOT_EXPIRE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError("the proxy printed nothing")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the proxy exited: {proc.stderr.read() if proc.stderr else ''}")
    return line
