#!/usr/bin/env python3
"""Where a keep-alive request's CPU goes: microseconds per stage, at 1 and 50 connections.

Starts the bench's nginx origin and `python -m tinyproxy_py serve` (this checkout, or
--source DIR), drives keep-alive 100 B GETs with wrk, and meanwhile samples the proxy with
py-spy, sampling only the thread that holds the GIL (the Python work, which one process
does on one core at a time). The process's CPU per request is split as /proc says: user
time (the interpreter running our code) and kernel time (syscalls, thread switches).
Each sample goes to the stage named by its innermost frame that names one (STAGES), and
a stage's budget is its share of the samples times the user time per request (py-spy
drops samples, so its shares are used, not its absolute counts). The stages follow one
request: read and parse the head, policy and route, the pool lease, writing to the
origin, reading and parsing its response head, relaying the body to the client, the
access log and stats, giving the connection back. "other" is what no stage names (the
handler loop itself, thread bookkeeping); "kernel" is the kernel time. The same load on
scripts/floor.py's bare shape (no profile) gives the floor's user and kernel time.

  python3 scripts/budget.py [--connections 1,50] [--seconds 8] [--source DIR]

Needs nginx, wrk and py-spy (ptrace allowed). Loopback only; everything started is stopped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kit, via bench_lib
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lib

from bench_lib import profile, services
from bench_lib.procinfo import user_and_system_seconds
from bench_lib.wrk import WrkSpec
from bench_lib.wrk import run as run_wrk

# (stage, what a frame's "function (file:line)" may contain). A sample goes to the stage of
# its innermost frame that names one; several names in one frame: the first stage listed.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("parse request head", ("parse_request_head (", "(tinyproxy_py/wire/request.py")),
    ("parse response head", ("parse_response_head (", "_HeadReader.feed (")),
    ("access log and stats", ("record_access", "(tinyproxy_py/observe/", "ClientHandler._log (")),
    ("pool lease and release", ("(tinyproxy_py/origin/connections.py", "(tinyproxy_py/origin/pool.py")),
    ("policy and route", ("(tinyproxy_py/settings/", "ClientHandler._dispatch (", "_origin_headers (")),
    ("write request to origin", ("_send_request (", "_request_bytes (")),
    ("read response head", ("_read_head (tinyproxy_py/origin", "_recv_head_bytes (")),
    ("relay body to client", ("_relay (", "_stream_body (", "_client_head (")),
    ("read request head", ("ClientConnection.read_head (",)),
]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", default="1,50", help="wrk connections, one run each")
    parser.add_argument("--seconds", type=int, default=8, help="sampled seconds per run")
    parser.add_argument("--source", type=Path, default=services.REPO, help="the tinyproxy-py tree to run")
    parser.add_argument(
        "--py-spy", default=str(Path(sys.executable).with_name("py-spy")), help="py-spy executable"
    )
    return parser.parse_args(argv)


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # py-spy writes the root first
        for stage, names in STAGES:
            if any(name in frame for name in names):
                return stage
    return "other"


def measure(
    args: argparse.Namespace, connections: int, workdir: Path, origin: services.Origin
) -> dict[str, float]:
    """µs of CPU per request by stage and in the kernel, and the run's totals ("req/s", "µs")."""
    proxy = services.start_tinyproxy_py(workdir / f"py-{connections}", sys.executable, source=args.source)
    try:
        run_wrk(WrkSpec(origin.http_port, "/100b", proxy.port, seconds=1, connections=connections), workdir)
        out = workdir / f"spy-{connections}.txt"
        spy = profile.start(args.py_spy, proxy.pid, args.seconds, out, gil=True)
        user, kernel = user_and_system_seconds(proxy.pid)
        spec = WrkSpec(
            origin.http_port, "/100b", proxy.port, seconds=args.seconds + 1, connections=connections
        )
        result = run_wrk(spec, workdir)
        user_after, kernel_after = user_and_system_seconds(proxy.pid)
        profile.finish(spy, args.seconds)
    finally:
        proxy.child.stop()
    requests = max(result.requests, 1)
    user_us, kernel_us = (user_after - user) / requests * 1e6, (kernel_after - kernel) / requests * 1e6
    samples: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            samples[stage_of(stack.split(";"))] += int(count)
    total = sum(samples.values()) or 1
    budget = {stage: user_us * n / total for stage, n in samples.items()}
    return {**budget, "kernel": kernel_us, "req/s": result.rps, "µs": user_us + kernel_us}


def measure_bare(
    args: argparse.Namespace, connections: int, workdir: Path, origin: services.Origin
) -> dict[str, float]:
    """The same load on scripts/floor.py's bare shape: its user and kernel µs per request."""
    floor = str(Path(__file__).resolve().with_name("floor.py"))
    proxy = services.start_proxy(
        "bare",
        lambda _, port: [sys.executable, floor, "serve", "bare", str(port)],
        workdir / f"bare-{connections}",
    )
    try:
        run_wrk(WrkSpec(origin.http_port, "/100b", proxy.port, seconds=1, connections=connections), workdir)
        user, kernel = user_and_system_seconds(proxy.pid)
        spec = WrkSpec(origin.http_port, "/100b", proxy.port, seconds=args.seconds, connections=connections)
        result = run_wrk(spec, workdir)
        user_after, kernel_after = user_and_system_seconds(proxy.pid)
    finally:
        proxy.child.stop()
    requests = max(result.requests, 1)
    user_us, kernel_us = (user_after - user) / requests * 1e6, (kernel_after - kernel) / requests * 1e6
    return {"user": user_us, "kernel": kernel_us, "µs": user_us + kernel_us, "req/s": result.rps}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.connections.split(",")]
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinyproxy-py-budget-")))
        workdir.chmod(0o755)  # nginx's unprivileged workers must reach the files
        origin = stack.enter_context(services.nginx_origin(workdir / "origin"))
        runs = {n: measure(args, n, workdir, origin) for n in counts}
        bare = {n: measure_bare(args, n, workdir, origin) for n in counts}
    stages = [stage for stage, _ in STAGES] + ["other", "kernel"]
    print("| stage | " + " | ".join(f"{n} conn{'s' if n > 1 else ''}, µs" for n in counts) + " |")
    print("| --- |" + " ---: |" * len(counts))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(f"{runs[n].get(stage, 0.0):.0f}" for n in counts) + " |")
    print("| **CPU per request** | " + " | ".join(f"**{runs[n]['µs']:.0f}**" for n in counts) + " |")
    print("| req/s (while sampled) | " + " | ".join(f"{runs[n]['req/s']:,.0f}" for n in counts) + " |")
    for what in ("user", "kernel", "µs", "req/s"):
        cells = " | ".join(f"{bare[n][what]:,.0f}" for n in counts)
        print(f"| bare threaded shape: {'CPU per request' if what == 'µs' else what} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
