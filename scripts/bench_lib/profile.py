"""Sampling profiles of the running proxy with py-spy, summarised as top self and inclusive costs.

py-spy reads the process's memory from outside (ptrace), so the proxy needs no change
and no restart; by default it samples only threads that are on a CPU, which is what
"where does the time go" needs. `--native` adds C frames (socket calls, the GIL).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

RATE = 200  # samples per second
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def start(
    py_spy: str, pid: int, seconds: int, out: Path, *, native: bool = False, gil: bool = False
) -> subprocess.Popen[bytes]:
    """Record `seconds` of collapsed stacks from `pid` into `out` (py-spy's raw format).

    `gil`: only the thread holding the GIL, which is what bounds a GIL-bound process.
    `native`: C frames too (socket calls, the GIL); py-spy must pause the process for
    those, and then it also records threads that are only waiting (see `summarize`).
    """
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(RATE),
            "--format", "raw", "--output", str(out)]  # fmt: skip
    # Not pausing the process keeps the profile from slowing down what it measures.
    argv.append("--native" if native else "--nonblocking")
    if gil:
        argv.append("--gil")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes], seconds: int) -> None:
    try:
        _, err = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    if process.returncode:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")


def _function(frame: str) -> str:
    """'send (socket.py:123)' -> 'send (socket.py)': lines of one function count together."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    short = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", match["file"])
    return f"{match['name']} ({short})"


def summarize(path: Path, focus: str = "", top: int = 15) -> str:
    """The `top` functions by self and by inclusive time, in % of the samples counted.

    `focus`: count only stacks through a frame containing this text (e.g. one thread's
    loop), so threads that merely wait elsewhere do not dilute the percentages.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or focus not in stack:
            continue
        count = int(count_text)
        # An empty stack: the sampled thread held the GIL outside any Python frame.
        frames = [_function(f) for f in stack.split(";")] if stack else ["(no Python frame)"]
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    title = f"{path.name}" + (f", stacks through {focus}" if focus else "")
    if not samples:
        return f"{title}: no samples"
    lines = [f"{title}: {samples} samples"]
    for kind, counts in (("self", own), ("inclusive", total)):
        lines.append(f"  top {top} by {kind} time:")
        lines += [f"    {100 * n / samples:5.1f}%  {name}" for name, n in counts.most_common(top)]
    return "\n".join(lines)
