#!/usr/bin/env python3
"""Measure CONNECT tunnels on loopback, against a real `python3 -m tinyproxy_py serve`.

1. Single-stream throughput: a byte source (a child process) sends --gib GiB per
   connection; this process reads it directly, then through the proxy's CONNECT tunnel,
   alternating for --rounds rounds. Prints MiB/s for each and the ratio proxy/direct.
2. Idle tunnels: opens --tunnels tunnels to a listener that accepts and stays silent,
   then reads the proxy's RSS (smaps_rollup), threads and open fds from /proc; closes
   them all and checks the proxy's fds and threads return to where they started.

Loopback only (127.0.0.1), bounded loops, a deadline on every wait. It starts the proxy
and the source itself and stops both by PID before it exits, whatever happens.
Usage: python3 scripts/measure_tunnels.py [--gib 1] [--rounds 3] [--tunnels 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kit, the traffic kit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lib

from bench_lib import procinfo, services
from bench_lib.clients import read_exactly

from tests.kit import procfs
from tests.kit.clients import open_tunnel
from tests.kit.waits import wait_until

MiB = 1024 * 1024
CHUNK = MiB
DEADLINE = 60.0  # for any single wait; a healthy run needs a fraction of it


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    if not wait_until(predicate, timeout, 0.05):
        raise TimeoutError(f"gave up waiting for {what}")


def tunnel(proxy_port: int, port: int) -> tuple[socket.socket, bytes]:
    """A tunnel to 127.0.0.1:port, and the tunnel bytes that came with the 200."""
    return open_tunnel(("127.0.0.1", proxy_port), f"127.0.0.1:{port}", timeout=DEADLINE)


# --- the byte source (runs in a child process) ---


def source_main(conn: Connection, total: int, connections: int) -> None:
    """Serve `connections` connections, each `total` bytes then close; report the port first."""
    block = os.urandom(CHUNK)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(DEADLINE)
        conn.send(listener.getsockname()[1])
        for _ in range(connections):
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(DEADLINE)
                sent = 0
                while sent < total:
                    n = min(CHUNK, total - sent)
                    sock.sendall(block[:n] if n < CHUNK else block)
                    sent += n


def timed_read(open_stream: Callable[[], tuple[socket.socket, bytes]], total: int) -> float:
    started = time.perf_counter()
    sock, rest = open_stream()
    with sock:
        read_exactly(sock, total - len(rest), memoryview(bytearray(CHUNK)))
    return total / MiB / (time.perf_counter() - started)


@contextlib.contextmanager
def byte_source(total: int, connections: int) -> Iterator[int]:
    """A child process that sends `total` bytes on each of `connections` connections;
    yields its port, and stops it (by PID) whatever happens."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    source = ctx.Process(target=source_main, args=(theirs, total, connections), daemon=True)
    source.start()
    try:
        if not ours.poll(DEADLINE):
            raise TimeoutError("the source did not start")
        yield ours.recv()
        source.join(DEADLINE)
    finally:
        if source.is_alive():
            source.terminate()
            source.join(5)
        ours.close()
        theirs.close()


def throughput(proxy_port: int, gib: float, rounds: int) -> None:
    total = int(gib * 1024 * MiB)
    direct, proxied = [], []
    with byte_source(total, 2 * rounds) as port:
        for _ in range(rounds):
            direct.append(timed_read(lambda: (socket.create_connection(("127.0.0.1", port)), b""), total))
            proxied.append(timed_read(lambda: tunnel(proxy_port, port), total))
    best_d, best_p = max(direct), max(proxied)
    print(f"throughput, {gib:g} GiB per stream, {rounds} rounds, {os.cpu_count()} CPUs:")
    print(f"  direct      best {best_d:8.0f} MiB/s  median {statistics.median(direct):8.0f} MiB/s")
    print(f"  via CONNECT best {best_p:8.0f} MiB/s  median {statistics.median(proxied):8.0f} MiB/s")
    print(
        f"  ratio (proxy / direct): best {best_p / best_d:.2f}, median "
        f"{statistics.median(proxied) / statistics.median(direct):.2f}"
    )


# --- idle tunnels ---


def show(label: str, usage: procfs.Usage) -> None:
    print(
        f"  {label:<22} RSS {usage.rss_kib / 1024:7.1f} MiB  fds {usage.fds:5d}  threads {usage.threads:3d}"
    )


class SilentTarget:
    """A loopback listener that accepts connections and keeps them, saying nothing."""

    def __init__(self, expected: int) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.expected = expected
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set() and len(self.accepted) < self.expected:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted.append(sock)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        for sock in self.accepted:
            sock.close()
        self.listener.close()


@dataclass(frozen=True)
class Idle:
    before: procfs.Usage
    loaded: procfs.Usage
    after: procfs.Usage
    opened_s: float
    fds_back: bool
    threads_back: bool

    def per_tunnel_kib(self, count: int) -> float:
        return (self.loaded - self.before).rss_kib / count


def hold_idle(proxy_pid: int, open_via: Callable[[int], tuple[socket.socket, bytes]], count: int) -> Idle:
    """Open `count` tunnels (`open_via(port)`) to a silent listener, read the proxy's
    usage, close them, read it again once its fds and threads are back."""
    target = SilentTarget(count + 1)
    clients: list[socket.socket] = []
    try:
        open_via(target.port)[0].close()  # the warm-up: this listener's paths, the hub
        wait_for(lambda: len(target.accepted) == 1, "the warm-up tunnel")
        target.accepted.pop().close()
        before = procinfo.settle(proxy_pid, DEADLINE)
        started = time.monotonic()
        for _ in range(count):
            clients.append(open_via(target.port)[0])
        opened = time.monotonic() - started
        wait_for(lambda: len(target.accepted) == count, "all tunnels to reach the target")
        loaded = procinfo.settle(proxy_pid, DEADLINE)
        for sock in clients:
            sock.close()
        clients.clear()
        for sock in target.accepted:
            sock.close()
        target.accepted.clear()
        fds_back = wait_until(lambda: procfs.open_fds(proxy_pid) <= before.fds, DEADLINE, 0.05)
        threads_back = wait_until(lambda: procfs.usage(proxy_pid).threads <= before.threads, DEADLINE, 0.05)
        after = procinfo.settle(proxy_pid, DEADLINE)
    finally:
        for sock in clients:
            sock.close()
        target.close()
    return Idle(before, loaded, after, opened, fds_back, threads_back)


def idle_tunnels(proxy_pid: int, proxy_port: int, count: int) -> None:
    held = hold_idle(proxy_pid, lambda port: tunnel(proxy_port, port), count)
    before, loaded, after, opened = held.before, held.loaded, held.after, held.opened_s
    grown = loaded - before
    print(f"idle tunnels: {count} opened in {opened:.2f} s")
    show("baseline (1 warm-up)", before)
    show(f"{count} idle tunnels open", loaded)
    show("all closed again", after)
    print(f"  RSS per idle tunnel: {grown.rss_kib / count:.1f} KiB; fds per tunnel: {grown.fds / count:.2f}")


# --- main ---


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB per throughput stream")
    parser.add_argument("--rounds", type=int, default=3, help="direct/proxied pairs")
    parser.add_argument("--tunnels", type=int, default=1000, help="idle tunnels to open")
    args = parser.parse_args()
    if not 0 < args.gib <= 16 or not 1 <= args.rounds <= 20 or not 1 <= args.tunnels <= 5000:
        parser.error("keep it bounded: 0 < gib <= 16, 1 <= rounds <= 20, 1 <= tunnels <= 5000")
    services.raise_fd_limit(4 * args.tunnels + 256)
    with tempfile.TemporaryDirectory(prefix="tunnels-") as workdir:
        proxy = services.start_tinyproxy_py(Path(workdir), sys.executable)
        try:
            print(f"proxy pid {proxy.pid} on 127.0.0.1:{proxy.port}")
            throughput(proxy.port, args.gib, args.rounds)
            idle_tunnels(proxy.pid, proxy.port, args.tunnels)
        finally:
            proxy.child.stop()
            errors = proxy.child.log_tail(4000).strip()
            if errors:
                print("proxy log:\n" + errors)


if __name__ == "__main__":
    main()
