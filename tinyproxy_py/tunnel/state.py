"""A tunnel's bookkeeping, apart from the hub's I/O: what each direction holds back and
how far it got (`Flow`), what to wait for next and when it is over (`TunnelState`),
and the records of an open tunnel and a closed one. `Flow` and `TunnelState` touch no
socket and no clock: the hub asks them and does the I/O.
"""

from __future__ import annotations

import selectors
from dataclasses import dataclass, field
from typing import Any

from ..errors import Cause
from ..net.stream import Stream
from ..observe.accesslog import AccessRecord

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@dataclass
class Flow:
    """One direction of a tunnel, without its sockets: what is held back, how far it got."""

    tail: memoryview | None = None  # read from the source, not yet taken by the destination
    eof: bool = False  # the source sent EOF
    shut: bool = False  # ... and it was passed on: the destination is shut down for writing
    bytes: int = 0  # read from the source so far

    @property
    def wants_read(self) -> bool:
        """Read the source only while nothing is held back (backpressure)."""
        return not self.eof and self.tail is None

    @property
    def wants_write(self) -> bool:
        return self.tail is not None

    @property
    def should_shut(self) -> bool:
        """The EOF is due to the destination: everything read before it has been sent."""
        return self.eof and self.tail is None and not self.shut

    @property
    def held(self) -> int:
        tail = self.tail  # once: TunnelHub.buffered reads it from another thread
        return 0 if tail is None else len(tail)

    def sent(self, count: int) -> None:
        """`count` bytes of the tail were taken by the destination."""
        assert self.tail is not None
        self.tail = self.tail[count:] if count < len(self.tail) else None


@dataclass(eq=False)
class TunnelState:
    """Both directions and the clock of one tunnel; `up` is client to target."""

    opened: float
    up: Flow = field(default_factory=Flow)
    down: Flow = field(default_factory=Flow)
    last_active: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_active = self.opened

    def interest(self) -> tuple[int, int]:
        """Selector events for (client, target): read a side while its flow has room,
        write it while the opposite flow holds bytes for it (Flow's wants_read and
        wants_write, spelled out: this runs after every event)."""
        up, down = self.up, self.down
        up_held, down_held = up.tail is not None, down.tail is not None
        client = (0 if up.eof or up_held else READ) | (WRITE if down_held else 0)
        target = (0 if down.eof or down_held else READ) | (WRITE if up_held else 0)
        return client, target

    @property
    def finished(self) -> bool:
        """Both EOFs have been passed on: nothing is left to do."""
        return self.up.shut and self.down.shut

    def delivered(self, target_ended: bool) -> bool:
        """The target ended its side and every byte either way has been passed on.

        A reset now cuts nothing: it is how TLS clients commonly close (urllib, browsers
        leave the server's close_notify unread, so their kernel answers it with RST), and
        how a target that already closed answers our EOF (ENOTCONN, EPIPE).
        `target_ended`: its EOF is waiting in the socket, not read yet.
        """
        return (self.down.eof or target_ended) and self.down.tail is None and self.up.tail is None

    @property
    def half_closed(self) -> bool:
        return self.up.eof or self.down.eof

    @property
    def held(self) -> int:
        return self.up.held + self.down.held

    def deadline(self, idle_timeout: float, linger: float) -> float:
        return self.last_active + (linger if self.half_closed else idle_timeout)

    def expired(self, now: float, idle_timeout: float, linger: float) -> bool:
        return now >= self.deadline(idle_timeout, linger)


@dataclass(eq=False)
class Tunnel:
    """The hub's record of one tunnel: its streams, its state, what is registered."""

    client: Stream
    target: Stream  # the CONNECT target, or the origin of an upgraded connection
    client_name: str
    target_name: str
    state: TunnelState
    masks: list[int] = field(default_factory=lambda: [0, 0])  # registered: client, target
    closed: bool = False
    record: AccessRecord | None = None  # the access record its close completes
    owner: str = ""  # whose tunnels it counts against (max_tunnels_per_address): "" for none
    # The client went away with everything delivered: (until when, why) the hub waits for
    # the target's own end, to tell a finished exchange from a cut one.
    awaiting: tuple[float, str] | None = None
    shaped: bool = False  # a stream injects faults: the hub asks it what to wait for
    wake_at: float | None = None  # when its timer calls it (timers.py)

    def describe(self, now: float) -> dict[str, Any]:
        """For the stats page: client, target, age, idle, bytes each way."""
        state = self.state
        return {"client": self.client_name, "target": self.target_name, "age": now - state.opened,
                "idle": max(0.0, now - state.last_active), "bytes_up": state.up.bytes,
                "bytes_down": state.down.bytes}  # fmt: skip

    def sides(self, sock: Stream) -> tuple[Flow, Flow, Stream]:
        """(the flow `sock` feeds, the flow that feeds `sock`, the other stream)."""
        if sock is self.client:
            return self.state.up, self.state.down, self.target
        return self.state.down, self.state.up, self.client


class SideFailed(Exception):
    """A stream operation of a tunnel failed; `sock` is the stream it failed on."""

    def __init__(self, sock: Stream, error: OSError) -> None:
        super().__init__(sock, error)
        self.sock, self.error = sock, error


@dataclass(frozen=True)
class ClosedTunnel:
    """How one tunnel ended: what the close log line says, as data."""

    client: str
    target: str
    duration: float
    bytes_up: int
    bytes_down: int
    reason: Cause  # eof, reset, idle, shutdown or error (a bug: logged with its traceback)
    detail: str = ""
    record: AccessRecord | None = None  # what the caller gave adopt(), to complete
    closed_at: float = 0.0  # wall clock (time.time()), for the stats page
