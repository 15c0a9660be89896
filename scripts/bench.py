#!/usr/bin/env python3
"""Benchmark tinyproxy-py against a direct connection and its peers, on loopback (issues 9, 17, 26).

Starts an nginx origin (100 B, 16 KiB, 1 MiB and 256 MiB files over HTTP and HTTPS,
from a temporary prefix), then runs the same scenarios directly, through tinyproxy-py
(and its --workers 2 mode, when it has one) and through each peer a user might pick
instead: tinyproxy (C), proxy.py and pproxy, and through the bare threaded shape
(scripts/floor.py's least thread-per-connection proxy, so that "ours over bare" is
measured in the same run, not remembered). It prints two Markdown tables, the detail
table (every figure, ratios against direct, a verdict for each target) and the
comparison table (peers side by side, each cell "value (ratio x)", footnotes):

  a. keep-alive GETs with wrk (absolute-form via a Lua script): req/s, p50/p99; 1 MiB: MiB/s
  b. a new client connection per request (wrk, Connection: close): req/s
  c. CONNECT bulk download, 1 and 8 streams: MiB/s, and the proxy's peak RSS
  d. CONNECT + small GET + close, plain and TLS: tunnels/s
  e. idle tunnels held: RSS, threads and fds per tunnel; back to baseline after close
  f. abrupt client disconnects: fds and threads back to baseline
  g. a slow reader stalls a 256 MiB download (tunnel and plain): the proxy's RSS growth

a and b run at each of --connections (default 1, 8 and 50 wrk connections).

Needs: apt-get install -y nginx wrk tinyproxy, and the proxy's own dependencies for
--python (default: this interpreter). Every peer is optional: one that is absent is
skipped with a note. proxy.py and pproxy live in a virtual environment of their own,
never the project's (--peers-venv, default ~/.cache/tinyproxy-py-bench/peers); to make
it and install them, then run the comparison:

  python3 scripts/bench.py --install-peers --only abcd

(it runs `python3 -m venv DIR && DIR/bin/python -m pip install --upgrade proxy.py pproxy`
and then the bench). Resource scenarios (e-g) leave out peers that serve from several
processes (proxy.py): one process's counts would miss the others.

Everything runs on 127.0.0.1 with ephemeral ports; every loop is bounded; everything
started is stopped by PID (and its process group). About 20 minutes with every peer,
after waiting (up to 15) for the load average to drop below 0.7; --quick is a smoke
run of a few minutes.

--before DIR adds another source tree of tinyproxy-py (e.g. main, unpacked with
`git archive HEAD | tar -x -C DIR`) as the subject "tinyproxy-py (before)", run next to
this checkout in every scenario, with an after/before column in the table.

Usage: python3 scripts/bench.py [--quick] [--only abcdefg] [--connections 1,8,50]
       [--peers tinyproxy,proxy.py,pproxy] [--peers-venv DIR] [--install-peers]
       [--table both|compare|detail] [--before DIR] [--json FILE] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kit, the traffic kit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lib

from bench_lib import peers, procinfo, profile, report, scenarios, services
from bench_lib.clients import BulkSpec, ChurnSpec, Endpoint, bulk_worker, churn_worker
from bench_lib.scenarios import Context, Settings, Subject
from bench_lib.wrk import WrkSpec
from bench_lib.wrk import run as run_wrk

RATE = {"a": scenarios.keepalive, "b": scenarios.new_connections, "c": scenarios.bulk, "d": scenarios.churn}
RESOURCE = {"e": scenarios.idle_tunnels, "f": scenarios.aborts, "g": scenarios.slow_reader}
PROFILE_SECONDS = 10
# Drives load at the proxy (port) while py-spy records it.
Load = Callable[[Context, int, "subprocess.Popen[bytes]"], None]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one short round, fewer tunnels: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds of a-d, the median is reported (default 3)")
    parser.add_argument("--only", default="abcdefg", help="scenarios to run, e.g. 'ac' (default: all)")
    parser.add_argument("--wait-load", type=float, default=None,
                        help="first wait until the 1-minute load average is below this "
                             "(default 0.7, 0 with --quick; 0: do not wait)")  # fmt: skip
    parser.add_argument("--wait-max", type=float, default=900, help="give up waiting after this many seconds")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs tinyproxy-py")
    parser.add_argument(
        "--connections", default="1,8,50", help="wrk connections for a and b (default 1,8,50)"
    )
    parser.add_argument("--peers", default=",".join(peers.NAMES),
                        help="peers to compare with, if installed (default %(default)s)")  # fmt: skip
    parser.add_argument("--no-tinyproxy", action="store_true", help="leave tinyproxy out of --peers")
    parser.add_argument("--peers-venv", type=Path, default=peers.DEFAULT_VENV, metavar="DIR",
                        help="the venv that holds proxy.py and pproxy (default %(default)s)")  # fmt: skip
    parser.add_argument("--install-peers", action="store_true",
                        help="first make --peers-venv, pip-install proxy.py and pproxy there")  # fmt: skip
    parser.add_argument("--table", choices=("both", "compare", "detail"), default="both",
                        help="which table to print (default both)")  # fmt: skip
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help=f"also run the tinyproxy-py tree in DIR as '{report.PY_BEFORE}'")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every measured value to this file")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="afterwards, record py-spy profiles of tinyproxy-py into DIR")  # fmt: skip
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy executable")
    args = parser.parse_args(argv)
    if set(args.only) - set("abcdefg") or not 1 <= (args.rounds or 1) <= 9:
        parser.error("--only takes letters a-g; --rounds is 1 to 9")
    try:
        args.connections = tuple(int(n) for n in args.connections.split(","))
    except ValueError:
        args.connections = ()
    if not args.connections or not all(1 <= n <= 1000 for n in args.connections):
        parser.error("--connections takes numbers from 1 to 1000, e.g. 8,50")
    args.peers = [
        name for name in args.peers.split(",") if name and not (args.no_tinyproxy and name == report.C)
    ]
    if set(args.peers) - set(peers.NAMES):
        parser.error(f"--peers takes names from {','.join(peers.NAMES)}")
    args.peers_venv = args.peers_venv.expanduser().resolve()
    if args.before is not None:
        args.before = args.before.resolve()  # the child's cwd and PYTHONPATH
        if not (args.before / "tinyproxy_py" / "__main__.py").is_file():
            parser.error(f"--before: {args.before} holds no tinyproxy_py/__main__.py")
    return args


def settings_for(args: argparse.Namespace) -> Settings:
    settings = replace(scenarios.QUICK if args.quick else Settings(), connections=args.connections)
    return replace(settings, rounds=args.rounds) if args.rounds else settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("nginx", "wrk") if not shutil.which(tool)]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install -y nginx wrk tinyproxy", file=sys.stderr)
        return 2
    if args.profile and not shutil.which(args.py_spy):
        print(f"--profile needs py-spy ({args.py_spy} not found): pip install py-spy", file=sys.stderr)
        return 2
    settings = settings_for(args)
    services.raise_fd_limit(4 * settings.idle_tunnels + 1024)
    signal.signal(signal.SIGTERM, _interrupt)  # so every `finally` below runs on SIGTERM too
    if args.install_peers:
        try:
            peers.install(args.peers_venv)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"--install-peers failed: {exc}", file=sys.stderr)
            return 2
    found, skipped = peers.find(args.peers, args.peers_venv)
    for note in skipped:
        print(note, file=sys.stderr)
    threshold = args.wait_load if args.wait_load is not None else (0.0 if args.quick else 0.7)
    load_before = wait_for_quiet(threshold, args.wait_max)
    started = time.monotonic()
    record, subjects = measure(args, settings, found)
    for note in skipped:
        record.note(note)
    load_after = loadavg()
    leftover = [pid for pid in procinfo.descendants(os.getpid()) if not _is_resource_tracker(pid)]
    if leftover:
        record.note(f"processes still running after cleanup: {leftover}")
    tables = Tables(
        args.table, {f.peer.name: f.label for f in found}, {f.peer.name: f.peer.caveat for f in found}
    )
    print(summary(record, subjects, settings, (load_before, load_after), time.monotonic() - started, tables))
    if args.json:
        dump(args.json, record, subjects, settings, (load_before, load_after), tables.labels)
    return 0


def _is_resource_tracker(pid: int) -> bool:
    """multiprocessing's helper for the process pool: it exits when we do."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return True  # gone already


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(threshold: float, limit: float) -> float:
    """Poll until the 1-minute load average is below `threshold`, for at most `limit` s."""
    deadline = time.monotonic() + limit
    next_report = 0.0
    while threshold > 0 and (load := loadavg()) >= threshold and time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            print(f"waiting for the load average ({load:.2f}) to drop below {threshold:g}", file=sys.stderr)
            next_report = time.monotonic() + 60
        time.sleep(5)
    return loadavg()


def measure(
    args: argparse.Namespace, settings: Settings, found: list[peers.Found]
) -> tuple[scenarios.Record, list[str]]:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinyproxy-bench-")))
        workdir.chmod(0o755)  # our own directory: nginx's unprivileged workers must reach the files
        origin = stack.enter_context(services.nginx_origin(workdir / "origin"))
        spawn = multiprocessing.get_context("spawn")  # a clean child: no threads or sockets of ours
        executor = stack.enter_context(ProcessPoolExecutor(settings.churn_processes, mp_context=spawn))
        _start_workers(executor, settings.churn_processes)
        ctx = Context(settings, origin, executor, workdir)
        subjects = start_subjects(args, workdir, stack, found, ctx.record)
        if args.before:
            ctx.record.note(f"{report.PY}: {services.REPO}; {report.PY_BEFORE}: {args.before}")
        for subject in subjects[1:]:
            _warm(ctx, subject)
        run_rates(ctx, subjects, args.only)
        run_resources(ctx, subjects, args.only)
        if args.profile:
            try:
                run_profiles(ctx, subjects[1], args.profile, args.py_spy)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                ctx.record.note(f"profiling failed, the table stands: {exc}")  # e.g. ptrace not allowed
        return ctx.record, [s.name for s in subjects]


def _start_workers(executor: ProcessPoolExecutor, count: int) -> None:
    """Spawn the pool's processes now, so no measurement pays for interpreter start-up."""
    for future in [executor.submit(time.sleep, 0.3) for _ in range(count)]:
        future.result(timeout=60)


def start_subjects(
    args: argparse.Namespace,
    workdir: Path,
    stack: contextlib.ExitStack,
    found: list[peers.Found],
    record: scenarios.Record,
) -> list[Subject]:
    """direct, tinyproxy-py, [its --before tree], [... --workers 2], [each peer]: the long-lived ones.

    A peer that does not start is left out with a note; tinyproxy-py not starting ends the run.
    """
    numbers = itertools.count()

    def fresh_py(source: Path = services.REPO, name: str = "") -> services.Proxy:
        return services.start_tinyproxy_py(workdir / f"py-{next(numbers)}", args.python, (), name, source)

    def fresh_peer(peer: peers.Found) -> services.Proxy:
        return peer.start(workdir / f"{peer.peer.program}-{next(numbers)}")

    subjects = [Subject(report.DIRECT), _started(stack, report.PY, fresh_py)]
    if args.before:
        subjects.append(
            _started(stack, report.PY_BEFORE, functools.partial(fresh_py, args.before, report.PY_BEFORE))
        )
    bare = services.start_proxy(report.BARE, _bare_argv, workdir / "bare")
    stack.callback(bare.child.stop)
    subjects.append(Subject(report.BARE, bare))  # no fresh process: e-g measure ours and peers
    if services.tinyproxy_py_has_workers(args.python):
        proxy = services.start_tinyproxy_py(workdir / "py-w2", args.python, ["--workers", "2"], report.PY2)
        stack.callback(proxy.child.stop)
        subjects.append(Subject(report.PY2, proxy, one_process=False))
    for peer in found:
        try:
            subjects.append(
                _started(stack, peer.peer.name, functools.partial(fresh_peer, peer), peer.peer.one_process)
            )
        except RuntimeError as exc:  # it exited, or never listened (and was stopped)
            record.note(f"{peer.label} left out: it did not start: {' '.join(str(exc).split())[-600:]}")
            _progress(f"{peer.label} did not start: {exc}")
    return subjects


def _bare_argv(workdir: Path, port: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve().parent / "floor.py"), "serve", "bare", str(port)]


def _started(
    stack: contextlib.ExitStack, name: str, start: Callable[[], services.Proxy], one_process: bool = True
) -> Subject:
    proxy = start()
    stack.callback(proxy.child.stop)
    return Subject(name, proxy, start, one_process)


def _warm(ctx: Context, subject: Subject) -> None:
    """A short wrk run first: imports, the pool and the hub exist before anything is timed."""
    port = subject.endpoint(ctx.origin).proxy_port
    run_wrk(WrkSpec(ctx.origin.http_port, "/100b", port, seconds=1), ctx.workdir)


def run_rates(ctx: Context, subjects: list[Subject], only: str) -> None:
    """Rounds of a-d; within a round each scenario runs for every subject back to back.

    A subject that fails a measurement gets a footnote and the next one goes on.
    """
    for number in range(ctx.settings.rounds):
        for letter in (x for x in "abcd" if x in only):
            for subject in subjects:
                _progress(f"round {number + 1}/{ctx.settings.rounds}: {letter}. {subject.name}")
                with ctx.record.attempt(subject.name, letter):
                    if letter == "a" and subject.name == report.PY2:
                        scenarios.keepalive(ctx, subject, only_small=True)  # the table has no 1 MiB row
                    else:
                        RATE[letter](ctx, subject)


def run_resources(ctx: Context, subjects: list[Subject], only: str) -> None:
    """e-g for each subject that can start a fresh process and is one process."""
    for letter in (x for x in "efg" if x in only):
        for subject in (s for s in subjects if s.start is not None):
            if not subject.one_process:
                ctx.record.footnote(subject.name, letter, scenarios.MULTI_PROCESS)
                continue
            _progress(f"{letter}. {subject.name} (a fresh process)")
            with ctx.record.attempt(subject.name, letter):
                RESOURCE[letter](ctx, subject)


def _keepalive_load(ctx: Context, port: int, spy: subprocess.Popen[bytes]) -> None:
    run_wrk(WrkSpec(ctx.origin.http_port, "/100b", port, seconds=PROFILE_SECONDS + 1), ctx.workdir)


def _new_connection_load(ctx: Context, port: int, spy: subprocess.Popen[bytes]) -> None:
    run_wrk(WrkSpec(ctx.origin.http_port, "/100b", port, True, PROFILE_SECONDS + 1), ctx.workdir)


def _bulk_load(ctx: Context, port: int, spy: subprocess.Popen[bytes]) -> None:
    """1 GiB downloads through one tunnel at a time until py-spy is done (at most 100)."""
    spec = BulkSpec(Endpoint(ctx.origin.http_port, port), "/256m", 1, 4)
    for _ in range(100):
        ctx.executor.submit(bulk_worker, spec).result(timeout=600)
        if spy.poll() is not None:
            return


def _churn_load(ctx: Context, port: int, spy: subprocess.Popen[bytes]) -> None:
    spec = ChurnSpec(Endpoint(ctx.origin.http_port, port), ctx.origin.http_port, None, 4, PROFILE_SECONDS + 1)
    futures = [ctx.executor.submit(churn_worker, spec) for _ in range(ctx.settings.churn_processes)]
    for future in futures:
        future.result(timeout=PROFILE_SECONDS + 120)


# (name, py-spy options, summary focus, load). The HTTP paths are bound by the GIL, so
# their profiles follow the GIL holder. The hub is one thread that mostly sits in
# syscalls, which release the GIL, so its profile follows that thread with C frames.
PROFILES: tuple[tuple[str, dict[str, bool], str, Load], ...] = (
    ("keepalive", {"gil": True}, "", _keepalive_load),
    ("keepalive-native", {"gil": True, "native": True}, "", _keepalive_load),
    ("new-connection", {"gil": True}, "", _new_connection_load),
    ("tunnel-bulk-native", {"native": True}, "TunnelHub._run", _bulk_load),
    ("tunnel-churn", {"gil": True}, "", _churn_load),
)


def run_profiles(ctx: Context, subject: Subject, outdir: Path, py_spy: str) -> None:
    """py-spy on tinyproxy-py under each kind of load, each summarised into NAME.top."""
    assert subject.proxy is not None
    outdir.mkdir(parents=True, exist_ok=True)
    for name, options, focus, load in PROFILES:
        _progress(f"profile: {name}")
        out = outdir / f"{name}.txt"
        spy = profile.start(py_spy, subject.proxy.pid, PROFILE_SECONDS, out, **options)
        load(ctx, subject.proxy.port, spy)
        profile.finish(spy, PROFILE_SECONDS)
        text = profile.summarize(out, focus)
        (outdir / f"{name}.top").write_text(text + "\n")
        print(text, file=sys.stderr)


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Tables:
    which: str  # both, compare or detail
    labels: dict[str, str]  # a peer's column header, with its version
    caveats: dict[str, str]  # a footnote to a peer's column


def summary(
    record: scenarios.Record,
    subjects: list[str],
    settings: Settings,
    loads: tuple[float, float],
    seconds: float,
    tables: Tables,
) -> str:
    lines = [
        f"tinyproxy-py bench, {time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} CPUs shared by "
        f"load generator, origin and proxy; Python {platform.python_version()}, {platform.release()}",
        f"load average (1 min) {loads[0]:.2f} before, {loads[1]:.2f} after; {seconds:.0f} s; "
        f"median of {settings.rounds} round(s) for a-d",
        f"settings: {json.dumps(asdict(settings))}",
    ]
    if tables.which != "compare":
        lines += ["", *_detail(record, subjects, settings)]
    if tables.which != "detail":
        compare = report.render_compare(record, subjects, settings.connections, tables.labels, tables.caveats)
        lines += ["", compare]
    if record.notes:
        lines += ["", "notes:"] + [f"- {note}" for note in record.notes]
    return "\n".join(lines)


def _detail(record: scenarios.Record, subjects: list[str], settings: Settings) -> list[str]:
    """The detail table, the verdicts missed, and every footnote (the table has no markers)."""
    verdicts = report.verdicts(record, subjects, settings.connections)
    met = [v for v in verdicts if v[1] is not None]
    lines = [report.render(record, subjects, settings.aborts, settings.connections), ""]
    lines.append(f"targets met: {sum(1 for v in met if v[1])} of {len(met)} judged")
    lines += [f"- {label}: {detail}" for label, ok, detail in verdicts if ok is False]
    footnotes = [
        f"- {name}, {scope}: {text}" for name, f in record.footnotes.items() for scope, text in f.items()
    ]
    return lines + (["", "not measured, or measured with a caveat:", *footnotes] if footnotes else [])


def dump(
    path: Path,
    record: scenarios.Record,
    subjects: list[str],
    settings: Settings,
    loads: tuple[float, float],
    labels: dict[str, str],
) -> None:
    data = {
        "settings": asdict(settings),
        "subjects": subjects,
        "labels": labels,
        "loadavg": loads,
        "values": record.values,
        "footnotes": record.footnotes,
        "notes": record.notes,
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
