"""Log lines for events that can come by the thousand: one line per episode.

A flood of refused connections (over max_clients, out of file descriptors, a stranger
sending PROXY headers) must not turn into a flood of log lines: the first of a kind is
logged at once, the rest are counted and said in one line when the next is logged, at
most once per `interval`. Imports: stdlib only.
"""

from __future__ import annotations

import logging
import threading
import time


class EpisodeLog:
    """Logs `message % args` at most once per `interval` seconds, with how many were left out."""

    def __init__(self, logger: logging.Logger, level: int, interval: float = 10.0) -> None:
        self.logger, self.level, self.interval = logger, level, interval
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time before which lines are only counted
        self._left_out = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._left_out += 1
                return
            left_out, self._left_out = self._left_out, 0
            self._next = now + self.interval
        if left_out:
            message += f" (and {left_out} more like it since the last such line)"
        self.logger.log(self.level, message, *args)
