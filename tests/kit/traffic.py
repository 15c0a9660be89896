"""The exchange mix of the soaks, and the worker threads that run it.

tests/wire/test_soak_short.py runs the mix for 20 s against a proxy in its own process,
scripts/soak.py for as long as asked against a proxy process: one list of exchanges, so
the two cannot drift apart. Each exchange is a whole client conversation that checks
what it gets back and raises on anything else (Unexpected for a wrong answer).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from .clients import (
    KiB,
    MiB,
    abort,
    connect_request,
    open_tunnel,
    read_head,
    recv_exactly,
    recv_to_eof,
    request,
)
from .faults import fault_targets
from .origins import pattern_bytes, running_origin
from .responses import request_over
from .servers import free_port

MALFORMED = (
    (b"NOT A REQUEST\r\n\r\n", 400),
    (b"POST http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET http://127.0.0.1:1/ HTTP/1.1\r\n" + b"X-Many: y\r\n" * 150 + b"\r\n", 431),
    (b"GET http://127.0.0.1:1/" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n", 408),  # never finished
)  # fmt: skip


class Unexpected(AssertionError):
    """An exchange got an answer it should not have."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Unexpected(what)


class Mix:
    """The exchanges, each a complete client conversation, and the rotation they run in.

    `origin` is the origin's base URL and `targets` the fault targets' ports by script
    name (faults.SCRIPTS). `stall` is how long the origin stalls before a head, and a
    client stops reading: longer than the proxy's read and response header timeouts.
    `bounds` gives, by exchange name, the most seconds an exchange that waits for one of
    the proxy's deadlines may take. `timeout` bounds every client socket call.
    """

    def __init__(
        self,
        proxy: tuple[str, int],
        origin: str,
        targets: Mapping[str, int],
        *,
        stall: float,
        timeout: float,
        bounds: Mapping[str, float] | None = None,
    ) -> None:
        self.proxy, self.origin, self.targets = proxy, origin, targets
        self.stall, self.timeout, self.bounds = stall, timeout, bounds or {}
        self.closed_port = free_port()

    def dial(self) -> socket.socket:
        return socket.create_connection(self.proxy, timeout=self.timeout)

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.targets[name]}"

    def open_tunnel(self, name: str) -> tuple[socket.socket, bytes]:
        return open_tunnel(self.proxy, self.target(name), timeout=self.timeout)

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
                response = request_over(sock, raw)
                expect(response.status == 200, f"status {response.status}")
                expect(response.body == expected, f"{len(response.body)} bytes, not the {len(expected)} sent")

    def tunnel(self, n: int) -> None:
        data = pattern_bytes(64 * KiB + n % 1000)
        sock, rest = self.open_tunnel("echo")
        with sock:
            sock.sendall(data)
            expect(recv_exactly(sock, len(data), rest) == data, "echo differs")
            sock.shutdown(socket.SHUT_WR)
            expect(recv_to_eof(sock) == b"", "bytes after the echo")

    def tunnel_abort(self, n: int) -> None:
        sock, rest = self.open_tunnel("source")
        try:
            recv_exactly(sock, 256 * KiB, rest)
        finally:
            self._hang_up(sock, n)

    def tunnel_reset(self, n: int) -> None:
        sock, _ = self.open_tunnel("reset_at_once")
        with sock:
            sock.sendall(b"hello\r\n\r\n")
            self._cut_short(sock, b"", 1, "bytes from a target that reset")

    def tunnel_idle(self, n: int) -> None:
        sock, rest = self.open_tunnel("echo")
        started = time.monotonic()
        with sock:
            expect(rest + recv_to_eof(sock) == b"", "bytes on an idle tunnel")  # closed when idle
        self._within("tunnel_idle", started)

    def abort_download(self, n: int) -> None:
        sock = self.dial()
        try:
            sock.sendall(request("GET", f"{self.origin}/bytes/{16 * MiB}"))
            recv_exactly(sock, 256 * KiB)
        finally:
            self._hang_up(sock, n)

    def stalled_reader(self, n: int) -> None:
        """Stop reading a large download for longer than the read timeout: the proxy's send
        times out, it gives up on the client and discards the upstream connection."""
        with self.dial() as sock:
            sock.sendall(request("GET", f"{self.origin}/bytes/{64 * MiB}"))
            recv_exactly(sock, 256 * KiB)
            time.sleep(self.stall)
            self._cut_short(sock, b"", 64 * MiB - 256 * KiB, "a stalled download arrived whole", 64 * MiB)

    def abort_upload(self, n: int) -> None:
        sock = self.dial()
        try:
            head = f"POST {self.origin}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {4 * MiB}\r\n\r\n"
            sock.sendall(head.encode() + pattern_bytes(128 * KiB))  # of the 4 MiB promised
            time.sleep(0.01)
        finally:
            self._hang_up(sock, n)

    def upstream_reset(self, n: int) -> None:
        with self.dial() as sock:
            status = request_over(sock, request("GET", f"http://{self.target('reset_at_once')}/")).status
        expect(status == 502, f"status {status}")

    def upstream_reset_mid_body(self, n: int) -> None:
        self._cut_off_response("reset_mid_body", 100_000, "a body that was cut off arrived whole")

    def stall_head(self, n: int) -> None:
        started = time.monotonic()
        with self.dial() as sock:
            status = request_over(sock, request("GET", f"{self.origin}/slow/{self.stall}")).status
        expect(status == 504, f"status {status}")
        self._within("stall_head", started)

    def stall_body(self, n: int) -> None:
        self._cut_off_response("stall_body", 10, "a stalled body arrived whole")

    def connect_refused(self, n: int) -> None:
        target = f"127.0.0.1:{self.closed_port}"
        with self.dial() as sock:
            status = request_over(sock, request("GET", f"http://{target}/")).status
        expect(status == 502, f"GET to a closed port: {status}")
        with self.dial() as sock:
            sock.sendall(connect_request(target))
            status, _ = read_head(sock)
        expect(status == 502, f"CONNECT to a closed port: {status}")

    def malformed(self, n: int) -> None:
        raw, expected = MALFORMED[n % len(MALFORMED)]
        with self.dial() as sock:
            sock.sendall(raw)
            answer = recv_to_eof(sock)
        expect(answer.startswith(b"HTTP/1.1 %d " % expected), f"expected {expected}: {answer[:40]!r}")

    def idle_keep_alive(self, n: int) -> None:
        with self.dial() as sock:
            status = request_over(sock, request("GET", f"{self.origin}/bytes/10")).status
            expect(status == 200, f"status {status}")
            started = time.monotonic()
            expect(recv_to_eof(sock) == b"", "bytes on an idle connection")  # closed when idle
        self._within("idle_keep_alive", started)

    def stats(self, n: int) -> None:
        with self.dial() as sock:
            response = request_over(sock, b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        expect(response.status == 200 and b'"gauges"' in response.body, f"stats page: {response.status}")

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
            self.stats,
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

    def _hang_up(self, sock: socket.socket, n: int) -> None:
        """Half the aborts are resets, half plain closes."""
        if n % 2 == 0:
            abort(sock)
        else:
            sock.close()

    def _cut_off_response(self, target: str, most: int, what: str) -> None:
        with self.dial() as sock:
            sock.sendall(request("GET", f"http://{self.target(target)}/"))
            status, rest = read_head(sock)
            expect(status == 200, f"status {status}")
            self._cut_short(sock, rest, most, what)

    def _cut_short(
        self, sock: socket.socket, rest: bytes, most: int, what: str, limit: int = 16 * MiB
    ) -> None:
        """Read until the proxy ends the connection (a reset will do): fewer than `most` bytes."""
        try:
            got = len(rest) + len(recv_to_eof(sock, limit))
        except ConnectionResetError:
            return
        expect(got < most, f"{what}: {got} bytes")

    def _within(self, name: str, started: float) -> None:
        took, bound = time.monotonic() - started, self.bounds.get(name)
        expect(bound is None or took < bound, f"{name} took {took:.1f} s, over {bound} s")


@contextmanager
def mix_against(
    proxy: tuple[str, int], *, stall: float, timeout: float, bounds: Mapping[str, float] | None = None
) -> Iterator[Mix]:
    """A Mix with its own origin and fault targets on 127.0.0.1, all stopped on exit."""
    with running_origin(record=False) as origin, fault_targets() as targets:
        yield Mix(proxy, origin.url(""), targets, stall=stall, timeout=timeout, bounds=bounds)


class Traffic:
    """Worker threads running the rotation; pause() waits until none is mid-exchange.

    Worker i starts i/workers of the way into the rotation, so that every kind of
    exchange runs at once with the others. Any exception an exchange raises is counted
    in `unexpected` (the first few kept in `samples`), never fatal.
    """

    def __init__(self, mix: Mix, workers: int, pause: float, rounds: int = 1_000_000) -> None:
        self.pause_between, self.rounds = pause, rounds
        self.schedule = mix.schedule()
        self.done: Counter[str] = Counter()
        self.turns: Counter[str] = Counter()  # each exchange's variant: its how-many-th run
        self.unexpected: Counter[str] = Counter()
        self.samples: list[str] = []
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.stopping = threading.Event()
        self.busy = 0
        self.idle = threading.Condition(self.lock)
        spread = len(self.schedule) // workers
        self.threads = [
            threading.Thread(target=self._work, args=(i * spread,), name=f"traffic-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        self.running.set()
        for thread in self.threads:
            thread.start()

    def _work(self, offset: int) -> None:
        for n in range(self.rounds):
            if not self._next_turn():
                return
            exchange = self.schedule[(offset + n) % len(self.schedule)]
            with self.lock:
                turn = self.turns[exchange.__name__]
                self.turns[exchange.__name__] += 1
            outcome = ""
            try:
                exchange(turn)
            except Exception as exc:  # counted and reported, never fatal
                outcome = f"{exchange.__name__} #{turn}: {exc!r}"[:300]
            with self.lock:
                self.busy -= 1
                self.done[exchange.__name__] += 1
                if outcome:
                    self.unexpected[exchange.__name__] += 1
                    if len(self.samples) < 10:
                        self.samples.append(outcome)
                self.idle.notify_all()
            self.stopping.wait(self.pause_between)

    def _next_turn(self) -> bool:
        """Wait while paused; count this worker busy. False once stopping."""
        while not self.stopping.is_set():
            if self.running.wait(0.2):
                with self.lock:
                    if self.running.is_set():
                        self.busy += 1
                        return True
        return False

    def pause(self, timeout: float) -> bool:
        """Stop starting exchanges; wait until those under way have ended."""
        with self.lock:
            self.running.clear()
            return self.idle.wait_for(lambda: self.busy == 0, timeout)

    def resume(self) -> None:
        self.running.set()

    def stop(self, timeout: float) -> bool:
        """Let the exchanges under way end; whether every worker did within `timeout`."""
        self.stopping.set()
        self.running.clear()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread.ident is not None:  # started
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self.threads)

    def total(self) -> int:
        with self.lock:
            return sum(self.done.values())
