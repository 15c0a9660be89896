#!/usr/bin/env python3
"""Measure CONNECT tunnels on loopback, against a real `python3 -m tinyproxy_py serve`.

1. Single-stream throughput: a byte source (a child process) sends --gib GiB per
   connection; this process reads it directly, then through the proxy's CONNECT tunnel,
   alternating for --rounds rounds. Prints MiB/s for each and the ratio proxy/direct.
2. Idle tunnels: opens --tunnels tunnels to a listener that accepts and stays silent,
   then reads the proxy's VmRSS, Threads (/proc/PID/status) and open fds; closes them
   all and checks the proxy's fds and threads return to where they started.

Loopback only (127.0.0.1), bounded loops, a deadline on every wait. It starts the proxy
and the source itself and stops both by PID before it exits, whatever happens.
Usage: python3 scripts/measure_tunnels.py [--gib 1] [--rounds 3] [--tunnels 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
CHUNK = MiB
DEADLINE = 60.0  # for any single wait; a healthy run needs a fraction of it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up waiting for {what or predicate}")
        time.sleep(0.05)


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


def read_to_eof(sock: socket.socket, already: int = 0) -> int:
    buf = bytearray(CHUNK)
    got = already
    while n := sock.recv_into(buf):
        got += n
    return got


def connect_through(proxy_port: int, port: int) -> tuple[socket.socket, int]:
    """A tunnel to 127.0.0.1:port, and how many tunnel bytes came with the 200."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=DEADLINE)
    try:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"proxy closed: {head!r}")
            head += data
        status, _, rest = head.partition(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT refused: {status!r}")
        return sock, len(rest)
    except BaseException:
        sock.close()
        raise


def timed_read(open_stream: Callable[[], tuple[socket.socket, int]], total: int) -> float:
    started = time.perf_counter()
    sock, already = open_stream()
    with sock:
        got = read_to_eof(sock, already)
    elapsed = time.perf_counter() - started
    if got != total:
        raise RuntimeError(f"read {got} bytes, expected {total}")
    return total / MiB / elapsed


def throughput(proxy_port: int, gib: float, rounds: int) -> None:
    total = int(gib * 1024 * MiB)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    source = ctx.Process(target=source_main, args=(theirs, total, 2 * rounds), daemon=True)
    source.start()
    try:
        if not ours.poll(DEADLINE):
            raise TimeoutError("the source did not start")
        port = ours.recv()
        direct, proxied = [], []
        for _ in range(rounds):
            direct.append(timed_read(lambda: (socket.create_connection(("127.0.0.1", port)), 0), total))
            proxied.append(timed_read(lambda: connect_through(proxy_port, port), total))
        source.join(DEADLINE)
    finally:
        if source.is_alive():
            source.terminate()
            source.join(5)
        ours.close()
        theirs.close()
    best_d, best_p = max(direct), max(proxied)
    print(f"throughput, {gib:g} GiB per stream, {rounds} rounds, {os.cpu_count()} CPUs:")
    print(f"  direct      best {best_d:8.0f} MiB/s  median {statistics.median(direct):8.0f} MiB/s")
    print(f"  via CONNECT best {best_p:8.0f} MiB/s  median {statistics.median(proxied):8.0f} MiB/s")
    print(
        f"  ratio (proxy / direct): best {best_p / best_d:.2f}, median "
        f"{statistics.median(proxied) / statistics.median(direct):.2f}"
    )


# --- idle tunnels ---


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "Threads"):
            fields[name] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


def show(label: str, status: dict[str, int]) -> None:
    print(
        f"  {label:<22} VmRSS {status['VmRSS'] / 1024:7.1f} MiB  fds {status['fds']:5d}  "
        f"threads {status['Threads']:3d}"
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


def idle_tunnels(proxy_pid: int, proxy_port: int, count: int) -> None:
    target = SilentTarget(count + 1)
    clients: list[socket.socket] = []
    try:
        warm, _ = connect_through(proxy_port, target.port)  # hub and handler paths warmed up
        warm.close()
        wait_for(lambda: len(target.accepted) == 1, what="the warm-up tunnel")
        target.accepted.pop().close()
        time.sleep(0.5)
        before = proc_status(proxy_pid)
        started = time.monotonic()
        for _ in range(count):
            clients.append(connect_through(proxy_port, target.port)[0])
        opened = time.monotonic() - started
        wait_for(lambda: len(target.accepted) == count, what="all tunnels to reach the target")
        time.sleep(1.0)  # let handler threads finish and the hub settle
        loaded = proc_status(proxy_pid)
        for sock in clients:
            sock.close()
        clients.clear()
        for sock in target.accepted:
            sock.close()
        target.accepted.clear()
        wait_for(lambda: proc_status(proxy_pid)["fds"] <= before["fds"], what="the proxy's fds to return")
        wait_for(lambda: proc_status(proxy_pid)["Threads"] <= before["Threads"], what="threads to return")
        after = proc_status(proxy_pid)
    finally:
        for sock in clients:
            sock.close()
        target.close()
    per_tunnel = (loaded["VmRSS"] - before["VmRSS"]) / count
    print(f"idle tunnels: {count} opened in {opened:.2f} s")
    show("baseline (1 warm-up)", before)
    show(f"{count} idle tunnels open", loaded)
    show("all closed again", after)
    print(
        f"  RSS per idle tunnel: {per_tunnel:.1f} KiB; fds per tunnel: "
        f"{(loaded['fds'] - before['fds']) / count:.2f}"
    )


# --- the proxy process ---


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # the proxy inherits it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB per throughput stream")
    parser.add_argument("--rounds", type=int, default=3, help="direct/proxied pairs")
    parser.add_argument("--tunnels", type=int, default=1000, help="idle tunnels to open")
    args = parser.parse_args()
    if not 0 < args.gib <= 16 or not 1 <= args.rounds <= 20 or not 1 <= args.tunnels <= 5000:
        parser.error("keep it bounded: 0 < gib <= 16, 1 <= rounds <= 20, 1 <= tunnels <= 5000")
    raise_fd_limit(4 * args.tunnels + 256)
    port = free_port()
    command = [sys.executable, "-m", "tinyproxy_py", "serve", "--port", str(port),
               "--connect-port", "0", "--log-level", "warning"]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proxy = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda: _accepts(port), timeout=15, what="the proxy to listen")
            print(f"proxy pid {proxy.pid} on 127.0.0.1:{port}")
            throughput(port, args.gib, args.rounds)
            idle_tunnels(proxy.pid, port, args.tunnels)
        finally:
            proxy.terminate()
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait(5)
            log.seek(0)
            errors = log.read().decode(errors="replace").strip()
            if errors:
                print("proxy log:\n" + errors[-4000:])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
