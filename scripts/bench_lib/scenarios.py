"""The scenarios of issue 9, each run against one subject: the origin directly, or a proxy.

Rate scenarios (a-d) run against the long-lived proxies, interleaved by round so load
drift hits every subject alike. Resource scenarios (e-g), and c's peak RSS, each start
a fresh proxy: a process that has already served a load has free heap to grow into,
which would hide growth, or holds what that load left, which would add to it. Every
loop is bounded by a count and every wait by a deadline.

A figure that cannot be measured honestly (a peer that fails or answers errors) is not
recorded: a footnote for that subject says why, and the table shows "-".
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.kit import procfs
from tests.kit.clients import abort
from tests.kit.waits import wait_until

from . import procinfo, wrk
from .clients import (
    BulkSpec,
    ChurnSpec,
    Endpoint,
    MiB,
    bulk_worker,
    churn_worker,
    fetch,
    get_request,
    open_socket,
    read_exactly,
    read_head,
)
from .services import Origin, Proxy

SETTLE_TIMEOUT = 30.0  # for counts to return to baseline; the header deadline is 10 s
FAILED_SHARE = 0.01  # more failed exchanges than this share, and a rate is not recorded
# What a failed measurement raises: socket errors and timeouts (OSError), a child that
# would not start or a broken process pool (RuntimeError), a garbled answer (ValueError).
MEASURE_ERRORS = (OSError, RuntimeError, ValueError, subprocess.SubprocessError)
MULTI_PROCESS = "serves from several processes: counts of one process would miss the others"


@dataclass(frozen=True)
class Settings:
    rounds: int = 3
    wrk_seconds: int = 5
    # wrk's connections for a and b: 8 is within the proxy's 10 idle upstream connections
    # per host (the targets of issue 9 are set there), 50 is beyond it.
    connections: tuple[int, ...] = (1, 8, 50)
    bulk_repeats: int = 4  # 1 stream: 4 x 256 MiB on one connection
    bulk8_repeats: int = 1  # 8 streams: 256 MiB each
    churn_seconds: float = 4.0
    churn_processes: int = 2
    churn_threads: int = 4
    idle_tunnels: int = 1000
    aborts: int = 500
    stall_seconds: float = 3.0


QUICK = Settings(
    rounds=1,
    wrk_seconds=2,
    bulk_repeats=1,
    churn_seconds=1.5,
    idle_tunnels=200,
    aborts=100,
    stall_seconds=1.5,
)


@dataclass(frozen=True)
class Subject:
    """What a scenario runs against; `start` makes a fresh process of the same kind."""

    name: str
    proxy: Proxy | None = None  # None: the origin itself
    start: Callable[[], Proxy] | None = None
    one_process: bool = True  # False: worker processes serve (RSS, fds, threads of one would mislead)

    @property
    def pid(self) -> int | None:
        return None if self.proxy is None else self.proxy.pid

    def endpoint(self, origin: Origin) -> Endpoint:
        return Endpoint(origin.http_port, None if self.proxy is None else self.proxy.port)


class Unmeasured(RuntimeError):
    """A figure that would not be honest (e.g. most requests failed); the message says why."""


@dataclass
class Record:
    """Every value measured, by subject and metric, plus notes for the reader.

    A footnote belongs to a subject and a scope: a scenario's letter ("e"), a measurement
    ("a_100_c8") or a metric ("c_8_peak"); it applies to every key that the scope starts.
    """

    values: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(dict))
    notes: list[str] = field(default_factory=list)
    footnotes: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, subject: str, key: str, value: float) -> None:
        self.values[subject].setdefault(key, []).append(value)

    def median(self, subject: str, key: str) -> float | None:
        found = self.values.get(subject, {}).get(key)
        return statistics.median(found) if found else None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def footnote(self, subject: str, scope: str, text: str) -> None:
        self.footnotes[subject].setdefault(scope, text)  # the first reason is the cause

    def footnote_for(self, subject: str, key: str) -> str | None:
        """The footnote of the narrowest scope that covers `key`, if any."""
        found = [
            (len(scope), text)
            for scope, text in self.footnotes.get(subject, {}).items()
            if key == scope or key.startswith(scope if len(scope) == 1 else scope + "_")
        ]
        return max(found)[1] if found else None

    @contextlib.contextmanager
    def attempt(self, subject: str, scope: str) -> Iterator[None]:
        """Run a measurement; if it fails, footnote why and go on with the next one."""
        try:
            yield
        except MEASURE_ERRORS as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            if not isinstance(exc, Unmeasured):
                reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            self.footnote(subject, scope, reason)


@dataclass
class Context:
    settings: Settings
    origin: Origin
    executor: Executor  # a process pool for the client load
    workdir: Path
    record: Record = field(default_factory=Record)


# --- a. keep-alive GETs, b. a new connection per request (wrk) ---

KEEPALIVE = (("a_100", "/100b"), ("a_16k", "/16k"), ("a_1m", "/1m"))


def keepalive(ctx: Context, subject: Subject, only_small: bool = False) -> None:
    """Keys a_SIZE_cN_METRIC: a_100_c8_rps is 100 B at 8 connections, in requests/s."""
    for (size, path), n in itertools.product(
        KEEPALIVE[:2] if only_small else KEEPALIVE, ctx.settings.connections
    ):
        key = f"{size}_c{n}"
        with ctx.record.attempt(subject.name, key):
            result, cpu = _wrk(ctx, subject, path, n, close=False)
            ctx.record.add(subject.name, f"{key}_rps", result.rps)
            ctx.record.add(subject.name, f"{key}_p50", result.p50_ms)
            ctx.record.add(subject.name, f"{key}_p99", result.p99_ms)
            ctx.record.add(subject.name, f"{key}_mibs", result.mib_per_s)
            if cpu is not None:
                ctx.record.add(subject.name, f"{key}_cpu", cpu)
            if result.closed > result.requests // 2:
                ctx.record.footnote(
                    subject.name, "a", "closes the client connection after every response (no keep-alive)"
                )


def new_connections(ctx: Context, subject: Subject) -> None:
    """Keys b_cN_rps and b_cN_cpu."""
    for n in ctx.settings.connections:
        with ctx.record.attempt(subject.name, f"b_c{n}"):
            result, cpu = _wrk(ctx, subject, "/100b", n, close=True)
            ctx.record.add(subject.name, f"b_c{n}_rps", result.rps)
            if cpu is not None:
                ctx.record.add(subject.name, f"b_c{n}_cpu", cpu)


def _wrk(
    ctx: Context, subject: Subject, path: str, connections: int, close: bool
) -> tuple[wrk.WrkResult, float | None]:
    """One wrk run; the proxy's CPU use meanwhile, in % of one core."""
    spec = wrk.WrkSpec(
        ctx.origin.http_port, path, subject.endpoint(ctx.origin).proxy_port, close,
        ctx.settings.wrk_seconds, connections,
    )  # fmt: skip
    with _cpu(subject.pid) as cpu:
        result = wrk.run(spec, ctx.workdir)
    what = f"wrk {path}{' (close)' if close else ''}, {connections} conns"
    if result.errors > result.requests * FAILED_SHARE:
        raise Unmeasured(f"{what}: {result.errors} errors and {result.requests} answers")
    if result.errors:
        ctx.record.note(f"{subject.name}: {what}: {result.errors} errors")
    return result, cpu.get("percent")


@contextlib.contextmanager
def _cpu(pid: int | None) -> Iterator[dict[str, float]]:
    """Yields a dict that holds "percent" (CPU of one core used by `pid`) after the block."""
    found: dict[str, float] = {}
    if pid is None:
        yield found
        return
    cpu0, wall0 = procinfo.cpu_seconds(pid), time.monotonic()
    yield found
    found["percent"] = 100 * (procinfo.cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)


# --- c. CONNECT bulk download ---


def bulk(ctx: Context, subject: Subject) -> None:
    settings, endpoint = ctx.settings, subject.endpoint(ctx.origin)
    with ctx.record.attempt(subject.name, "c_1"):
        one = BulkSpec(endpoint, "/256m", 1, settings.bulk_repeats)
        with _cpu(subject.pid) as cpu:
            size, seconds = ctx.executor.submit(bulk_worker, one).result(timeout=600)
        ctx.record.add(subject.name, "c_1_mibs", size / MiB / seconds)
        if "percent" in cpu:
            ctx.record.add(subject.name, "c_1_cpu", cpu["percent"])
    with ctx.record.attempt(subject.name, "c_8"):
        eight = BulkSpec(endpoint, "/256m", 8, settings.bulk8_repeats)
        size, seconds = ctx.executor.submit(bulk_worker, eight).result(timeout=600)
        ctx.record.add(subject.name, "c_8_mibs", size / MiB / seconds)
        if subject.pid is not None and not subject.one_process:
            ctx.record.footnote(subject.name, "c_8_peak", MULTI_PROCESS)
        elif subject.start is not None:
            ctx.record.add(subject.name, "c_8_peak", _peak_of_bulk(ctx, subject, eight))


def _peak_of_bulk(ctx: Context, subject: Subject, spec: BulkSpec) -> float:
    """Peak RSS (MiB) of the same streams through a fresh process. The long-lived one
    still holds what a and b left behind (tinyproxy-py: up to 50 handler threads idle for
    their last seconds, and the memory they touched), which swung this figure by 25 MiB
    between rounds."""
    with _fresh(subject) as proxy:
        procinfo.reset_peak(proxy.pid)
        with procinfo.PeakSampler(proxy.pid) as sampler:
            fresh = replace(spec, endpoint=Endpoint(ctx.origin.http_port, proxy.port))
            ctx.executor.submit(bulk_worker, fresh).result(timeout=600)
        return max(sampler.peak, procfs.status_field(proxy.pid, "VmHWM")) / 1024


# --- d. CONNECT + small GET + close ---


def churn(ctx: Context, subject: Subject) -> None:
    settings, origin = ctx.settings, ctx.origin
    for key, port, cafile in (
        ("d_plain", origin.http_port, None),
        ("d_tls", origin.https_port, origin.cafile),
    ):
        if port == origin.https_port and cafile is None:
            ctx.record.note(
                "TLS rows skipped: neither openssl nor trustme is available to make a certificate"
            )
            continue
        spec = ChurnSpec(
            subject.endpoint(origin), port, str(cafile) if cafile else None,
            settings.churn_threads, settings.churn_seconds,
        )  # fmt: skip
        with ctx.record.attempt(subject.name, key):
            futures = [ctx.executor.submit(churn_worker, spec) for _ in range(settings.churn_processes)]
            counts = [f.result(timeout=settings.churn_seconds + 120) for f in futures]
            done, failed = sum(c[0] for c in counts), sum(c[1] for c in counts)
            if failed > (done + failed) * FAILED_SHARE:
                raise Unmeasured(f"{failed} of {done + failed} exchanges failed")
            ctx.record.add(subject.name, f"{key}_tps", done / settings.churn_seconds)
            if failed:
                ctx.record.note(f"{subject.name}: {key}: {failed} of {done + failed} exchanges failed")


# --- e. idle tunnels held ---


def idle_tunnels(ctx: Context, subject: Subject) -> None:
    count, port = ctx.settings.idle_tunnels, ctx.origin.http_port
    with _fresh(subject) as proxy:
        ctx.record.add(subject.name, "idle_rss", procfs.rss_kib(proxy.pid) / 1024)
        ctx.record.add(subject.name, "idle_anon", procinfo.anonymous_kib(proxy.pid) / 1024)
        endpoint = Endpoint(port, proxy.port)
        _warm_up(endpoint)
        base = procinfo.settle(proxy.pid, SETTLE_TIMEOUT)
        socks: list[socket.socket] = []
        try:
            for _ in range(count):
                socks.append(open_socket(endpoint, port))  # nginx waits for a request: idle
            loaded = procinfo.settle(proxy.pid, SETTLE_TIMEOUT) - base
        finally:
            for sock in socks:
                sock.close()
        _record_per_tunnel(ctx, subject.name, loaded, count)
        _record_return(ctx, subject.name, proxy.pid, base, "e")


def _record_per_tunnel(ctx: Context, name: str, delta: procfs.Usage, count: int) -> None:
    ctx.record.add(name, "e_rss", delta.rss_kib / count)
    ctx.record.add(name, "e_threads", delta.threads / count)
    ctx.record.add(name, "e_fds", delta.fds / count)


def _record_return(ctx: Context, name: str, pid: int, base: procfs.Usage, prefix: str) -> None:
    """How far fds and threads are from the baseline once they settle, and how long it took."""
    started = time.monotonic()
    wait_until(lambda: _at_baseline(pid, base), SETTLE_TIMEOUT, 0.1)
    ctx.record.add(name, f"{prefix}_settle", time.monotonic() - started)
    after = procinfo.settle(pid, 5.0) - base
    ctx.record.add(name, f"{prefix}_fds_left", after.fds)
    ctx.record.add(name, f"{prefix}_threads_left", after.threads)
    ctx.record.add(name, f"{prefix}_rss_left", after.rss_kib / 1024)


def _at_baseline(pid: int, base: procfs.Usage) -> bool:
    now = procfs.usage(pid)
    return now.fds <= base.fds and now.threads <= base.threads


def _warm_up(endpoint: Endpoint) -> None:
    """One tunnel and one plain request, so the hub, the pool and their imports exist."""
    buf = memoryview(bytearray(MiB))
    with open_socket(endpoint, endpoint.origin_port) as sock:
        fetch(sock, get_request("/100b", endpoint.origin_port), buf)
    with socket.create_connection(endpoint.address, timeout=30) as sock:
        fetch(sock, get_request("/100b", endpoint.origin_port, absolute=True), buf)


@contextlib.contextmanager
def _fresh(subject: Subject) -> Iterator[Proxy]:
    assert subject.start is not None, "resource scenarios need a proxy"
    proxy = subject.start()
    try:
        yield proxy
    finally:
        proxy.child.stop()


# --- f. abrupt client disconnects ---


def _reset_at_once(endpoint: Endpoint) -> None:
    abort(socket.create_connection(endpoint.address, timeout=30))


def _reset_mid_head(endpoint: Endpoint) -> None:
    sock = socket.create_connection(endpoint.address, timeout=30)
    sock.sendall(get_request("/100b", endpoint.origin_port, absolute=True)[:30])
    abort(sock)


def _reset_mid_response(endpoint: Endpoint) -> None:
    sock = socket.create_connection(endpoint.address, timeout=30)
    try:
        sock.sendall(get_request("/256m", endpoint.origin_port, absolute=True))
        read_head(sock)
    finally:
        abort(sock)


def _reset_mid_tunnel(endpoint: Endpoint) -> None:
    sock = open_socket(endpoint, endpoint.origin_port)
    try:
        sock.sendall(get_request("/256m", endpoint.origin_port))
        read_head(sock)
    finally:
        abort(sock)


ABORTS = (_reset_at_once, _reset_mid_head, _reset_mid_response, _reset_mid_tunnel)


def aborts(ctx: Context, subject: Subject) -> None:
    with _fresh(subject) as proxy:
        endpoint = Endpoint(ctx.origin.http_port, proxy.port)
        _warm_up(endpoint)
        base = procinfo.settle(proxy.pid, SETTLE_TIMEOUT)
        failures = 0
        for i in range(ctx.settings.aborts):
            try:
                ABORTS[i % len(ABORTS)](endpoint)
            except OSError:
                failures += 1
        if failures:
            ctx.record.note(f"{subject.name}: {failures} abort exchanges failed before the reset")
        _warm_up(endpoint)  # the pool holds one idle connection again, as at the baseline
        _record_return(ctx, subject.name, proxy.pid, base, "f")


# --- g. a slow reader ---


def slow_reader(ctx: Context, subject: Subject) -> None:
    for key, tunnel in (("g_tunnel", True), ("g_plain", False)):
        with _fresh(subject) as proxy:
            endpoint = Endpoint(ctx.origin.http_port, proxy.port)
            _warm_up(endpoint)
            growth, resumed = _stall(proxy.pid, endpoint, tunnel, ctx.settings.stall_seconds)
            ctx.record.add(subject.name, key, growth / 1024)
            if not resumed:
                ctx.record.note(f"{subject.name}: {key}: the download did not resume after the stall")


def _stall(pid: int, endpoint: Endpoint, tunnel: bool, seconds: float) -> tuple[int, bool]:
    """Read 1 MiB of a 256 MiB download, stop reading for `seconds`, then read 8 MiB more.

    Returns the proxy's RSS growth during the stall (KiB) and whether the download went on.
    """
    buf = memoryview(bytearray(MiB))
    if tunnel:
        sock = open_socket(endpoint, endpoint.origin_port)
    else:
        sock = socket.create_connection(endpoint.address, timeout=30)
    try:
        sock.sendall(get_request("/256m", endpoint.origin_port, absolute=not tunnel))
        _, _, rest = read_head(sock)
        read_exactly(sock, MiB - len(rest), buf)
        before = procfs.rss_kib(pid)
        with procinfo.PeakSampler(pid, 0.02) as sampler:
            time.sleep(seconds)
        try:
            read_exactly(sock, 8 * MiB, buf)
            resumed = True
        except OSError:
            resumed = False
        return sampler.peak - before, resumed
    finally:
        abort(sock)
