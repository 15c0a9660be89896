"""Counters (only grow) and gauges (go up and down) for one proxy instance.

Every live object the proxy owns is counted by a gauge; a gauge that does not return
to zero once traffic stops is a leak, and the tests look for exactly that.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from types import TracebackType
from typing import TypedDict


class Counts(TypedDict):
    uptime: float
    counters: dict[str, int]
    gauges: dict[str, int]


class Stats:
    """Thread-safe counters and gauges; `snapshot()` gives a consistent copy.

    Each thread adds to counters of its own, without a lock (one lock taken by every
    thread for every count was a hot spot at 50 busy clients); a read sums them. A thread
    that ends leaves its counts to the totals (`_Shard.__del__`), so nothing grows with
    the threads the proxy has had. A gauge may go up on one thread and down on another:
    its value is the sum.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _shards and the totals of ended threads
        self._counters: Counter[str] = Counter()
        self._gauges: Counter[str] = Counter()
        self._shards: weakref.WeakSet[_Shard] = weakref.WeakSet()  # the threads' own, while they run
        self._local = threading.local()
        self.started = time.monotonic()

    def _shard(self) -> _Shard:
        try:
            return self._local.shard  # type: ignore[no-any-return]
        except AttributeError:
            shard = self._local.shard = _Shard(self)
            with self._lock:
                self._shards.add(shard)
            return shard

    def count(self, name: str, amount: int = 1) -> None:
        self._shard().counters[name] += amount

    def adjust(self, gauge: str, delta: int) -> None:
        self._shard().gauges[gauge] += delta

    def _retire(self, shard: _Shard) -> None:
        with self._lock:
            self._shards.discard(shard)
            self._counters.update(shard.counters)
            self._gauges.update(shard.gauges)

    def _totals(self) -> tuple[Counter[str], Counter[str]]:
        """Called with the lock held. dict() copies a shard in one step of the
        interpreter (C code holding the GIL), so its thread cannot change it meanwhile."""
        counters, gauges = Counter(self._counters), Counter(self._gauges)
        for shard in self._shards:
            counters.update(dict(shard.counters))
            gauges.update(dict(shard.gauges))
        return counters, gauges

    def live(self, gauge: str) -> _Live:
        """Count one live object for the duration of the block (a class, not a generator:
        several blocks open and close per connection)."""
        return _Live(self, gauge)

    def gauge(self, name: str) -> int:
        with self._lock:
            return self._totals()[1][name]

    def counter(self, name: str) -> int:
        with self._lock:
            return self._totals()[0][name]

    def snapshot(self) -> Counts:
        with self._lock:
            counters, gauges = self._totals()
        return {
            "uptime": time.monotonic() - self.started,
            "counters": dict(counters),
            "gauges": dict(gauges),
        }


class _Shard:
    """One thread's counts; given to the totals when the thread ends (threading.local
    drops it then)."""

    __slots__ = ("__weakref__", "counters", "gauges", "stats")

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.counters: Counter[str] = Counter()
        self.gauges: Counter[str] = Counter()

    def __del__(self) -> None:
        self.stats._retire(self)


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
