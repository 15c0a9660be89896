#!/usr/bin/env python3
"""Measure the TLS listener next to the clear one, in one run against one proxy process.

One `python3 -m tinyproxy_py serve --port P --tls-port Q` serves both listeners; a
throwaway trustme CA issues its certificate (ECDSA P-256, the client verifies it).

1. Bulk throughput: one CONNECT tunnel reads --mib MiB from a byte source (a child
   process), directly (no proxy, the reference), through the clear listener and through
   the TLS listener (this process decrypts the outer TLS), in a rotating order for
   --rounds rounds. Median MiB/s, the ratios, and CPU seconds per GiB of the proxy
   (from /proc/PID/stat) and of this client.
2. Tunnel churn: new TCP connection to the proxy (+ TLS handshake on the TLS listener,
   a full one: no session resumption), CONNECT to a local nginx, GET 100 bytes inside
   the tunnel in plain HTTP with `Connection: close`, read the body, close (not waiting
   for EOF: through the TLS listener that comes only after --tunnel-linger); in a loop for
   --seconds, with each --concurrency number of client processes (multiprocessing),
   clear and TLS alternated for --rounds rounds. Median tunnels/s, and the CPU
   milliseconds per tunnel of the proxy and of the clients.
3. Idle tunnels: --tunnels tunnels to a silent listener through the clear listener; the
   proxy's RSS (smaps_rollup), threads and fds; all closed, back to baseline; then the
   same through the TLS listener, and through it once more (whether the RSS the first
   TLS round left is reused or lost). KiB per idle tunnel for each and their difference,
   which is what the TLS client side costs.

Prints a Markdown table, each round's figures, the command line and the machine (CPUs,
load, Python, OpenSSL, the negotiated TLS version and cipher), then the proxy's error,
tunnel and handshake counters and anything it logged at warning or above.

Needs nginx on PATH (the churn's origin) and trustme (the project's test extra).
Loopback only (127.0.0.1), bounded loops, a deadline on every wait. It starts the proxy,
nginx, the byte source and the client processes itself and stops all of them by PID
before it exits, whatever happens. About 80 s with the defaults on 2 CPUs.
Usage: python3 scripts/bench_tls.py [--mib 512] [--rounds 3] [--seconds 5]
                                    [--concurrency 1,8] [--tunnels 500]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kit, the traffic kit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lib, measure_tunnels

from bench_lib import procinfo, services
from bench_lib.clients import get_request, read_exactly, read_head
from measure_tunnels import DEADLINE, Idle, MiB, byte_source, hold_idle, timed_read

from tests.kit.clients import connect_request, raw_exchange
from tests.kit.servers import free_port
from tests.kit.waits import wait_until

ORIGIN_PATH = "/100b"  # one of bench_lib.services.FILES
MODES = ("direct", "clear", "TLS")
TIMES, NONE = "\N{MULTIPLICATION SIGN}", "\N{EN DASH}"  # for the table


# --- tunnels through either listener ---


@dataclass(frozen=True)
class Listener:
    """One of the proxy's two listeners; `cafile` set: the TLS one, whose CA it is."""

    port: int
    cafile: str | None = None

    def client_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.cafile) if self.cafile else None


def open_tunnel(
    port: int, context: ssl.SSLContext | None, target_port: int, timeout: float = DEADLINE
) -> tuple[socket.socket, bytes]:
    """A CONNECT tunnel to 127.0.0.1:target_port through the listener on `port` (TLS to
    the proxy first when `context` is given), and the tunnel bytes read with the 200."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")  # takes over the fd
        sock.sendall(connect_request(f"127.0.0.1:{target_port}"))
        status, _, early = read_head(sock)
        if status != 200:
            raise ConnectionError(f"CONNECT answered {status}")
        return sock, early
    except BaseException:
        sock.close()
        raise


def opener(listener: Listener) -> Callable[[int], tuple[socket.socket, bytes]]:
    """open_tunnel through `listener`, with one client context for all its tunnels."""
    context = listener.client_context()
    return lambda target_port: open_tunnel(listener.port, context, target_port)


# --- 1. bulk throughput ---


@dataclass
class Bulk:
    mib_s: dict[str, list[float]] = field(default_factory=lambda: {mode: [] for mode in MODES})
    proxy_user: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODES, 0.0))
    proxy_system: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODES, 0.0))
    client_cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODES, 0.0))

    def median(self, mode: str) -> float:
        return statistics.median(self.mib_s[mode])


def bulk(proxy_pid: int, listeners: dict[str, Listener], mib: int, rounds: int) -> Bulk:
    """Each mode once a round, the order rotating so none always goes first."""
    total = mib * MiB
    openers: dict[str, Callable[[int], tuple[socket.socket, bytes]]] = {
        "direct": lambda port: (socket.create_connection(("127.0.0.1", port), timeout=DEADLINE), b""),
        **{mode: opener(listeners[mode]) for mode in ("clear", "TLS")},
    }
    result = Bulk()
    with byte_source(total, len(MODES) * rounds) as port:
        for round_ in range(rounds):
            for mode in MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]:
                user, system = procinfo.user_and_system_seconds(proxy_pid)
                client_before = time.process_time()
                result.mib_s[mode].append(timed_read(functools.partial(openers[mode], port), total))
                result.client_cpu[mode] += time.process_time() - client_before
                user_after, system_after = procinfo.user_and_system_seconds(proxy_pid)
                result.proxy_user[mode] += user_after - user
                result.proxy_system[mode] += system_after - system
    return result


# --- 2. tunnel churn (the task runs in a client process) ---


@dataclass(frozen=True)
class ChurnTask:
    proxy_port: int
    cafile: str | None
    origin_port: int
    start_at: float  # time.monotonic(): one clock for every process on Linux
    seconds: float


@dataclass(frozen=True)
class ChurnDone:
    done: int
    failed: int
    first_error: str
    cpu: float  # seconds of the client process(es)


def churn_task(task: ChurnTask) -> ChurnDone:
    """CONNECT + GET + close in a loop from start_at for `seconds` (or until 1000 failures)."""
    context = ssl.create_default_context(cafile=task.cafile) if task.cafile else None
    request = get_request(ORIGIN_PATH, task.origin_port, close=True)
    buf = memoryview(bytearray(4096))
    time.sleep(max(0.0, task.start_at - time.monotonic()))
    end = task.start_at + task.seconds
    done = failed = 0
    first_error = ""
    cpu = time.process_time()
    while time.monotonic() < end and failed < 1000:
        try:
            sock, early = open_tunnel(task.proxy_port, context, task.origin_port, timeout=10.0)
            with sock:
                if early:
                    raise ConnectionError(f"{len(early)} bytes before the request")
                sock.sendall(request)
                status, length, rest = read_head(sock)
                if status != 200 or length is None:
                    raise ConnectionError(f"GET answered {status}, Content-Length {length}")
                read_exactly(sock, length - len(rest), buf)
            # Closed once the body is in, not at the origin's EOF: the TLS listener passes
            # that on only when the client ends or after --tunnel-linger (docs/tls.md).
            done += 1
        except OSError as exc:  # ConnectionError, ssl.SSLError and timeouts are all OSErrors
            failed += 1
            first_error = first_error or repr(exc)
    return ChurnDone(done, failed, first_error, time.process_time() - cpu)


@dataclass
class Churn:
    """Per (listener, concurrency), each round's tunnels/s and CPU ms per tunnel."""

    rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    cpu_ms: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # the proxy's
    client_ms: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # all clients'
    failed: dict[tuple[str, int], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def median(self, key: tuple[str, int]) -> float:
        return statistics.median(self.rates[key])


def churn_round(
    pool: ProcessPoolExecutor,
    proxy_pid: int,
    listener: Listener,
    origin_port: int,
    workers: int,
    seconds: float,
) -> tuple[ChurnDone, float]:
    """One timed run of `workers` client processes: their sums, and the proxy's CPU seconds."""
    task = ChurnTask(listener.port, listener.cafile, origin_port, time.monotonic() + 0.3, seconds)
    futures = [pool.submit(churn_task, task) for _ in range(workers)]
    time.sleep(max(0.0, task.start_at - time.monotonic()))
    cpu_before = procinfo.cpu_seconds(proxy_pid)
    results = [future.result(timeout=seconds + 2 * DEADLINE) for future in futures]
    cpu = procinfo.cpu_seconds(proxy_pid) - cpu_before
    errors = "; ".join(sorted({r.first_error for r in results if r.first_error}))
    done, failed = sum(r.done for r in results), sum(r.failed for r in results)
    return ChurnDone(done, failed, errors, sum(r.cpu for r in results)), cpu


def churn(
    pool: ProcessPoolExecutor,
    proxy_pid: int,
    listeners: dict[str, Listener],
    origin_port: int,
    concurrency: list[int],
    seconds: float,
    rounds: int,
) -> Churn:
    result = Churn()
    for workers in concurrency:
        for round_ in range(rounds):
            for name in ("clear", "TLS") if round_ % 2 == 0 else ("TLS", "clear"):
                done, cpu = churn_round(pool, proxy_pid, listeners[name], origin_port, workers, seconds)
                key = (name, workers)
                result.rates.setdefault(key, []).append(done.done / seconds)
                result.cpu_ms.setdefault(key, []).append(1000 * cpu / max(1, done.done))
                result.client_ms.setdefault(key, []).append(1000 * done.cpu / max(1, done.done))
                result.failed[key] = result.failed.get(key, 0) + done.failed
                if done.first_error:
                    result.errors.append(f"{name}, {workers} clients: {done.first_error}")
    return result


def start_workers(pool: ProcessPoolExecutor, count: int) -> None:
    """Spawn the pool's processes now, so no measurement pays for interpreter start-up."""
    for future in [pool.submit(time.sleep, 0.3) for _ in range(count)]:
        future.result(timeout=DEADLINE)


# --- 3. idle tunnels ---


def idle(proxy_pid: int, listener: Listener, count: int) -> Idle:
    """Open `count` tunnels to a silent listener, read the proxy, close them, read it again."""
    return hold_idle(proxy_pid, opener(listener), count)


# --- the report ---


def num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def machine(load: float) -> list[str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=services.REPO, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        revision = "unknown"
    return [
        f"- CPUs: {os.cpu_count()} ({model or 'model unknown'}); {platform.platform()}; "
        f"load average {load:.2f} at the start (anything else running shares the CPUs)",
        f"- Python {platform.python_version()} ({sys.executable.rpartition(os.sep)[2]}), "
        f"{ssl.OPENSSL_VERSION}",
        f"- tinyproxy-py at {revision}; date {time.strftime('%Y-%m-%d %H:%M %Z')}",
    ]


def row(*cells: object) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def compare(label: str, clear: float, tls: float, form: Callable[[float], str], direct: str = NONE) -> str:
    """A row with the clear and the TLS figure and their ratio."""
    return row(label, direct, form(clear), form(tls), f"{tls / clear:.2f}" if clear else NONE)


def table(args: argparse.Namespace, bulk_: Bulk, churn_: Churn, idle_: dict[str, Idle]) -> list[str]:
    direct, clear, tls = (bulk_.median(mode) for mode in MODES)
    gib = args.rounds * args.mib / 1024  # per mode, over all rounds
    user = {mode: bulk_.proxy_user[mode] / gib for mode in MODES}
    system = {mode: bulk_.proxy_system[mode] / gib for mode in MODES}
    proxy = {mode: user[mode] + system[mode] for mode in MODES}
    client = {mode: bulk_.client_cpu[mode] / gib for mode in MODES}
    rows = [
        row("measurement", "direct", "clear listener", "TLS listener", "TLS / clear"),
        row("---", "---:", "---:", "---:", "---:"),
        compare(
            f"CONNECT bulk, 1 tunnel, {args.mib} MiB, MiB/s", clear, tls,
            lambda v: f"{num(v)} ({v / direct:.2f}{TIMES} direct)", num(direct),
        ),
        compare("proxy CPU s per GiB (bulk)", proxy["clear"], proxy["TLS"], "{:.2f}".format),
        compare("... of which in the kernel (system time)", system["clear"], system["TLS"], "{:.2f}".format),
        compare(
            "client CPU s per GiB (bulk; TLS: decrypting)", client["clear"], client["TLS"],
            "{:.2f}".format, f"{client['direct']:.2f}",
        ),
    ]  # fmt: skip
    for workers in args.concurrency:
        clients = f"{workers} client process{'es' if workers > 1 else ''}"
        clear_, tls_ = ("clear", workers), ("TLS", workers)
        failed = churn_.failed[clear_] + churn_.failed[tls_]
        label = f"CONNECT + GET {ORIGIN_PATH.lstrip('/')} + close, {clients}, tunnels/s"
        rows += [
            compare(label + (f" ({failed} failed)" if failed else ""),
                    churn_.median(clear_), churn_.median(tls_), num),
            compare(f"proxy CPU ms per tunnel, {clients}", statistics.median(churn_.cpu_ms[clear_]),
                    statistics.median(churn_.cpu_ms[tls_]), "{:.2f}".format),
            compare(f"client CPU ms per tunnel, {clients}", statistics.median(churn_.client_ms[clear_]),
                    statistics.median(churn_.client_ms[tls_]), "{:.2f}".format),
        ]  # fmt: skip
    n = args.tunnels
    kib = {name: i.per_tunnel_kib(n) for name, i in idle_.items()}
    fds = {name: (i.loaded - i.before).fds / n for name, i in idle_.items()}
    rows += [
        compare(f"idle tunnels ({n}): proxy RSS KiB per tunnel", kib["clear"], kib["TLS"], "{:.1f}".format),
        compare(f"idle tunnels ({n}): proxy fds per tunnel", fds["clear"], fds["TLS"], "{:.2f}".format),
        row(f"idle tunnels ({n}): what TLS adds per tunnel", NONE, NONE,
            f"{kib['TLS'] - kib['clear']:+.1f} KiB", NONE),
    ]  # fmt: skip
    return rows


def spread(args: argparse.Namespace, bulk_: Bulk, churn_: Churn) -> list[str]:
    """Every round's figure, in the order they ran: how far apart the rounds were."""

    def figures(values: list[float]) -> str:
        return ", ".join(f"{v:,.0f}" for v in values)

    lines = ["Rounds, bulk MiB/s: " + "; ".join(f"{m} {figures(bulk_.mib_s[m])}" for m in MODES)]
    for workers in args.concurrency:
        lines.append(
            f"Rounds, tunnels/s with {workers} client{'s' if workers > 1 else ''}: "
            + "; ".join(f"{name} {figures(churn_.rates[(name, workers)])}" for name in ("clear", "TLS"))
        )
    return lines


def idle_details(idle_: dict[str, Idle], count: int) -> list[str]:
    """Before, with `count` open, closed again: what "per tunnel" was worked out from."""
    rows = [
        row("idle tunnels via", "opened in", f"RSS MiB: before / {count} open / closed again",
            "threads", "fds", "back to baseline"),
        row("---", "---:", "---", "---", "---", "---"),
    ]  # fmt: skip
    for name, i in idle_.items():
        rss = " / ".join(f"{u.rss_kib / 1024:.1f}" for u in (i.before, i.loaded, i.after))
        left = (i.after - i.before).rss_kib
        rows.append(
            row(
                name,
                f"{i.opened_s:.2f} s",
                f"{rss} ({left:+,} KiB left)",
                " / ".join(str(u.threads) for u in (i.before, i.loaded, i.after)),
                " / ".join(str(u.fds) for u in (i.before, i.loaded, i.after)),
                "fds and threads" if i.fds_back and i.threads_back else "**no**",
            )
        )
    return rows


def proxy_counters(port: int) -> dict[str, int]:
    """The proxy's error, tunnel-close and TLS handshake counters, from its /json page."""
    answer = raw_exchange(
        ("127.0.0.1", port), b"GET /json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    counters: dict[str, int] = json.loads(answer.partition(b"\r\n\r\n")[2])["counters"]
    wanted = ("errors.", "tls_handshakes.", "tunnels_closed.")
    return {k: v for k, v in sorted(counters.items()) if k.startswith(wanted)}


# --- main ---


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="MiB per bulk download")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (median)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each churn run")
    parser.add_argument("--concurrency", default="1,8", help="client processes of the churn runs")
    parser.add_argument("--tunnels", type=int, default=500, help="idle tunnels to open")
    args = parser.parse_args()
    try:
        args.concurrency = [int(n) for n in args.concurrency.split(",")]
    except ValueError:
        parser.error("--concurrency: comma-separated numbers, e.g. 1,8")
    bounded = (
        1 <= args.mib <= 16 * 1024
        and 1 <= args.rounds <= 20
        and 0.5 <= args.seconds <= 60
        and all(1 <= n <= 64 for n in args.concurrency)
        and 1 <= args.tunnels <= 5000
    )
    if not bounded:
        parser.error(
            "keep it bounded: mib 1-16384, rounds 1-20, seconds 0.5-60, concurrency 1-64, tunnels 1-5000"
        )
    return args


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(CA, certificate chain, key) for 127.0.0.1, from a throwaway trustme CA."""
    import trustme  # the project's test extra

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    with paths[1].open("wb") as out:
        for blob in leaf.cert_chain_pems:
            out.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(paths[2]))
    return paths


def handshake(listener: Listener) -> str:
    """The TLS version and cipher the TLS listener negotiates; "" while it does not answer.
    (A bare connect, as services.accepts does, would count as a failed handshake.)"""
    context = listener.client_context()
    assert context is not None
    try:
        with (
            socket.create_connection(("127.0.0.1", listener.port), timeout=5.0) as sock,
            context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
        ):
            return f"{tls.version()}, {(tls.cipher() or ('?',))[0]}"
    except OSError:
        return ""


@contextlib.contextmanager
def proxy_with_tls(workdir: Path, max_tunnels: int) -> Iterator[tuple[services.Proxy, dict[str, Listener]]]:
    """The proxy serving a clear and a TLS listener; stopped (by PID) on the way out."""
    cafile, cert, key = make_certificate(workdir)
    tls_port = free_port()
    extra = ["--tls-port", str(tls_port), "--tls-cert", str(cert), "--tls-key", str(key),
             "--max-tunnels", str(max_tunnels)]  # fmt: skip
    proxy = services.start_tinyproxy_py(workdir / "proxy", sys.executable, extra)
    try:
        listeners = {"clear": Listener(proxy.port), "TLS": Listener(tls_port, str(cafile))}
        if not wait_until(lambda: bool(handshake(listeners["TLS"])), DEADLINE, 0.05):
            raise RuntimeError(f"the TLS listener did not accept on {tls_port}")
        yield proxy, listeners
    finally:
        proxy.child.stop()


def main() -> int:
    args = parse_args()
    if not shutil.which("nginx"):
        print("needs nginx for the churn's origin: apt-get install -y nginx", file=sys.stderr)
        return 2
    services.raise_fd_limit(4 * args.tunnels + 256)
    load = os.getloadavg()[0]
    command = shlex.join(["python3", "scripts/bench_tls.py", *sys.argv[1:]])
    spawn = multiprocessing.get_context("spawn")  # clean children: no threads or sockets of ours
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tls-")))
        workdir.chmod(0o755)  # nginx's unprivileged workers must reach the files
        origin = stack.enter_context(services.nginx_origin(workdir / "origin"))
        pool = stack.enter_context(ProcessPoolExecutor(max(args.concurrency), mp_context=spawn))
        start_workers(pool, max(args.concurrency))
        proxy, listeners = stack.enter_context(proxy_with_tls(workdir, args.tunnels + 500))
        print(f"proxy pid {proxy.pid}: clear 127.0.0.1:{proxy.port}, TLS 127.0.0.1:{listeners['TLS'].port}")
        negotiated = handshake(listeners["TLS"])
        started = procinfo.settle(proxy.pid, DEADLINE)
        print("1. bulk throughput ...", flush=True)
        bulk_ = bulk(proxy.pid, listeners, args.mib, args.rounds)
        print("2. tunnel churn ...", flush=True)
        churn_ = churn(
            pool, proxy.pid, listeners, origin.http_port, args.concurrency, args.seconds, args.rounds
        )
        print("3. idle tunnels ...", flush=True)
        idle_ = {name: idle(proxy.pid, listeners[name], args.tunnels) for name in ("clear", "TLS")}
        idle_["TLS again"] = idle(proxy.pid, listeners["TLS"], args.tunnels)  # RSS kept: reused or lost?
        ended = procinfo.settle(proxy.pid, DEADLINE)
        counters = proxy_counters(proxy.port)
        log = "\n".join(
            line for line in proxy.child.log_tail(6000).splitlines() if " listening on " not in line
        ).strip()

    print()
    print("\n".join(table(args, bulk_, churn_, idle_)))
    print()
    print("\n".join(spread(args, bulk_, churn_)))
    print()
    print("\n".join(idle_details(idle_, args.tunnels)))
    print()
    print(
        "TLS again: the same tunnels once more. RSS left after a round that the next one does not"
        " add to again is the allocator keeping freed memory for reuse, not a leak."
    )
    print()
    print(f"Command: `{command}` (medians of {args.rounds} rounds; churn runs {args.seconds:g} s each)")
    print()
    print("\n".join(machine(load)))
    print(f"- TLS listener: {negotiated}, ECDSA P-256 certificate (trustme); full handshakes")
    print()
    print(
        f"Proxy at the start / the end: RSS {started.rss_kib / 1024:.1f} / {ended.rss_kib / 1024:.1f} MiB, "
        f"threads {started.threads} / {ended.threads}, fds {started.fds} / {ended.fds}"
    )
    print("Proxy counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    for error in churn_.errors:
        print(f"churn error: {error}")
    print("Proxy log (warning and above): " + (f"\n```\n{log}\n```" if log else "empty"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
