#!/usr/bin/env python3
"""How fast can any Python proxy be here? The floor under the bench's targets (issues 17, 26).

Minimal proxies, each doing only what the bench's scenarios need (accept, read the head,
connect to an address literal, then for CONNECT a 200, for an absolute-form GET the
head in origin-form): no policy, no limits, no logging, no deadlines, no error answers.
Measured next to tinyproxy-py with the bench's clients against its nginx origin, in
rounds: a. keep-alive 100 B GETs (wrk, 1 and 50 connections), b. a new connection per
100 B GET (wrk, 8 connections), d. CONNECT + GET + close:

  bare     the least a thread-per-connection proxy can do, keep-alive included:
           socketserver's ThreadingTCPServer (a thread *started* per connection),
           blocking sockets, one origin socket kept per client thread, Content-Length
           framing only; a CONNECT is shuttled by its own thread with select()
  loop     one selectors loop does everything (the shape of pproxy's event loop); shuttles
           until the first EOF and closes, so no keep-alive (not measured in a)
  threads  tinyproxy-py's shape: an accept thread hands each connection to a handler
           thread, which reads the head and dials, then hands both sockets to a loop
           thread that shuttles (the tunnel hub); no keep-alive either

The gap between bare or threads and tinyproxy-py is what our code costs on top of the
shape. Prints rates, p50/p99 for a, and the proxy's CPU per exchange (medians).
scripts/bench.py runs `bare` in its own run too, so its ratios are measured, not remembered.

  python3 scripts/floor.py [--rounds 3] [--seconds 4]
  python3 scripts/floor.py --weights    # a at 50 connections: bare, and bare with work added

--weights answers "what may a request cost on top of the bare shape?": the bare shape
with N µs of Python per request (a busy loop holding the GIL), or with 3 reads more per
request that find nothing (MSG_PEEK | MSG_DONTWAIT), made by the socket's method (which
lets go of the GIL) or as tinyproxy-py's net/nowait.py makes them (which keeps it).

Needs nginx (as scripts/bench.py does). Loopback only; everything started is stopped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import re
import select
import selectors
import socket
import socketserver
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from queue import SimpleQueue

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kit, the traffic kit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lib

from bench_lib import services
from bench_lib.clients import ChurnSpec, Endpoint, churn_worker
from bench_lib.procinfo import cpu_seconds
from bench_lib.wrk import WrkSpec
from bench_lib.wrk import run as run_wrk

from tinyproxy_py.net import nowait  # --weights: reads as tinyproxy-py makes them

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


# --- the two minimal proxies (run as `floor.py serve loop|threads PORT`) ---


def _listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def _opening(head: bytes) -> tuple[tuple[str, int], bytes, bytes]:
    """(where to connect, what the client is told first, what the target is sent first)."""
    method, target, rest = head.split(b" ", 2)
    if method == b"CONNECT":
        host, _, port = target.rpartition(b":")
        return (host.decode(), int(port)), ESTABLISHED, b""
    authority, _, path = target.removeprefix(b"http://").partition(b"/")
    host, _, port = authority.rpartition(b":")
    return (host.decode(), int(port or 80)), b"", b" ".join((method, b"/" + path, rest))


def _dial(address: tuple[str, int]) -> socket.socket:
    target = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    target.connect_ex(address)
    return target


class Shuttle:
    """The loop's part: shuttle bytes both ways and close both sockets at the first EOF
    (enough for CONNECT + GET + close, where the client ends first)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    def run(self) -> None:
        while True:
            for key, mask in self.selector.select():
                key.data(mask)

    def tunnel(self, client: socket.socket, target: socket.socket, head: bytes) -> None:
        _, to_client, to_target = _opening(head)
        try:
            client.send(to_client)
            target.send(to_target)
        except OSError:  # the client left, or the connect failed
            client.close()
            target.close()
            return
        both = (client, target)
        self.selector.register(client, selectors.EVENT_READ, lambda _: self._pump(client, target, both))
        self.selector.register(target, selectors.EVENT_READ, lambda _: self._pump(target, client, both))

    def _pump(self, src: socket.socket, dst: socket.socket, both: tuple[socket.socket, ...]) -> None:
        if src.fileno() < 0:
            return  # closed by the other side's event in this same batch
        try:
            data = src.recv(65536)
            if data:
                dst.send(data)  # a floor: the sockets are blocking-free enough for 100 B
                return
        except OSError:
            pass
        for sock in both:
            self.selector.unregister(sock)
            sock.close()


class _Bare(socketserver.BaseRequestHandler):
    """One client connection on its own thread, keep-alive, one origin socket kept."""

    busy_us = 0  # --weights: Python per request, holding the GIL
    peeks = ""  # --weights: "socket" or "nowait": 3 reads per request that find nothing

    def handle(self) -> None:
        client, buffered, origin, origin_at = self.request, b"", None, None
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head, buffered = _read_head(client, buffered)
                if not head:
                    return
                if self.busy_us or self.peeks:
                    self.weigh(client)
                address, to_client, to_target = _opening(head)
                if to_client:  # CONNECT
                    with socket.create_connection(address) as target:
                        client.sendall(to_client)
                        _shuttle_until_eof(client, target, buffered)
                    return
                if origin is None or origin_at != address:
                    if origin is not None:
                        origin.close()
                    origin, origin_at = socket.create_connection(address), address
                    origin.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                origin.sendall(to_target)
                response, rest = _read_head(origin, b"")
                if not response:
                    return
                length = int(_CONTENT_LENGTH.search(response).group(1))  # type: ignore[union-attr]
                client.sendall(response + rest[:length])
                left = length - len(rest)
                while left > 0:  # a large body streams through, as ours does
                    data = origin.recv(min(left, 262144))
                    if not data:
                        return
                    client.sendall(data)
                    left -= len(data)
        except OSError:
            return
        finally:
            if origin is not None:
                origin.close()

    def weigh(self, client: socket.socket) -> None:
        if self.peeks:
            for _ in range(3):
                if self.peeks == "nowait":
                    nowait.peek(client)
                else:
                    with contextlib.suppress(BlockingIOError):
                        client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        until = time.perf_counter() + self.busy_us / 1e6
        while time.perf_counter() < until:
            pass


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *([0-9]+)")


def _read_head(sock: socket.socket, buffered: bytes) -> tuple[bytes, bytes]:
    """(a head up to its blank line, what came after it); (b"", b"") at EOF."""
    while b"\r\n\r\n" not in buffered:
        data = sock.recv(65536)
        if not data:
            return b"", b""
        buffered += data
    head, _, rest = buffered.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _shuttle_until_eof(client: socket.socket, target: socket.socket, early: bytes) -> None:
    if early:
        target.sendall(early)
    while True:
        for sock in select.select([client, target], [], [])[0]:
            data = sock.recv(65536)
            if not data:
                return
            (target if sock is client else client).sendall(data)


class _BareServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


def serve_bare(port: int, busy_us: int = 0, peeks: str = "") -> None:
    handler = type("_Weighted", (_Bare,), {"busy_us": busy_us, "peeks": peeks})
    with _BareServer(("127.0.0.1", port), handler) as server:
        server.serve_forever()


def serve_loop(port: int) -> None:
    shuttle, listener = Shuttle(), _listener(port)
    listener.setblocking(False)
    selector = shuttle.selector

    def accept(_: int) -> None:
        while True:
            try:
                client, _address = listener.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            heads[client] = b""
            selector.register(client, selectors.EVENT_READ, lambda _, c=client: read_head(c))

    def read_head(client: socket.socket) -> None:
        try:
            data = client.recv(65536)
        except OSError:
            data = b""
        heads[client] += data
        if not data or b"\r\n\r\n" in heads[client]:
            head = heads.pop(client)
            selector.unregister(client)
            if not data:
                client.close()
                return
            target = _dial(_opening(head)[0])
            selector.register(target, selectors.EVENT_WRITE, lambda _: connected(client, target, head))

    def connected(client: socket.socket, target: socket.socket, head: bytes) -> None:
        selector.unregister(target)
        shuttle.tunnel(client, target, head)

    heads: dict[socket.socket, bytes] = {}
    selector.register(listener, selectors.EVENT_READ, accept)
    shuttle.run()


def serve_threads(port: int, handlers: int = 8) -> None:
    shuttle, listener = Shuttle(), _listener(port)
    accepted: SimpleQueue[socket.socket] = SimpleQueue()
    incoming: collections.deque[tuple[socket.socket, socket.socket, bytes]] = collections.deque()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)

    def accept() -> None:
        while True:
            accepted.put(listener.accept()[0])

    def handle() -> None:
        while True:
            client, head = accepted.get(), b""
            while b"\r\n\r\n" not in head:
                try:
                    data = client.recv(65536)  # blocking, as a handler thread waits
                except OSError:
                    data = b""
                if not data:
                    break
                head += data
            if b"\r\n\r\n" not in head:
                client.close()
                continue
            client.setblocking(False)
            target = _dial(_opening(head)[0])
            poller = select.poll()
            poller.register(target, select.POLLOUT)
            poller.poll(5000)
            incoming.append((client, target, head))
            wake_w.send(b"\0")

    def take(_: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while wake_r.recv(4096):
                pass
        while incoming:
            shuttle.tunnel(*incoming.popleft())

    shuttle.selector.register(wake_r, selectors.EVENT_READ, take)
    threading.Thread(target=accept, daemon=True).start()
    for _ in range(handlers):
        threading.Thread(target=handle, daemon=True).start()
    shuttle.run()


# --- the measurement ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4, help="per subject, scenario and round")
    parser.add_argument("--weights", action="store_true", help="the bare shape with work added (see above)")
    return parser.parse_args(argv)


def _floor_argv(
    script: str, kind: str, workdir: Path, port: int, weights: tuple[str, str] | None = None
) -> list[str]:
    return [sys.executable, script, "serve", kind, str(port), *(weights or ())]


WEIGHTS = {  # name: (busy µs, peeks)
    "bare": ("0", ""),
    "bare + 20 µs of Python": ("20", ""),
    "bare + 50 µs of Python": ("50", ""),
    "bare + 3 reads (socket method)": ("0", "socket"),
    "bare + 3 reads (net/nowait.py)": ("0", "nowait"),
}


def _keepalive(
    origin: services.Origin, proxy: services.Proxy, seconds: int, workdir: Path, connections: int
) -> tuple[int, str]:
    """a: wrk keep-alive, `connections` connections; how many answered, and p50/p99."""
    spec = WrkSpec(origin.http_port, "/100b", proxy.port, seconds=seconds, connections=connections)
    result = run_wrk(spec, workdir)
    return result.requests, f"{result.p50_ms:.2f} / {result.p99_ms:.2f} ms"


def _new_connections(
    origin: services.Origin, proxy: services.Proxy, seconds: int, workdir: Path
) -> tuple[int, str]:
    """b: wrk, 8 connections, Connection: close; how many requests were answered."""
    spec = WrkSpec(origin.http_port, "/100b", proxy.port, close=True, seconds=seconds)
    return run_wrk(spec, workdir).requests, ""


def _tunnels(
    origin: services.Origin, proxy: services.Proxy, seconds: int, executor: ProcessPoolExecutor
) -> tuple[int, str]:
    """d: the bench's 2 processes of 4 threads; how many exchanges were done."""
    spec = ChurnSpec(Endpoint(origin.http_port, proxy.port), origin.http_port, None, 4, seconds)
    counts = [
        f.result(timeout=seconds + 120) for f in [executor.submit(churn_worker, spec) for _ in range(2)]
    ]
    done, failed = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if failed > done // 100:
        raise RuntimeError(f"{proxy.name}: {failed} of {done + failed} tunnels failed")
    return done, ""


SERVE = {"bare": serve_bare, "loop": serve_loop, "threads": serve_threads}
KEEP_ALIVE = ("floor: bare", "tinyproxy-py")  # loop and threads pipe a connection, not requests


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["serve"]:
        weights = sys.argv[4:6]
        SERVE[sys.argv[2]](int(sys.argv[3]), *([int(weights[0]), weights[1]] if weights else []))
        return 0
    args = parse_args(argv)
    if args.weights:
        return _weighed(args)
    here = str(Path(__file__).resolve())
    results: dict[tuple[str, str], list[tuple[float, float, str]]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinyproxy-py-floor-")))
        workdir.chmod(0o755)  # nginx's unprivileged workers must reach the files
        origin = stack.enter_context(services.nginx_origin(workdir / "origin"))
        proxies = [
            services.start_proxy(f"floor: {kind}", functools.partial(_floor_argv, here, kind), workdir / kind)
            for kind in SERVE
        ]
        proxies.append(services.start_tinyproxy_py(workdir / "py", sys.executable))
        for proxy in proxies:
            stack.callback(proxy.child.stop)
        executor = stack.enter_context(ProcessPoolExecutor(2))
        seconds = args.seconds
        scenarios: dict[str, Callable[[services.Proxy], tuple[int, str]]] = {
            "a. keep-alive 100 B, 1 connection, req/s": lambda p: _keepalive(origin, p, seconds, workdir, 1),
            "a. keep-alive 100 B, 50 connections, req/s": lambda p: _keepalive(
                origin, p, seconds, workdir, 50
            ),
            "b. new connection per 100 B GET, req/s": lambda p: _new_connections(origin, p, seconds, workdir),
            "d. CONNECT + GET + close, tunnels/s": lambda p: _tunnels(origin, p, seconds, executor),
        }
        for number in range(args.rounds):
            for scenario, run in scenarios.items():
                for proxy in proxies:
                    if scenario.startswith("a.") and proxy.name not in KEEP_ALIVE:
                        continue
                    cpu = cpu_seconds(proxy.pid)
                    done, latency = run(proxy)
                    spent = (cpu_seconds(proxy.pid) - cpu) / max(done, 1)
                    results[scenario, proxy.name].append((done / seconds, spent, latency))
                    print(
                        f"round {number + 1}: {scenario}: {proxy.name}: {done / seconds:,.0f}",
                        file=sys.stderr,
                    )
    print(
        "| scenario | proxy | rate | p50 / p99 | proxy CPU per exchange |\n| --- | --- | ---: | ---: | ---: |"
    )
    for (scenario, name), runs in results.items():
        rate, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        latency = sorted(runs)[len(runs) // 2][2]  # the median run's
        print(f"| {scenario} | {name} | {rate:,.0f} | {latency} | {cpu * 1e6:,.0f} µs |")
    return 0


def _weighed(args: argparse.Namespace) -> int:
    """--weights: keep-alive at 50 connections through the bare shape, plain and weighed."""
    here = str(Path(__file__).resolve())
    results: dict[str, list[tuple[int, str, float]]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinyproxy-py-floor-")))
        workdir.chmod(0o755)
        origin = stack.enter_context(services.nginx_origin(workdir / "origin"))
        proxies = []
        for index, (name, weights) in enumerate(WEIGHTS.items()):
            argv = functools.partial(_floor_argv, here, "bare", weights=weights)
            proxy = services.start_proxy(name, argv, workdir / f"w{index}")
            stack.callback(proxy.child.stop)
            proxies.append(proxy)
        for _ in range(args.rounds):
            for proxy in proxies:
                cpu = cpu_seconds(proxy.pid)
                done, latency = _keepalive(origin, proxy, args.seconds, workdir, 50)
                results[proxy.name].append((done, latency, (cpu_seconds(proxy.pid) - cpu) / max(done, 1)))
    plain = statistics.median(r[0] for r in results["bare"])
    print("| at 50 connections | req/s | of bare | p50 / p99 | CPU per request |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        done = int(statistics.median(r[0] for r in runs))
        latency = sorted(runs)[len(runs) // 2][1]
        cpu = statistics.median(r[2] for r in runs)
        print(
            f"| {name} | {done / args.seconds:,.0f} | {done / plain:.2f} | {latency} | {cpu * 1e6:,.0f} µs |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
