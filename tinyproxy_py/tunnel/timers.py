"""The hub's timers: when a tunnel whose stream injects faults wants to be called again
though no socket stirs (net/faultstream.py's `due`). One live timer per tunnel; a timer
replaced by an earlier one is skipped when it comes up. Untouched without faults."""

from __future__ import annotations

import heapq
import itertools
import time

from .state import Tunnel


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Tunnel]] = []  # (when, serial, tunnel)
        self._serials = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._heap)

    def schedule(self, tunnel: Tunnel, when: float) -> None:
        """Call `tunnel` at `when`, unless it is to be called earlier already."""
        if tunnel.wake_at is None or when < tunnel.wake_at:
            tunnel.wake_at = when
            heapq.heappush(self._heap, (when, next(self._serials), tunnel))

    def timeout(self, longest: float) -> float:
        """How long the loop may wait: `longest`, or until the next timer."""
        return max(0.0, min(longest, self._heap[0][0] - time.monotonic())) if self._heap else longest

    def due(self, now: float) -> list[Tunnel]:
        """The tunnels whose time has come (their timers gone)."""
        ready = []
        while self._heap and self._heap[0][0] <= now:
            when, _, tunnel = heapq.heappop(self._heap)
            if when == tunnel.wake_at and not tunnel.closed:
                tunnel.wake_at = None
                ready.append(tunnel)
        return ready

    def forget(self, tunnel: Tunnel) -> None:
        """A closed tunnel: its timer must not keep it alive."""
        if tunnel.wake_at is not None:
            tunnel.wake_at = None
            self._heap = [entry for entry in self._heap if entry[2] is not tunnel]
            heapq.heapify(self._heap)
