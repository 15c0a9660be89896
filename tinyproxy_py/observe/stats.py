"""Counters (only grow) and gauges (go up and down) for one proxy instance.

Every live object the proxy owns is counted by a gauge; a gauge that does not return
to zero once traffic stops is a leak, and the tests look for exactly that.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import TracebackType
from typing import TypedDict


class Counts(TypedDict):
    uptime: float
    counters: dict[str, int]
    gauges: dict[str, int]


class Stats:
    """Thread-safe counters and gauges; `snapshot()` gives a consistent copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._gauges: Counter[str] = Counter()
        self.started = time.monotonic()

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def adjust(self, gauge: str, delta: int) -> None:
        with self._lock:
            self._gauges[gauge] += delta

    def live(self, gauge: str) -> _Live:
        """Count one live object for the duration of the block (a class, not a generator:
        several blocks open and close per connection)."""
        return _Live(self, gauge)

    def gauge(self, name: str) -> int:
        with self._lock:
            return self._gauges[name]

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def snapshot(self) -> Counts:
        with self._lock:
            return {
                "uptime": time.monotonic() - self.started,
                "counters": dict(self._counters),
                "gauges": dict(self._gauges),
            }


class _Live:
    __slots__ = ("gauge", "stats")

    def __init__(self, stats: Stats, gauge: str) -> None:
        self.stats, self.gauge = stats, gauge

    def __enter__(self) -> None:
        self.stats.adjust(self.gauge, 1)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stats.adjust(self.gauge, -1)
