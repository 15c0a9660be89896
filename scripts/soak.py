#!/usr/bin/env python3
"""Soak a tinyproxy-py proxy with mixed traffic and faults; print its resources over time.

Starts its own origins on 127.0.0.1 (an HTTP origin, an echo target, a byte source, and
targets that reset, stall or refuse), then runs --workers client threads through a fixed
rotation of exchanges for --duration seconds: keep-alive requests and uploads, CONNECT
tunnels carrying data, client aborts mid-download, mid-upload and mid-tunnel (half of
them resets), a client that stops reading, upstream resets before and during a response
and in a tunnel, upstream stalls past the response header and read timeouts,
connect failures, malformed and unfinished requests, idle keep-alive connections and idle
tunnels, the stats page. It is the mix of tests/wire/test_soak_short.py, from the same
kit (tests/kit/traffic.py). Every --interval seconds it prints one row: the proxy's open
fds, threads and RSS, its gauges, and the request and error rates from its counters.

At the start (after a warm-up), at the middle and at the end it pauses the traffic,
waits until the proxy is idle (gauges at zero, pooled connections reaped), and takes a
quiet sample. The summary compares those three: fds and threads must be equal, RSS must
grow by less than --max-rss-growth % between the middle and the end. Exit status 0 if so
(and no exchange had an unexpected outcome), 1 otherwise, 2 if the proxy's stats page
cannot be read.

Without --proxy it starts `python -m tinyproxy_py serve --connect-port 0 --log-level
warning` on a free port with short limits in a child process and stops it by PID at the
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
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kit, the traffic kit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lib

from bench_lib import services

from tests.kit import procfs
from tests.kit.traffic import Mix, Traffic, Unexpected, mix_against
from tests.kit.waits import steady, wait_until

DEADLINE = 30.0  # any single wait of the script's own (start, stop, stats), and any client call

# The limits of the proxy this script starts: short, so that every timeout path runs
# often. STALL is how long the origin stalls and a client stops reading: longer than the
# read timeout and the response header timeout.
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


# --- the proxy under test ---


@dataclass
class Proxy:
    host: str
    port: int
    pids: list[int] = field(default_factory=list)  # its processes on this machine, if known
    child: services.Child | None = None  # when this script started it

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
    extra = [part for item in CHILD_LIMITS.items() for part in item]
    started = services.start_tinyproxy_py(workdir, sys.executable, extra)
    return Proxy("127.0.0.1", started.port, [started.pid], started.child)


def stop_child(proxy: Proxy) -> None:
    """SIGTERM the child by its PID (SIGKILL if it lingers), then show what it logged."""
    child = proxy.child
    if child is None:
        return
    child.stop()
    lines = child.log.read_text(errors="replace").splitlines()
    logged = [line for line in lines if "listening on" not in line]  # not the banner
    print(
        f"proxy PID {child.pid} stopped (exit status {child.process.returncode}); {len(logged)} log lines",
        end="",
    )
    print(":" if logged else "")
    for line in logged[-10:]:
        print(f"  {line}")


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


def proc_usage(pids: list[int]) -> procfs.Usage:
    """Open fds, threads and RSS of local processes, from /proc, summed."""
    return sum((procfs.usage(pid) for pid in pids), procfs.Usage(0, 0, 0))


def counts(pids: list[int]) -> tuple[int, int]:
    """Open fds and threads (RSS moves all the time: it has no part in steady)."""
    usage = proc_usage(pids)
    return usage.fds, usage.threads


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
        usage = proc_usage(proxy.pids)
        fds, threads, rss = usage.fds, usage.threads, usage.rss_kib
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
    """Nothing live but our own stats request (which the gauges here do not count).

    Idle handler threads count too: each ends a few seconds after its last connection,
    so every quiet sample holds the same one, the thread answering our stats request."""
    busy = ("clients", "tunnels", "requests_in_flight", "pool_open", "idle_handler_threads")
    return all(s.gauges.get(name, 0) == 0 for name in busy)


def quiet_sample(
    proxy: Proxy, started: float, traffic: Traffic, settle: float, resume: bool = True
) -> Sample:
    """Pause the traffic, wait until the proxy is idle and its counts are steady, sample."""
    if not traffic.pause(settle):
        print("  (exchanges still under way after the settle time)", flush=True)
    deadline = time.monotonic() + settle
    last = sample(proxy, started, traffic)

    def idle() -> bool:
        nonlocal last
        last = sample(proxy, started, traffic)
        return is_idle(last)

    if not is_idle(last) and not wait_until(idle, settle, 0.25):
        print(f"  (not idle after {settle:.0f} s: {last.gauges})", flush=True)
    # Our stats request's own socket and handler thread are gone a moment after it is
    # answered: wait until /proc gives the same figures for half a second.
    if proxy.pids:
        steady(lambda: counts(proxy.pids), max(0.0, deadline - time.monotonic()), 0.5)
        usage = proc_usage(proxy.pids)
        last.fds, last.threads, last.rss_kib = usage.fds, usage.threads, usage.rss_kib
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
    return Proxy(host, port, [pid] if pid is not None else procfs.listening_pids(port))


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
    ok = False
    with ExitStack() as stack:  # stops, in reverse order, all that was started
        try:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            proxy = external_proxy(args.proxy, args.pid) if args.proxy else start_child(workdir)
            stack.callback(stop_child, proxy)
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
            mix = stack.enter_context(mix_against((proxy.host, proxy.port), stall=STALL, timeout=DEADLINE))
            traffic = Traffic(mix, args.workers, args.pause)
            stack.callback(traffic.stop, DEADLINE)
            ok = report(soak(args, proxy, mix, traffic), traffic, args)
        except KeyboardInterrupt:
            print("interrupted: cleaning up", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
