"""What a process costs beyond the kit's /proc readings (tests/kit/procfs.py): the private
part of RSS, CPU time over a process tree, peak RSS while load runs, settled counts.

Linux only.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

from tests.kit.procfs import Usage, rollup_field, rss_kib, usage
from tests.kit.waits import steady


def anonymous_kib(pid: int) -> int:
    """The private part of RSS: heap, stacks, Python objects (not shared libraries)."""
    return rollup_field(pid, "Anonymous", "RssAnon")


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


def group_members(pgid: int, besides: int = 0) -> list[int]:
    """The processes in process group `pgid` (other than `besides`), from /proc/*/stat."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended since it was listed
        pid = int(stat.parent.name)
        if int(fields[2]) == pgid and pid != besides:  # state, ppid, pgrp, ...
            found.append(pid)
    return found


def user_and_system_seconds(pid: int) -> tuple[float, float]:
    """CPU time of one process, in user space (Python's interpreter) and in the kernel."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0, 0.0  # ended since it was listed
    # Fields after "(comm)": the 12th and 13th are utime and stime (fields 14 and 15 of stat(5)).
    fields = text.rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _own_cpu_seconds(pid: int) -> float:
    return sum(user_and_system_seconds(pid))


def reset_peak(pid: int) -> None:
    """Start a new peak-RSS period: VmHWM drops to the current RSS (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def settle(pid: int, timeout: float, quiet: float = 0.5) -> Usage:
    """The usage once threads and fds stop changing for `quiet` seconds (or at `timeout`).

    Handler threads end and FINs are processed a little after the client is done, so a
    single reading right away would count work still in flight.
    """
    steady(lambda: _counts(pid), timeout, quiet)
    return usage(pid)


def _counts(pid: int) -> tuple[int, int]:
    now = usage(pid)
    return now.threads, now.fds  # RSS moves all the time: it has no part in settling


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
        except (OSError, KeyError):
            pass  # the process ended; the caller notices on its own
