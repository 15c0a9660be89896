#!/usr/bin/env python3
"""Soak a tinyproxy-py proxy with mixed traffic and faults; print its resources over time.

Starts its own origins on 127.0.0.1 (an HTTP origin, an echo target, a byte source, and
targets that reset, stall or refuse), then runs --workers client threads through a fixed
rotation of exchanges for --duration seconds: keep-alive requests and uploads, CONNECT
tunnels carrying data, client aborts mid-download, mid-upload and mid-tunnel (half of
them resets), a client that stops reading, upstream resets before and during a response
and in a tunnel, upstream stalls past the response header and read timeouts,
connect failures, malformed and unfinished requests, idle keep-alive connections and idle
tunnels. Every --interval seconds it prints one row: the proxy's open fds, threads and
RSS, its gauges, and the request and error rates from its stats counters.

At the start (after a warm-up), at the middle and at the end it pauses the traffic,
waits until the proxy is idle (gauges at zero, pooled connections reaped), and takes a
quiet sample. The summary compares those three: fds and threads must be equal, RSS must
grow by less than --max-rss-growth % between the middle and the end. Exit status 0 if so
(and no exchange had an unexpected outcome), 1 otherwise, 2 if the proxy's stats page
cannot be read.

Without --proxy it starts `python -m tinyproxy_py serve --port 0 --connect-port 0
--log-level warning` with short limits in a child process and stops it by PID at the
end. With --proxy URL it soaks that proxy, which must allow CONNECT to any port
(--connect-port 0); fds, threads and RSS come from /proc/PID when the proxy's process
can be found on this machine (--pid, or the processes holding its listening socket,
summed over them for `serve --workers N`), else from the stats JSON. Loopback only,
bounded loops, a deadline on every wait; everything it started is stopped before it
exits, also on Ctrl-C or SIGTERM.

Usage: python scripts/soak.py [--duration 600] [--interval 30] [--proxy URL] [--workers 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
KiB, MiB = 1024, 1024 * 1024
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
PATTERN = bytes(range(256)) * 256  # 64 KiB
DEADLINE = 30.0  # any single wait of the script's own (start, stop, stats)

# The limits of the proxy this script starts: short, so that every timeout path runs
# often. STALL is how long the origin stalls: longer than the read timeout and the
# response header timeout.
CHILD_LIMITS = {
    "--connect-timeout": "2",
    "--read-timeout": "1",
    "--response-header-timeout": "1",
    "--header-timeout": "1",
    "--client-idle-timeout": "2",
    "--tunnel-idle-timeout": "3",
    "--tunnel-linger": "2",
    "--pool-idle-timeout": "3",
    "--shutdown-grace": "2",
}
STALL = 3.0


def pattern_bytes(n: int) -> bytes:
    reps, rest = divmod(n, len(PATTERN))
    return PATTERN * reps + PATTERN[:rest]


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


# --- origins (threads in this process, 127.0.0.1, ephemeral ports) ---


class OriginHandler(BaseHTTPRequestHandler):
    """/bytes/N (Content-Length), /chunked/N, /echo (the request body back), /slow/SECONDS."""

    protocol_version = "HTTP/1.1"
    timeout = 60
    server: Origin

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route, _, arg = self.path.strip("/").partition("/")
        if route == "bytes":
            self._send(pattern_bytes(int(arg)))
        elif route == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            n = int(arg)
            while n > 0:
                piece = PATTERN[: min(n, len(PATTERN))]
                n -= len(piece)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif route == "echo":
            self._send(body)
        elif route == "slow":
            self.server.release.wait(float(arg))
            self._send(b"slow\n")
        else:
            self.send_error(404)

    do_POST = do_GET

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Origin(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OriginHandler)
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the proxy aborting a request mid-way is part of the soak

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join(DEADLINE)


class ScriptedServer:
    """A loopback listener running `script(sock)` per connection, at most `limit` at once."""

    def __init__(self, script: Callable[[socket.socket], None], limit: int = 64) -> None:
        self.script = script
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.slots = threading.BoundedSemaphore(limit)
        self.stopping = threading.Event()
        self.live: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            if not self.slots.acquire(timeout=0.2):
                continue
            try:
                sock, _ = self.listener.accept()
            except OSError:  # the 0.2 s poll, or the listener closed
                self.slots.release()
                continue
            thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
            with self.lock:
                self.live.add(thread)
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        try:
            with sock:
                sock.settimeout(DEADLINE)
                self.script(sock)
        except OSError:
            pass
        finally:
            with self.lock:
                self.live.discard(threading.current_thread())
            self.slots.release()

    def close(self) -> None:
        self.stopping.set()
        self.accepter.join(DEADLINE)
        self.listener.close()
        with self.lock:
            threads = list(self.live)
        for thread in threads:
            thread.join(DEADLINE)


def read_request_head(sock: socket.socket) -> bool:
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < 64 * KiB:
        piece = sock.recv(65536)
        if not piece:
            return False
        buf += piece
    return True


def echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def source(sock: socket.socket) -> None:
    """Far more than any client reads: ends when the proxy closes the tunnel."""
    block = pattern_bytes(256 * KiB)
    for _ in range(256):  # 64 MiB at most
        sock.sendall(block)


def reset_at_once(sock: socket.socket) -> None:
    read_request_head(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)


def reset_mid_body(sock: socket.socket) -> None:
    if read_request_head(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + pattern_bytes(1000))
        time.sleep(0.05)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)


def stall_body(sock: socket.socket) -> None:
    """Promise 10 bytes, send 5, then wait (bounded) for the proxy to give up and close."""
    if read_request_head(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        while sock.recv(65536):
            pass


SCRIPTS: dict[str, Callable[[socket.socket], None]] = {
    "echo": echo,
    "source": source,
    "reset_at_once": reset_at_once,
    "reset_mid_body": reset_mid_body,
    "stall_body": stall_body,
}


# --- client exchanges ---


class Unexpected(Exception):
    """An exchange got an answer it should not have."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Unexpected(what)


def close(sock: socket.socket, reset: bool) -> None:
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    sock.close()


def request(method: str, url: str, body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {url} HTTP/1.1\r\nHost: x\r\n{length}\r\n".encode() + body


def recv_exactly(sock: socket.socket, n: int, already: bytes = b"") -> bytes:
    data = bytearray(already)
    while len(data) < n:
        piece = sock.recv(min(65536, n - len(data)))
        if not piece:
            raise Unexpected(f"EOF after {len(data)} of {n} bytes")
        data += piece
    return bytes(data)


def recv_to_eof(sock: socket.socket, limit: int = 16 * MiB) -> bytes:
    data = bytearray()
    while len(data) < limit and (piece := sock.recv(65536)):
        data += piece
    return bytes(data)


def read_head(sock: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > 64 * KiB:
            raise Unexpected("response head too long")
        piece = sock.recv(65536)
        if not piece:
            raise Unexpected(f"closed before a full head: {buf[:60]!r}")
        buf += piece
    head, _, rest = buf.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def response(sock: socket.socket, raw: bytes) -> tuple[int, bytes]:
    """Send one request on an open connection; its status and whole body."""
    sock.sendall(raw)
    reply = http.client.HTTPResponse(sock)
    try:
        reply.begin()
        return reply.status, reply.read()
    finally:
        reply.close()


class Mix:
    """The exchanges, each a complete client conversation that checks what it gets back."""

    MALFORMED = (
        (b"NOT A REQUEST\r\n\r\n", 400),
        (b"POST http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET http://127.0.0.1:1/ HTTP/1.1\r\n" + b"X-Many: y\r\n" * 150 + b"\r\n", 431),
        (b"GET http://127.0.0.1:1/" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n", 408),  # never finished
    )  # fmt: skip

    def __init__(self, proxy: tuple[str, int], origin: Origin, servers: dict[str, ScriptedServer]) -> None:
        self.proxy, self.servers, self.timeout = proxy, servers, DEADLINE
        self.origin = f"http://127.0.0.1:{origin.port}"
        with socket.socket() as sock:  # a port nothing listens on: ECONNREFUSED at once
            sock.bind(("127.0.0.1", 0))
            self.closed_port = int(sock.getsockname()[1])

    def dial(self) -> socket.socket:
        return socket.create_connection(self.proxy, timeout=self.timeout)

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.servers[name].port}"

    def open_tunnel(self, target: str) -> tuple[socket.socket, bytes]:
        sock = self.dial()
        try:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            status, rest = read_head(sock)
            expect(status == 200, f"CONNECT answered {status}")
        except BaseException:
            sock.close()
            raise
        return sock, rest

    def keep_alive(self, n: int) -> None:
        upload = pattern_bytes(20 * KiB + n % 1000)
        size = 1000 + n % 1000
        exchanges = [
            (request("GET", f"{self.origin}/bytes/{size}"), pattern_bytes(size)),
            (request("GET", f"{self.origin}/chunked/100000"), pattern_bytes(100_000)),
            (request("POST", f"{self.origin}/echo", upload), upload),
            (request("GET", f"{self.origin}/bytes/300000"), pattern_bytes(300_000)),
        ]
        with self.dial() as sock:
            for raw, expected in exchanges:
                status, body = response(sock, raw)
                expect(status == 200 and body == expected, f"status {status}, {len(body)} bytes")

    def tunnel(self, n: int) -> None:
        data = pattern_bytes(64 * KiB + n % 1000)
        sock, rest = self.open_tunnel(self.target("echo"))
        with sock:
            sock.sendall(data)
            expect(recv_exactly(sock, len(data), rest) == data, "echo differs")
            sock.shutdown(socket.SHUT_WR)
            expect(recv_to_eof(sock) == b"", "bytes after the echo")

    def tunnel_abort(self, n: int) -> None:
        sock, rest = self.open_tunnel(self.target("source"))
        try:
            recv_exactly(sock, 256 * KiB, rest)
        finally:
            close(sock, reset=n % 2 == 0)

    def tunnel_reset(self, n: int) -> None:
        sock, _ = self.open_tunnel(self.target("reset_at_once"))
        with sock:
            sock.sendall(b"hello\r\n\r\n")
            try:
                expect(recv_to_eof(sock) == b"", "bytes from a target that reset")
            except ConnectionResetError:
                pass

    def tunnel_idle(self, n: int) -> None:
        sock, rest = self.open_tunnel(self.target("echo"))
        with sock:
            expect(rest + recv_to_eof(sock) == b"", "bytes on an idle tunnel")

    def abort_download(self, n: int) -> None:
        sock = self.dial()
        try:
            sock.sendall(request("GET", f"{self.origin}/bytes/{16 * MiB}"))
            recv_exactly(sock, 256 * KiB)
        finally:
            close(sock, reset=n % 2 == 0)

    def stalled_reader(self, n: int) -> None:
        """Stop reading a large download for longer than the read timeout: the proxy's send
        times out, it gives up on the client and discards the upstream connection."""
        with self.dial() as sock:
            sock.sendall(request("GET", f"{self.origin}/bytes/{64 * MiB}"))
            recv_exactly(sock, 256 * KiB)
            time.sleep(STALL)
            try:
                got = len(recv_to_eof(sock, limit=64 * MiB))
                expect(got < 64 * MiB - 256 * KiB, "a download the client stalled arrived whole")
            except ConnectionResetError:
                pass

    def abort_upload(self, n: int) -> None:
        sock = self.dial()
        try:
            head = f"POST {self.origin}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {4 * MiB}\r\n\r\n"
            sock.sendall(head.encode() + pattern_bytes(128 * KiB))
            time.sleep(0.01)
        finally:
            close(sock, reset=n % 2 == 0)

    def upstream_reset(self, n: int) -> None:
        with self.dial() as sock:
            status, _ = response(sock, request("GET", f"http://{self.target('reset_at_once')}/"))
        expect(status == 502, f"status {status}")

    def upstream_reset_mid_body(self, n: int) -> None:
        with self.dial() as sock:
            sock.sendall(request("GET", f"http://{self.target('reset_mid_body')}/"))
            status, rest = read_head(sock)
            expect(status == 200, f"status {status}")
            try:
                expect(len(rest + recv_to_eof(sock)) < 100_000, "a body that was cut off arrived whole")
            except ConnectionResetError:
                pass

    def stall_head(self, n: int) -> None:
        with self.dial() as sock:
            status, _ = response(sock, request("GET", f"{self.origin}/slow/{STALL}"))
        expect(status == 504, f"status {status}")

    def stall_body(self, n: int) -> None:
        with self.dial() as sock:
            sock.sendall(request("GET", f"http://{self.target('stall_body')}/"))
            status, rest = read_head(sock)
            expect(status == 200, f"status {status}")
            try:
                expect(len(rest + recv_to_eof(sock)) < 10, "a stalled body arrived whole")
            except ConnectionResetError:
                pass

    def connect_refused(self, n: int) -> None:
        target = f"127.0.0.1:{self.closed_port}"
        with self.dial() as sock:
            status, _ = response(sock, request("GET", f"http://{target}/"))
        expect(status == 502, f"GET to a closed port: {status}")
        with self.dial() as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            status, _ = read_head(sock)
        expect(status == 502, f"CONNECT to a closed port: {status}")

    def malformed(self, n: int) -> None:
        raw, expected = self.MALFORMED[n % len(self.MALFORMED)]
        with self.dial() as sock:
            sock.sendall(raw)
            answer = recv_to_eof(sock)
        expect(answer.startswith(b"HTTP/1.1 %d " % expected), f"expected {expected}: {answer[:40]!r}")

    def idle_keep_alive(self, n: int) -> None:
        with self.dial() as sock:
            status, _ = response(sock, request("GET", f"{self.origin}/bytes/10"))
            expect(status == 200, f"status {status}")
            expect(recv_to_eof(sock) == b"", "bytes on an idle connection")

    def schedule(self) -> list[Callable[[int], None]]:
        """One rotation: the quick exchanges often, the ones that wait for a deadline less."""
        return [
            self.keep_alive,
            self.tunnel,
            self.abort_download,
            self.upstream_reset,
            self.keep_alive,
            self.connect_refused,
            self.tunnel_abort,
            self.abort_upload,
            self.malformed,
            self.keep_alive,
            self.stall_head,
            self.tunnel,
            self.upstream_reset_mid_body,
            self.stall_body,
            self.tunnel_reset,
            self.malformed,
            self.idle_keep_alive,
            self.keep_alive,
            self.tunnel_idle,
            self.stalled_reader,
        ]


class Traffic:
    """Worker threads running the rotation; pause() waits until none is mid-exchange."""

    def __init__(self, mix: Mix, workers: int, pause: float) -> None:
        self.mix, self.pause_between = mix, pause
        self.schedule = mix.schedule()
        self.done: Counter[str] = Counter()
        self.turns: Counter[str] = Counter()  # each exchange's variant: its how-many-th run
        self.unexpected: Counter[str] = Counter()
        self.samples: list[str] = []  # the first few unexpected outcomes, for the report
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.stopping = threading.Event()
        self.busy = 0
        self.idle = threading.Condition(self.lock)
        self.threads = [
            threading.Thread(target=self._work, args=(i * 5,), name=f"soak-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        self.running.set()
        for thread in self.threads:
            thread.start()

    def _work(self, offset: int) -> None:
        n = 0
        while not self.stopping.is_set():
            if not self.running.wait(0.2):
                continue
            with self.lock:
                if not self.running.is_set():
                    continue
                self.busy += 1
                exchange = self.schedule[(offset + n) % len(self.schedule)]
                turn = self.turns[exchange.__name__]
                self.turns[exchange.__name__] += 1
            outcome = ""
            try:
                exchange(turn)
            except Exception as exc:  # any failure is counted and reported, never fatal
                outcome = f"{exchange.__name__} #{turn}: {exc!r}"[:200]
            with self.lock:
                self.busy -= 1
                self.done[exchange.__name__] += 1
                if outcome:
                    self.unexpected[exchange.__name__] += 1
                    if len(self.samples) < 10:
                        self.samples.append(outcome)
                self.idle.notify_all()
            n += 1
            self.stopping.wait(self.pause_between)

    def pause(self, timeout: float) -> bool:
        """Stop starting exchanges; wait until those under way have ended."""
        with self.lock:
            self.running.clear()
            return self.idle.wait_for(lambda: self.busy == 0, timeout)

    def resume(self) -> None:
        self.running.set()

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        self.running.clear()
        for thread in self.threads:
            if thread.ident is not None:  # started
                thread.join(timeout)

    def total(self) -> int:
        with self.lock:
            return sum(self.done.values())


# --- the proxy under test ---


@dataclass
class Proxy:
    host: str
    port: int
    pids: list[int] = field(default_factory=list)  # its processes on this machine, if known
    child: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        """The stats JSON, from the proxy itself (origin-form GET /json)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=DEADLINE)
        try:
            conn.request("GET", "/json", headers={"Connection": "close"})
            reply = conn.getresponse()
            body = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"stats page answered {reply.status}")
            data: dict[str, Any] = json.loads(body)
            return data
        finally:
            conn.close()


def start_child(workdir: Path) -> Proxy:
    out, err = workdir / "proxy.out", workdir / "proxy.err"
    command = [sys.executable, "-m", "tinyproxy_py", "serve", "--port", "0", "--connect-port", "0"]
    command += ["--log-level", "warning", *(part for item in CHILD_LIMITS.items() for part in item)]
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    # Output to files, never pipes: a full pipe would block the proxy's logging.
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=REPO, env=env
        )
    proxy = Proxy("127.0.0.1", 0, [child.pid], child, [out, err])
    if not wait_for(lambda: "listening on " in out.read_text() or child.poll() is not None, DEADLINE):
        stop_child(proxy)
        raise TimeoutError("the proxy printed nothing")
    if child.poll() is not None:
        raise RuntimeError(f"the proxy exited: {err.read_text()}")
    url = out.read_text().split("listening on ", 1)[1].split(";", 1)[0]
    proxy.port = int(urlsplit(url).port or 0)
    return proxy


def stop_child(proxy: Proxy) -> int | None:
    """SIGTERM the child by its PID, SIGKILL if it has not exited in time; its exit status."""
    child = proxy.child
    if child is None:
        return None
    if child.poll() is None:
        os.kill(child.pid, signal.SIGTERM)
        try:
            child.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(DEADLINE)
    return child.returncode


def find_pids(port: int) -> list[int]:
    """The PIDs of the processes listening on `port` here (several with SO_REUSEPORT)."""
    wanted = f":{port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[1].endswith(wanted) and parts[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    found: list[int] = []
    if not inodes:
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return found


# --- sampling ---


@dataclass
class Sample:
    elapsed: float
    fds: int
    threads: int
    rss_kib: int | None
    gauges: dict[str, int]
    counters: dict[str, int]
    uptime: float
    exchanges: int


def proc_figures(pids: list[int]) -> tuple[int, int, int]:
    """Open fds, threads and VmRSS (KiB) of local processes, from /proc, summed."""
    fds = threads = rss = 0
    for pid in pids:
        fds += len(os.listdir(f"/proc/{pid}/fd"))
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "Threads":
                threads += int(value.split()[0])
            elif name == "VmRSS":
                rss += int(value.split()[0])
    return fds, threads, rss


def sample(proxy: Proxy, started: float, traffic: Traffic) -> Sample:
    snapshot = proxy.stats()
    process = snapshot.get("process", {})
    resources = snapshot.get("resources", {})
    gauges = {name: int(resources.get(name, 0)) for name in resources}
    # Not counting the stats request itself: one client connection, one handler thread.
    for name in ("clients", "handler_threads"):
        gauges[name] = max(gauges.get(name, 0) - 1, 0)
    rss: int | None
    if proxy.pids:
        fds, threads, rss = proc_figures(proxy.pids)
    else:
        fds, threads = int(process.get("open_fds", -1)), int(process.get("threads", -1))
        rss_value = next((process[key] for key in ("rss_kib", "vm_rss_kib") if key in process), None)
        rss = int(rss_value) if rss_value is not None else None
    return Sample(
        elapsed=time.monotonic() - started,
        fds=fds,
        threads=threads,
        rss_kib=rss,
        gauges=gauges,
        counters={k: int(v) for k, v in snapshot.get("counters", {}).items()},
        uptime=float(snapshot.get("uptime", 0.0)),
        exchanges=traffic.total(),
    )


def responses(s: Sample) -> int:
    return sum(v for k, v in s.counters.items() if k.startswith("responses."))


def errors(s: Sample) -> int:
    return sum(v for k, v in s.counters.items() if k.startswith("errors."))


HEADER = (
    f"{'elapsed':>8} {'fds':>5} {'thr':>4} {'rss MiB':>8} {'clients':>7} {'tunnels':>7} "
    f"{'up_open':>7} {'in_flight':>9} {'req/s':>7} {'err/s':>6} {'errors':>7} {'exchanges':>9}"
)


def row(s: Sample, previous: Sample | None, label: str = "") -> str:
    rate = err_rate = 0.0
    if previous is not None and s.uptime > previous.uptime:
        span = s.uptime - previous.uptime
        rate = (responses(s) - responses(previous)) / span
        err_rate = (errors(s) - errors(previous)) / span
    rss = f"{s.rss_kib / 1024:8.1f}" if s.rss_kib is not None else f"{'-':>8}"
    g = s.gauges
    return (
        f"{s.elapsed:7.0f}s {s.fds:5d} {s.threads:4d} {rss} {g.get('clients', 0):7d} "
        f"{g.get('tunnels', 0):7d} {g.get('pool_open', 0):7d} {g.get('requests_in_flight', 0):9d} "
        f"{rate:7.1f} {err_rate:6.1f} {errors(s):7d} {s.exchanges:9d}{label}"
    )


def is_idle(s: Sample) -> bool:
    """Nothing live but our own stats request (which the gauges here do not count)."""
    busy = ("clients", "tunnels", "requests_in_flight", "pool_open")
    return all(s.gauges.get(name, 0) == 0 for name in busy)


def quiet_sample(
    proxy: Proxy, started: float, traffic: Traffic, settle: float, resume: bool = True
) -> Sample:
    """Pause the traffic, wait until the proxy is idle and its counts are steady, sample."""
    if not traffic.pause(settle):
        print("  (exchanges still under way after the settle time)", flush=True)
    deadline = time.monotonic() + settle
    last = sample(proxy, started, traffic)
    while not is_idle(last) and time.monotonic() < deadline:
        time.sleep(0.25)
        last = sample(proxy, started, traffic)
    if not is_idle(last):
        print(f"  (not idle after {settle:.0f} s: {last.gauges})", flush=True)
    # Our stats request's own socket and handler thread are gone a moment after it is
    # answered: wait until /proc gives the same figures three times running.
    if proxy.pids:
        readings: list[tuple[int, int]] = []
        while time.monotonic() < deadline:
            time.sleep(0.25)
            fds, threads, _ = proc_figures(proxy.pids)
            readings = [*readings[-2:], (fds, threads)]
            if len(readings) == 3 and len(set(readings)) == 1:
                break
        fds, threads, rss = proc_figures(proxy.pids)
        last.fds, last.threads, last.rss_kib = fds, threads, rss
    else:  # the proxy's own view, less our stats connection and its handler thread
        last.fds -= 1
        last.threads -= 1
    if resume:
        traffic.resume()
    return last


# --- main ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument(
        "--interval", type=float, default=0.0, help="seconds between rows (default: duration/20)"
    )
    parser.add_argument("--proxy", help="URL of a running proxy (default: start one)")
    parser.add_argument("--pid", type=int, help="PID of the --proxy process, for /proc figures")
    parser.add_argument("--workers", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between a worker's exchanges")
    parser.add_argument("--settle", type=float, default=60.0, help="deadline for the proxy to go idle")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="allowed %% middle to end")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.duration > 7 * 24 * 3600:
        parser.error("--duration must be positive and at most a week")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")
    args.interval = args.interval or max(args.duration / 20, 1.0)
    return args


def external_proxy(url: str, pid: int | None) -> Proxy:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("--proxy must be on loopback: this script sends traffic to this machine only")
    host = "127.0.0.1" if host == "localhost" else host
    port = parts.port or 8888
    if pid is not None and not Path(f"/proc/{pid}/status").exists():
        raise SystemExit(f"--pid {pid}: no such process here")
    return Proxy(host, port, [pid] if pid is not None else find_pids(port))


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run the cleanup in the finally blocks


@dataclass
class Run:
    rows: list[Sample] = field(default_factory=list)
    quiet: dict[str, Sample] = field(default_factory=dict)


def soak(args: argparse.Namespace, proxy: Proxy, mix: Mix, traffic: Traffic) -> Run:
    run = Run()
    started = time.monotonic()
    print(HEADER, flush=True)
    for exchange in traffic.schedule:  # warm up: every path once, before the start sample
        try:
            exchange(0)
        except (Unexpected, OSError, http.client.HTTPException) as exc:
            print(f"  warm-up {exchange.__name__}: {exc!r}", flush=True)
    run.quiet["start"] = quiet_sample(proxy, started, traffic, args.settle)
    print(row(run.quiet["start"], None, "  <- start (quiet)"), flush=True)
    previous = run.quiet["start"]
    traffic_started = time.monotonic()
    traffic.start()
    end = traffic_started + args.duration
    middle_due = traffic_started + args.duration / 2
    next_row = traffic_started + args.interval
    while True:
        now = time.monotonic()
        if "middle" not in run.quiet and now >= middle_due:
            run.quiet["middle"] = quiet_sample(proxy, started, traffic, args.settle)
            print(row(run.quiet["middle"], None, "  <- middle (quiet)"), flush=True)
            previous, next_row = run.quiet["middle"], time.monotonic() + args.interval
            continue
        if now >= end:
            break
        if now >= next_row:
            current = sample(proxy, started, traffic)
            run.rows.append(current)
            print(row(current, previous), flush=True)
            previous, next_row = current, next_row + args.interval
            continue
        due = min(next_row, end, end if "middle" in run.quiet else middle_due)
        time.sleep(min(0.5, max(0.0, due - now)))
    run.quiet["end"] = quiet_sample(proxy, started, traffic, args.settle, resume=False)
    print(row(run.quiet["end"], None, "  <- end (quiet)"), flush=True)
    # Still serving after all that.
    try:
        mix.keep_alive(0)
        mix.tunnel(0)
        print("after the soak: a keep-alive exchange and a tunnel still work", flush=True)
    except (Unexpected, OSError, http.client.HTTPException) as exc:
        print(f"after the soak the proxy FAILED: {exc!r}", flush=True)
        traffic.unexpected["after the soak"] += 1
    return run


def report(run: Run, traffic: Traffic, args: argparse.Namespace) -> bool:
    start, middle, end = run.quiet["start"], run.quiet["middle"], run.quiet["end"]
    print()
    print(f"quiet samples (traffic paused, proxy idle):\n{'':6}{HEADER}")
    for name, s in (("start", start), ("middle", middle), ("end", end)):
        print(f"{name:<6}{row(s, None)}")
    flat_fds = start.fds == middle.fds == end.fds
    flat_threads = start.threads == middle.threads == end.threads
    print(
        f"fds     start {start.fds}  middle {middle.fds}  end {end.fds}: {'flat' if flat_fds else 'NOT FLAT'}"
    )
    print(
        f"threads start {start.threads}  middle {middle.threads}  end {end.threads}: "
        f"{'flat' if flat_threads else 'NOT FLAT'}"
    )
    growth_ok = True
    if middle.rss_kib and end.rss_kib and start.rss_kib:
        growth = (end.rss_kib - middle.rss_kib) / middle.rss_kib * 100
        growth_ok = growth < args.max_rss_growth
        print(
            f"RSS     start {start.rss_kib / 1024:.1f} MiB  middle {middle.rss_kib / 1024:.1f} MiB  "
            f"end {end.rss_kib / 1024:.1f} MiB: {growth:+.1f}% middle to end "
            f"({'under' if growth_ok else 'OVER'} {args.max_rss_growth:g}%)"
        )
    else:
        print("RSS     not available (no /proc figures and none in the stats JSON)")
    print(f"exchanges: {end.exchanges} in {args.duration:g} s: {dict(sorted(traffic.done.items()))}")
    print(f"proxy responses: {responses(end)}; errors by cause: {by_prefix(end, 'errors.')}")
    print(f"tunnels closed by reason: {by_prefix(end, 'tunnels_closed.')}")
    unexpected = sum(traffic.unexpected.values())
    print(f"unexpected outcomes: {unexpected} {dict(traffic.unexpected) if unexpected else ''}")
    for line in traffic.samples:
        print(f"  {line}")
    return flat_fds and flat_threads and growth_ok and unexpected == 0


def by_prefix(s: Sample, prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: v for k, v in sorted(s.counters.items()) if k.startswith(prefix)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    origin = Origin()
    servers: dict[str, ScriptedServer] = {}
    proxy: Proxy | None = None
    traffic: Traffic | None = None
    ok = False
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        try:
            servers.update({name: ScriptedServer(script) for name, script in SCRIPTS.items()})
            proxy = external_proxy(args.proxy, args.pid) if args.proxy else start_child(Path(workdir))
            pids = ", ".join(map(str, proxy.pids))
            where = f"PID {pids}" if proxy.pids else "figures from its stats JSON"
            kind = "started here" if proxy.child is not None else "given"
            print(f"proxy http://{proxy.host}:{proxy.port} ({kind}; {where}); {args.duration:g} s, "
                  f"{args.workers} workers, a row every {args.interval:g} s", flush=True)  # fmt: skip
            try:
                proxy.stats()
            except (OSError, RuntimeError, ValueError) as exc:
                print(f"cannot read the proxy's stats page (GET /json): {exc!r}", flush=True)
                return 2
            mix = Mix((proxy.host, proxy.port), origin, servers)
            traffic = Traffic(mix, args.workers, args.pause)
            run = soak(args, proxy, mix, traffic)
            ok = report(run, traffic, args)
        except KeyboardInterrupt:
            print("interrupted: cleaning up", flush=True)
        finally:
            if traffic is not None:
                traffic.stop(DEADLINE)
            if proxy is not None and proxy.child is not None:
                status = stop_child(proxy)
                warnings = proxy.logs[1].read_text(errors="replace").splitlines()
                print(
                    f"proxy PID {proxy.child.pid} stopped (exit status {status}); {len(warnings)} log lines",
                    end="",
                )
                print(":" if warnings else "")
                for line in warnings[-10:]:
                    print(f"  {line}")
            origin.stop()
            for server in servers.values():
                server.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
