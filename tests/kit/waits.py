"""Waiting with a deadline: counts settle asynchronously, so poll, never sleep a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Two named waits: one for things that must expire soon, one generous bound for things
# that must not (CI is slower than a quiet laptop).
EXPIRE_SOON = 1.0
MUST_NOT_EXPIRE = 20.0


def wait_until(
    predicate: Callable[[], bool], timeout: float = MUST_NOT_EXPIRE, interval: float = 0.02
) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def steady(read: Callable[[], T], timeout: float, interval: float = 0.3) -> tuple[bool, T]:
    """Read until two readings `interval` apart agree (or `timeout` passes): (agreed, last).

    A handler thread ends, a FIN is processed, a little after the client is done: a
    single reading right away would count work still in flight.
    """
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if now == last:
            return True, now
        last = now
    return False, last
