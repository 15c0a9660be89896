"""wrk runs: keep-alive or new-connection GETs, direct or through a proxy.

Through a proxy, wrk connects to the proxy's address and a Lua script makes every
request absolute-form (`GET http://127.0.0.1:ORIGIN/path`) with the origin's Host.
The script's done() prints the exact totals on one line, which beats parsing wrk's
rounded human summary (it says "1.02GB").
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024

LUA = """\
-- Written by scripts/bench.py.
wrk.path = "{path}"
wrk.headers["Host"] = "127.0.0.1:{origin_port}"
{close}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %.0f %.0f %.0f %.0f %.0f %.0f %.0f\\n",
    summary.requests, summary.bytes, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.write + e.status + e.timeout, e.read))
end
"""


@dataclass(frozen=True)
class WrkSpec:
    origin_port: int
    path: str
    proxy_port: int | None = None
    close: bool = False  # Connection: close, so every request opens a new connection
    seconds: int = 5
    connections: int = 8
    threads: int = 1


@dataclass(frozen=True)
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # failed connects and sends, timeouts, non-2xx/3xx answers
    # Reads that found the connection closed. wrk counts one whenever a server closes a
    # connection it did not announce as closing: tinyproxy does that after every response
    # (no client keep-alive), so for it this is the number of connections, not failures.
    closed: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MiB / self.seconds


def script(spec: WrkSpec) -> str:
    path = spec.path
    if spec.proxy_port is not None:
        path = f"http://127.0.0.1:{spec.origin_port}{spec.path}"
    close = 'wrk.headers["Connection"] = "close"' if spec.close else ""
    return LUA.format(path=path, origin_port=spec.origin_port, close=close)


def run(spec: WrkSpec, workdir: Path) -> WrkResult:
    lua = workdir / "bench.lua"
    lua.write_text(script(spec))
    port = spec.proxy_port or spec.origin_port
    argv = ["wrk", f"-t{spec.threads}", f"-c{spec.connections}", f"-d{spec.seconds}s", "--timeout", "10s",
            "-s", str(lua), f"http://127.0.0.1:{port}/"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=spec.seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            return _parse(line)
    raise RuntimeError(f"wrk printed no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


def _parse(line: str) -> WrkResult:
    requests, size, micros, p50, p99, errors, closed = (int(float(x)) for x in line.split()[1:8])
    return WrkResult(requests, size, micros / 1e6, p50 / 1000, p99 / 1000, errors, closed)
