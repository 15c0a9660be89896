#!/usr/bin/env python3
"""How fast can any Python proxy set up tunnels here? The floor under issue 17's targets.

Two minimal CONNECT proxies, each doing only what a CONNECT + GET + close needs (accept,
read the head, connect to an address literal, 200, shuttle, close: no policy, no limits,
no logging, no deadlines, no error answers), measured next to tinyproxy-py with the
bench's CONNECT + GET + close client (scenario d) against its nginx origin, in rounds:

  loop     one selectors loop does everything (the shape of pproxy's event loop)
  threads  tinyproxy-py's shape: an accept thread hands each connection to a handler
           thread, which reads the head and dials, then hands both sockets to a loop
           thread that shuttles (the tunnel hub)

The gap between loop and threads is what the shape costs (thread hand-offs and the GIL
passing between threads); the gap between threads and tinyproxy-py is what our code
costs on top of that shape. Prints tunnels/s and the proxy's CPU per tunnel (medians).

  python3 scripts/floor.py [--rounds 3] [--seconds 4]

Needs nginx (as scripts/bench.py does). Loopback only; everything started is stopped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import select
import selectors
import socket
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from queue import SimpleQueue

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kit, the traffic kit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lib

from bench_lib import services
from bench_lib.clients import ChurnSpec, Endpoint, churn_worker
from bench_lib.procinfo import cpu_seconds

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
Handler = Callable[[int], None]


# --- the two minimal proxies (run as `floor.py serve loop|threads PORT`) ---


def _listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def _target(head: bytes) -> tuple[str, int]:
    host, _, port = head.split(b" ", 2)[1].rpartition(b":")
    return host.decode(), int(port)


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

    def tunnel(self, client: socket.socket, target: socket.socket) -> None:
        client.send(ESTABLISHED)
        both = (client, target)
        self.selector.register(client, selectors.EVENT_READ, lambda _: self._pump(client, target, both))
        self.selector.register(target, selectors.EVENT_READ, lambda _: self._pump(target, client, both))

    def _pump(self, src: socket.socket, dst: socket.socket, both: tuple[socket.socket, ...]) -> None:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        if data:
            dst.send(data)
            return
        for sock in both:
            self.selector.unregister(sock)
            sock.close()


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
        data = client.recv(65536)
        heads[client] += data
        if not data or b"\r\n\r\n" in heads[client]:
            head = heads.pop(client)
            selector.unregister(client)
            if not data:
                client.close()
                return
            target = _dial(_target(head))
            selector.register(target, selectors.EVENT_WRITE, lambda _: connected(client, target))

    def connected(client: socket.socket, target: socket.socket) -> None:
        selector.unregister(target)
        shuttle.tunnel(client, target)

    heads: dict[socket.socket, bytes] = {}
    selector.register(listener, selectors.EVENT_READ, accept)
    shuttle.run()


def serve_threads(port: int, handlers: int = 8) -> None:
    shuttle, listener = Shuttle(), _listener(port)
    accepted: SimpleQueue[socket.socket] = SimpleQueue()
    incoming: collections.deque[tuple[socket.socket, socket.socket]] = collections.deque()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)

    def accept() -> None:
        while True:
            accepted.put(listener.accept()[0])

    def handle() -> None:
        while True:
            client, head = accepted.get(), b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)  # blocking, as a handler thread waits
                if not data:
                    break
                head += data
            if b"\r\n\r\n" not in head:
                client.close()
                continue
            client.setblocking(False)
            target = _dial(_target(head))
            poller = select.poll()
            poller.register(target, select.POLLOUT)
            poller.poll(5000)
            incoming.append((client, target))
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
    parser.add_argument("--seconds", type=float, default=4.0, help="per subject and round")
    parser.add_argument("--processes", type=int, default=2, help="client processes (the bench's d: 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per client process (d: 4)")
    return parser.parse_args(argv)


def _floor_argv(script: str, kind: str, workdir: Path, port: int) -> list[str]:
    return [sys.executable, script, "serve", kind, str(port)]


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["serve"]:
        kind, port = sys.argv[2], int(sys.argv[3])
        (serve_loop if kind == "loop" else serve_threads)(port)
        return 0
    args = parse_args(argv)
    here = str(Path(__file__).resolve())
    results: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinyproxy-py-floor-")))
        workdir.chmod(0o755)  # nginx's unprivileged workers must reach the files
        origin = stack.enter_context(services.nginx_origin(workdir / "origin"))
        proxies = [
            services.start_proxy(f"floor: {kind}", functools.partial(_floor_argv, here, kind), workdir / kind)
            for kind in ("loop", "threads")
        ]
        proxies.append(services.start_tinyproxy_py(workdir / "py", sys.executable))
        for proxy in proxies:
            stack.callback(proxy.child.stop)
        executor = stack.enter_context(ProcessPoolExecutor(args.processes))
        for number in range(args.rounds):
            for proxy in proxies:
                spec = ChurnSpec(
                    Endpoint(origin.http_port, proxy.port), origin.http_port, None, args.threads, args.seconds
                )
                cpu = cpu_seconds(proxy.pid)
                counts = [
                    f.result(timeout=args.seconds + 120)
                    for f in [executor.submit(churn_worker, spec) for _ in range(args.processes)]
                ]
                done, failed = sum(c[0] for c in counts), sum(c[1] for c in counts)
                if failed > done // 100:
                    raise RuntimeError(f"{proxy.name}: {failed} of {done + failed} exchanges failed")
                results[proxy.name].append(
                    (done / args.seconds, (cpu_seconds(proxy.pid) - cpu) / max(done, 1))
                )
                print(
                    f"round {number + 1}: {proxy.name}: {done / args.seconds:,.0f} tunnels/s", file=sys.stderr
                )
    print("| CONNECT + GET + close | tunnels/s | proxy CPU per tunnel |\n| --- | ---: | ---: |")
    for name, runs in results.items():
        rate, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"| {name} | {rate:,.0f} | {cpu * 1e6:,.0f} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
