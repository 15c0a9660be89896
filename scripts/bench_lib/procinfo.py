"""What a process costs, read from /proc: RSS, threads, open fds, CPU time, peak RSS.

Linux only. RSS comes from smaps_rollup, which walks the page tables: VmRSS in
/proc/PID/status is a per-CPU counter that can be a few hundred KiB off, too coarse for
"KiB per idle tunnel" or "growth under 1 MiB".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    threads: int
    fds: int

    def minus(self, other: Usage) -> Usage:
        return Usage(self.rss_kib - other.rss_kib, self.threads - other.threads, self.fds - other.fds)


def status_field(pid: int, name: str) -> int:
    """A numeric field of /proc/PID/status (kB for the Vm* ones)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return int(value.split()[0])
    raise KeyError(f"{name} is not in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    return _rollup(pid, "Rss", "VmRSS")


def anonymous_kib(pid: int) -> int:
    """The private part of RSS: heap, stacks, Python objects (not shared libraries)."""
    return _rollup(pid, "Anonymous", "RssAnon")


def _rollup(pid: int, name: str, fallback: str) -> int:
    path = Path(f"/proc/{pid}/smaps_rollup")
    if not path.exists():  # kernels before 4.14
        return status_field(pid, fallback)
    for line in path.read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} line in {path}")


def usage(pid: int) -> Usage:
    return Usage(rss_kib(pid), status_field(pid, "Threads"), len(os.listdir(f"/proc/{pid}/fd")))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process and its live descendants (--workers) have used."""
    return sum(_own_cpu_seconds(p) for p in [pid, *descendants(pid)])


def descendants(pid: int) -> list[int]:
    """Child processes, their children, and so on (from /proc/PID/task/*/children)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            listed = children.read_text().split()
        except FileNotFoundError:
            continue  # that thread ended meanwhile
        for child in map(int, listed):
            found += [child, *descendants(child)]
    return found


def _own_cpu_seconds(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0  # ended since it was listed
    # Fields after "(comm)": the 12th and 13th are utime and stime (fields 14 and 15 of stat(5)).
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> None:
    """Start a new peak-RSS period: VmHWM drops to the current RSS (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def settle(pid: int, timeout: float, quiet: float = 0.5) -> Usage:
    """The usage once threads and fds stop changing for `quiet` seconds (or at `timeout`).

    Handler threads end and FINs are processed a little after the client is done, so a
    single reading right away would count work still in flight.
    """
    deadline = time.monotonic() + timeout
    last = usage(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = usage(pid)
        if (now.threads, now.fds) == (last.threads, last.fds):
            return now
        last = now
    return last


class PeakSampler:
    """Samples a process's RSS from a thread while a block of load runs: `peak`, in KiB."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, rss_kib(self.pid))
        except (OSError, RuntimeError):
            pass  # the process ended; the caller notices on its own
