"""What a process holds, read from /proc (Linux): open fds, threads, RSS, listening sockets.

RSS comes from smaps_rollup, which walks the page tables: VmRSS in /proc/PID/status is
a per-CPU counter that can be a few hundred KiB off, too coarse for "KiB per idle
tunnel" or "growth under 1 MiB".
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    threads: int
    fds: int

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.rss_kib + other.rss_kib, self.threads + other.threads, self.fds + other.fds)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.rss_kib - other.rss_kib, self.threads - other.threads, self.fds - other.fds)


def open_fds(pid: int | None = None) -> int:
    """Open file descriptors of `pid` (default: this process)."""
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def thread_count() -> int:
    """Python threads of this process (what a leaked handler or accept loop adds to)."""
    return threading.active_count()


def handler_threads() -> int:
    """The in-process proxies' handler threads alive now, busy or idle (each idle one ends
    after HandlerThreads.idle_timeout)."""
    return sum(thread.name == "tinyproxy-py-handler" for thread in threading.enumerate())


def status_field(pid: int, name: str) -> int:
    """A numeric field of /proc/PID/status (KiB for the Vm* ones, e.g. VmHWM; Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return int(value.split()[0])
    raise KeyError(f"{name} is not in /proc/{pid}/status")


def rollup_field(pid: int, name: str, fallback: str) -> int:
    """A KiB field of /proc/PID/smaps_rollup, or `fallback` of status before Linux 4.14."""
    path = Path(f"/proc/{pid}/smaps_rollup")
    if not path.exists():
        return status_field(pid, fallback)
    for line in path.read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise KeyError(f"no {name} line in {path}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    return rollup_field(pid, "Rss", "VmRSS")


def usage(pid: int) -> Usage:
    return Usage(rss_kib(pid), status_field(pid, "Threads"), open_fds(pid))


def listening_pids(port: int) -> list[int]:
    """The other processes here listening on TCP `port` (several with SO_REUSEPORT)."""
    wanted = f":{port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[1].endswith(wanted) and parts[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return []
    return [pid for pid in _pids() if pid != os.getpid() and _holds_any(pid, inodes)]


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _holds_any(pid: int, links: set[str]) -> bool:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in links:
                return True
        except OSError:
            continue
    return False
