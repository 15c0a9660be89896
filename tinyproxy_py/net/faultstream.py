"""Faults carried out: Streams that misbehave as a fault rule says (settings/faults.py).

`FaultStream` wraps the target's side of one plain exchange or one tunnel (the TCP kinds);
`ClientShaping` the client's side of one plain exchange (slow_head, truncate,
header_delay). Both keep Stream's two ways of use: on a handler thread a call sleeps
(never past its deadline), in the tunnel hub it never waits: it says which events to
leave unwatched for now (`held`) and when to be called again (`due`).

Latency and pacing keep the bytes where they are (in the kernel, or in the hub's unsent
tail) until their time: a fault adds no buffer. Latency delays each read that finds bytes
(and each write) by `ms`: a bulk transfer through it moves a read's worth per `ms`.
A removed rule's streams pass bytes through from their next call on.
"""

from __future__ import annotations

import math
import random
import select
import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

from ..errors import Aborted, Cause
from ..settings.faults import CLIENT_KINDS, TCP_KINDS, Rule
from ..wire.grammar import STATUS_LINE
from . import nowait
from .stream import Stream

if TYPE_CHECKING:
    from .clientconn import ClientConnection

RECHECK = 0.1  # a handler thread's fault wait looks at its rule (and client) this often
HUB_RECHECK = 1.0  # a black-hole tunnel, in the hub: removed, bytes flow within a second


class _Pace:
    """One direction's schedule: when its next read (or write) may go, and how much."""

    __slots__ = ("left", "next_at", "rule", "until")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.until: float | None = None  # latency: when the bytes seen waiting may go
        self.next_at = 0.0  # bandwidth, slicer: not before
        # limit_data, reset_peer after bytes: how many may still pass (None: no count)
        counted = rule.kind == "limit_data" or (rule.kind == "reset_peer" and rule["bytes"])
        self.left: int | None = int(rule["bytes"]) if counted else None

    def ready_at(self, now: float) -> float:
        """When the bytes waiting now may move (a latency wait starts with them)."""
        if self.rule.kind == "latency":
            if self.until is None:
                jitter = self.rule["jitter"]
                delay = max(0.0, self.rule["ms"] + (random.uniform(-jitter, jitter) if jitter else 0))
                self.until = now + delay / 1000
            return self.until
        return self.next_at

    def pending(self, now: float) -> float | None:
        """When a wait already begun ends (None: none is)."""
        until = self.until if self.rule.kind == "latency" else self.next_at
        return until if until is not None and until > now else None

    def size(self, wanted: int) -> int:
        kind = self.rule.kind
        if kind == "bandwidth":  # 50 ms worth a time: smooth, and few wake-ups
            return min(wanted, max(1, int(self.rule["rate"] * 50)))
        if kind == "slicer":
            return min(wanted, max(1, int(self.rule["size"])))
        return wanted if self.left is None else min(wanted, self.left)

    def moved(self, count: int, now: float) -> None:
        kind = self.rule.kind
        self.until = None
        if kind == "bandwidth":
            self.next_at = max(self.next_at, now) + count / (self.rule["rate"] * 1000)
        elif kind == "slicer":
            self.next_at = now + self.rule["ms"] / 1000
        if self.left is not None:
            self.left -= count

    @property
    def spent(self) -> bool:
        return self.left is not None and self.left <= 0


class FaultStream(Stream):
    """The target's side of one exchange or tunnel, shaped by a TCP-level `rule`.

    Once a fault has changed what the peers see (bytes swallowed on a handler thread, a
    limit reached, a reset), the stream stays so (`broke`), rule removed or not: a
    request whose first piece vanished must not have its rest reach the origin as a
    request of its own. Only pacing (latency, bandwidth, slicer) ends with the rule."""

    __slots__ = ("_down", "_opened", "_up", "broke", "rule")
    shaped = True

    def __init__(self, sock: socket.socket, rule: Rule, client: socket.socket | None = None) -> None:
        super().__init__(sock, client)
        self.rule, self._opened, self.broke = rule, time.monotonic(), False
        direction = rule.settings.get("direction", "both")
        self._down = _Pace(rule) if direction in ("down", "both") else None  # reads: target to client
        self._up = _Pace(rule) if direction in ("up", "both") else None  # writes: client to target

    # --- when things happen ---

    def _on(self) -> bool:
        return self.broke or self.rule.active

    def _reset_at(self) -> float | None:
        rule = self.rule
        return self._opened + rule["ms"] / 1000 if rule.kind == "reset_peer" and not rule["bytes"] else None

    def _closes_at(self) -> float | None:
        """A black hole's end: from then on it reads as closed."""
        return self._opened + self.rule["ms"] / 1000 if self.rule["ms"] else None

    def check(self, now: float | None = None) -> None:
        """A reset_peer whose time (or bytes) has come: every call fails as a reset would
        (a rule removed before that never resets)."""
        if not self._on():
            return
        reset_at = self._reset_at()
        spent = any(p is not None and p.spent for p in (self._up, self._down))
        if (reset_at is not None and (now or time.monotonic()) >= reset_at) or (
            self.rule.kind == "reset_peer" and spent
        ):
            self.broke = True
            raise ConnectionResetError(f"reset_peer fault (rule {self.rule.id})")

    def _ended(self, pace: _Pace | None) -> bool:
        """limit_data used up (or a black hole past its end): reads as closed from now on."""
        ended = self.rule.kind == "limit_data" and pace is not None and pace.spent
        self.broke = self.broke or ended
        return ended

    def _dark(self, now: float) -> bool | None:
        """A black hole: True while it swallows, False once it reads as closed, None: not one."""
        if self.rule.kind != "timeout":
            return None
        closes_at = self._closes_at()
        return closes_at is None or now < closes_at

    # --- the hub's calls (never wait) ---

    def held(self, now: float) -> int:
        """Events (selectors') the hub should not wait for now: their time comes by `due`."""
        if not self._on():
            return 0
        if self._dark(now):
            return selectors.EVENT_READ
        down = self._down is not None and self._down.pending(now) is not None
        up = self._up is not None and self._up.pending(now) is not None
        return (selectors.EVENT_READ if down else 0) | (selectors.EVENT_WRITE if up else 0)

    def due(self, now: float) -> float | None:
        """When the hub should call again though no socket stirs (None: no need)."""
        if not self._on():
            return None
        times = [self._reset_at()] + [p.pending(now) for p in (self._up, self._down) if p is not None]
        if self._dark(now):  # its end, and a look now and then whether the rule is gone
            times += [self._closes_at(), now + HUB_RECHECK]
        return min((t for t in times if t is not None), default=None)  # a reset past due: check() has it

    def recv_into(self, view: memoryview) -> int | None:
        now = time.monotonic()
        if not self._on():
            return super().recv_into(view)
        self.check(now)
        dark, pace = self._dark(now), self._down
        if dark is not None:
            return None if dark else 0
        if pace is None:
            return super().recv_into(view)
        if self._ended(pace):
            return 0
        if not self.buffered() and nowait.peek(self.sock) is None:
            return None  # nothing has come: no wait begins
        if pace.ready_at(now) > now:
            return None
        count = super().recv_into(view[: pace.size(len(view))])
        if count:
            pace.moved(count, now)
        return count

    def send_nowait(self, data: memoryview) -> int:
        now = time.monotonic()
        if not self._on():
            return super().send_nowait(data)
        self.check(now)
        dark, pace = self._dark(now), self._up
        if dark is not None:
            if dark:
                return len(data)  # swallowed (a tunnel's own bytes: it flows again once the rule goes)
            raise BrokenPipeError(f"timeout fault (rule {self.rule.id}): closed")
        if pace is None:
            return super().send_nowait(data)
        if self._ended(pace):
            raise BrokenPipeError(f"limit_data fault (rule {self.rule.id}): closed")
        if pace.ready_at(now) > now:
            return 0
        sent = super().send_nowait(data[: pace.size(len(data))])
        if sent:
            pace.moved(sent, now)
        return sent

    # --- a handler thread's calls (wait, within their deadline) ---

    def _sleep_until(self, until: float, deadline: float) -> None:
        """Sleep until `until`; TimeoutError if `deadline` comes first, a reset if its time does."""
        while self._on():
            now = time.monotonic()
            self.check(now)
            if now >= until:
                return
            if now >= deadline:
                raise TimeoutError("deadline passed")
            reset_at = self._reset_at()
            self._pause(max(0.0, min(until, deadline, reset_at or until, now + RECHECK) - now))

    def _pause(self, seconds: float) -> None:
        """Sleep, but end the exchange if the client hangs up meanwhile (when watched)."""
        if not self._watching or self.client is None:
            time.sleep(seconds)
            return
        poller = select.poll()
        poller.register(self.client, select.POLLIN)
        for _, event in poller.poll(seconds * 1000):
            self._check_client(event)

    def send(
        self, data: bytes | bytearray | memoryview, timeout: float, *, until_readable: bool = False
    ) -> memoryview:
        view = memoryview(data)
        while view and self._on():
            now = time.monotonic()
            self.check(now)
            dark, pace = self._dark(now), self._up
            if dark:
                self.broke = True  # the origin never gets these bytes: it never gets any more
                return view[len(view) :]
            if dark is False or self._ended(pace):
                self.broke = True
                raise BrokenPipeError(f"{self.rule.kind} fault (rule {self.rule.id}): closed")
            if pace is None:
                break
            self._sleep_until(pace.ready_at(now), now + timeout)
            piece = view[: pace.size(len(view))]
            rest = super().send(piece, timeout, until_readable=until_readable)
            pace.moved(len(piece) - len(rest), time.monotonic())
            view = view[len(piece) - len(rest) :]
            if rest:
                return view  # the peer spoke: the caller listens first
        return super().send(view, timeout, until_readable=until_readable) if view else view

    def read_into(self, view: memoryview, deadline: float, *, wait_first: bool = False) -> int:
        while self._on():
            now = time.monotonic()
            self.check(now)
            dark, pace = self._dark(now), self._down
            if dark:  # nothing comes: the deadline (TimeoutError), or the end at closes_at
                self._sleep_until(self._closes_at() or math.inf, deadline)
                continue
            if dark is False or self._ended(pace):
                self.broke = True
                return 0
            if not self.buffered():
                self._readable(deadline)
            if pace is None:
                break
            self._sleep_until(pace.ready_at(time.monotonic()), deadline)
            count = super().read_into(view[: pace.size(len(view))], deadline)
            pace.moved(count, time.monotonic())
            return count
        return super().read_into(view, deadline, wait_first=wait_first)

    def _readable(self, deadline: float) -> None:
        """Wait for bytes (or the end), but not past a reset_peer's time."""
        reset_at = self._reset_at()
        try:
            self._wait(select.POLLIN, min(deadline, reset_at or deadline))
        except TimeoutError:
            self.check(time.monotonic())
            raise


class ClientShaping(Stream):
    """The client's side of one plain exchange, shaped by an HTTP-level `rule`: the
    final response head's first byte late (header_delay), every head dribbled
    (slow_head), or the body cut after `bytes` with a reset (truncate). A head takes at
    most the send timeout in all, and a client that hangs up meanwhile ends it."""

    __slots__ = ("_head_done", "rule", "sent_body", "status", "truncated")

    def __init__(self, sock: socket.socket, rule: Rule) -> None:
        super().__init__(sock)
        self.rule = rule
        self._head_done = False  # the final head's blank line has been sent
        self.sent_body = 0
        self.status = 0  # of the final response, once its head went out
        self.truncated = False  # the body was cut: the connection must end with a reset

    def send(
        self, data: bytes | bytearray | memoryview, timeout: float, *, until_readable: bool = False
    ) -> memoryview:
        view, rule = memoryview(data), self.rule
        if not rule.active or (self._head_done and rule.kind != "truncate"):
            return super().send(view, timeout)
        while not self._head_done and view:  # interim (1xx) heads, then the final one
            end = bytes(view).find(b"\r\n\r\n")
            head, view = (view[: end + 4], view[end + 4 :]) if end >= 0 else (view, view[len(view) :])
            status = _status_of(head)
            self._send_head(head, timeout, final=status >= 200)
            if end >= 0 and status >= 200:
                self._head_done, self.status = True, status
        if rule.kind == "truncate" and view:
            allowed = max(0, rule["bytes"] - self.sent_body)
            self.sent_body += min(allowed, len(view))
            super().send(view[:allowed], timeout)
            if len(view) > allowed:
                self.truncated = True
                raise ConnectionResetError(
                    f"truncate fault (rule {rule.id}) after {rule['bytes']} body bytes"
                )
            return view[len(view) :]
        return super().send(view, timeout)

    def _send_head(self, head: memoryview, timeout: float, *, final: bool) -> None:
        rule = self.rule
        deadline = time.monotonic() + timeout
        if rule.kind == "header_delay" and final:
            self._nap(rule["ms"] / 1000, deadline)
        if rule.kind != "slow_head":
            super().send(head, timeout)
            return
        size = max(1, int(rule["size"]))
        for start in range(0, len(head), size):
            if start:
                self._nap(rule["ms"] / 1000, deadline)
            super().send(head[start : start + size], max(0.0, deadline - time.monotonic()))

    def _nap(self, seconds: float, deadline: float) -> None:
        """Wait `seconds` while the rule lasts, not past `deadline` (TimeoutError then); a
        client that hangs up meanwhile ends it (one that sends its next request may wait)."""
        until, watch = time.monotonic() + seconds, True
        while self.rule.active and (now := time.monotonic()) < until:
            if now >= deadline:
                raise TimeoutError("the head took longer than the send timeout")
            step = min(until, deadline, now + RECHECK) - now
            if not watch:
                time.sleep(step)
                continue
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            if poller.poll(step * 1000):
                if nowait.peek(self.sock) == b"":  # a reset raises here too
                    raise ConnectionResetError("the client went away during a fault's wait")
                watch = False


def target_stream(sock: socket.socket, rule: Rule | None, client: socket.socket | None = None) -> Stream:
    """The stream for a target's socket: shaped if `rule` is a TCP-level fault."""
    if rule is not None and rule.kind in TCP_KINDS:
        return FaultStream(sock, rule, client)
    return Stream(sock, client)


def shaping(client: ClientConnection, rule: Rule | None) -> AbstractContextManager[None]:
    """The client's responses shaped by `rule` for the block (if it is an HTTP-level one);
    without one, a context that does nothing (and costs no generator per request)."""
    return _UNSHAPED if rule is None or rule.kind not in CLIENT_KINDS else _shaped(client, rule)


_UNSHAPED = nullcontext()


@contextmanager
def _shaped(client: ClientConnection, rule: Rule) -> Iterator[None]:
    plain = client.stream
    client.stream = shaper = ClientShaping(client.sock, rule)
    try:
        yield
    except Aborted as exc:
        if shaper.truncated:  # the fault cut it, not the client: say so, and what was sent
            exc.cause, exc.status_sent, exc.bytes_sent = Cause.FAULT, shaper.status, shaper.sent_body
        raise
    finally:
        client.stream = plain
        if shaper.truncated:  # a head may have gone with the body: cut, never a clean end
            client.cut_off()


def _status_of(head: memoryview) -> int:
    """The status code of a response head's first bytes (0 if they do not show one)."""
    line = STATUS_LINE.match(bytes(head[:64]))
    return int(line.group(3)) if line else 0
