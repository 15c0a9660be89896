"""The tunnel's bookkeeping without sockets or clocks: backpressure, half-close, deadlines."""

from __future__ import annotations

import pytest

from tinyproxy_py.tunnel.state import READ, WRITE, Flow, TunnelState


def state_with(up: Flow | None = None, down: Flow | None = None, opened: float = 100.0) -> TunnelState:
    return TunnelState(opened, up=up or Flow(), down=down or Flow())


def tail(data: bytes) -> memoryview:
    return memoryview(data)


@pytest.mark.parametrize(
    ("up", "down", "client", "target"),
    [
        # (client -> target flow, target -> client flow, client events, target events)
        (Flow(), Flow(), READ, READ),
        # Bytes held for the target: stop reading the client, wait until the target can take them.
        (Flow(tail=tail(b"x")), Flow(), 0, READ | WRITE),
        # Bytes held for the client (a slow reader): stop reading the target.
        (Flow(), Flow(tail=tail(b"x")), READ | WRITE, 0),
        (Flow(tail=tail(b"x")), Flow(tail=tail(b"y")), WRITE, WRITE),
        # The client sent EOF and it was passed on: only the other direction is left.
        (Flow(eof=True, shut=True), Flow(), 0, READ),
        (Flow(eof=True, shut=True), Flow(tail=tail(b"y")), WRITE, 0),
        # EOF read but bytes still held: deliver them before anything else.
        (Flow(tail=tail(b"x"), eof=True), Flow(), 0, READ | WRITE),
        (Flow(eof=True, shut=True), Flow(eof=True, shut=True), 0, 0),
    ],
)
def test_interest_follows_room_and_what_is_held(up: Flow, down: Flow, client: int, target: int) -> None:
    assert state_with(up, down).interest() == (client, target)


def test_partial_sends_shrink_the_tail_then_reading_resumes() -> None:
    flow = Flow(tail=tail(b"abcdef"))
    assert not flow.wants_read and flow.held == 6
    flow.sent(4)
    assert bytes(flow.tail or b"") == b"ef" and flow.held == 2 and not flow.wants_read
    flow.sent(2)
    assert flow.tail is None and flow.held == 0 and flow.wants_read


def test_eof_is_passed_on_only_after_the_held_bytes() -> None:
    flow = Flow(tail=tail(b"last"), eof=True)
    assert not flow.should_shut
    flow.sent(4)
    assert flow.should_shut
    flow.shut = True
    assert not flow.should_shut and not flow.wants_read


def test_finished_only_when_both_eofs_are_passed_on() -> None:
    state = state_with()
    state.up.eof = state.up.shut = True
    assert state.half_closed and not state.finished
    state.down.eof = True
    assert not state.finished  # read, not yet passed on
    state.down.shut = True
    assert state.finished


def test_held_counts_both_directions() -> None:
    assert state_with(Flow(tail=tail(b"abc")), Flow(tail=tail(b"de"))).held == 5


@pytest.mark.parametrize(("now", "expired"), [(100.0, False), (399.9, False), (400.0, True), (1000.0, True)])
def test_idle_deadline_counts_from_the_last_activity(now: float, expired: bool) -> None:
    state = state_with(opened=100.0)
    assert state.expired(now, idle_timeout=300.0, linger=30.0) is expired


def test_activity_moves_the_deadline() -> None:
    state = state_with(opened=100.0)
    state.last_active = 350.0
    assert not state.expired(400.0, idle_timeout=300.0, linger=30.0)
    assert state.deadline(300.0, 30.0) == 650.0


@pytest.mark.parametrize("side", ["up", "down"])
def test_half_closed_tunnel_gets_the_shorter_linger(side: str) -> None:
    state = state_with(opened=100.0)
    getattr(state, side).eof = True
    assert state.deadline(300.0, 30.0) == 130.0
    assert not state.expired(129.9, 300.0, 30.0)
    assert state.expired(130.0, 300.0, 30.0)


@pytest.mark.parametrize(
    ("up", "down", "target_eof_waiting", "delivered"),
    [
        # The target ended and its EOF reached the client: a reset now cuts nothing.
        (Flow(), Flow(eof=True, shut=True), False, True),
        # Its EOF was read but not yet passed on (the client had gone): still an end.
        (Flow(eof=True, shut=True), Flow(eof=True), False, True),
        # Its EOF is waiting in the socket, unread, when the client resets.
        (Flow(), Flow(), True, True),
        # Cut: the target has not ended, or bytes are still held for either side.
        (Flow(), Flow(), False, False),
        (Flow(eof=True, shut=True), Flow(), False, False),
        (Flow(), Flow(eof=True, tail=tail(b"y")), False, False),
        (Flow(tail=tail(b"x")), Flow(eof=True, shut=True), False, False),
    ],
)
def test_a_reset_is_an_end_only_when_the_target_ended_and_nothing_is_held(
    up: Flow, down: Flow, target_eof_waiting: bool, delivered: bool
) -> None:
    assert state_with(up, down).delivered(target_eof_waiting) is delivered
