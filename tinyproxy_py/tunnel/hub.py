"""CONNECT tunnels: one thread, one selectors loop, every tunnel.

Rule: after `TunnelHub.adopt()` returns, only the hub thread touches the two streams,
and the hub closes both, exactly once, when: both directions have ended (eof), either
side errors or resets (reset), no byte moved for the idle timeout, or for the shorter
linger once one side has sent EOF (idle), or the hub stops (shutdown).

Memory is bounded: bytes are read into one shared buffer and sent on at once; only an
unsent tail is kept, per direction, and while a direction holds a tail the hub stops
reading its source (backpressure). So a tunnel holds at most one buffer's worth per
direction (plus the bytes the client sent with its CONNECT), and an idle tunnel none.
The bookkeeping (state.py) touches no socket and no clock; the hub does the I/O through
net/stream.py's never-waiting calls (a TLS side, or a stream injecting faults, is carried
like any other) and asks the state what to wait for. It knows nothing of HTTP.
"""

from __future__ import annotations

import dataclasses
import logging
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from ..errors import Cause, Overloaded
from ..net import nowait
from ..net.stream import Stream, peer_label
from ..observe.accesslog import AccessRecord
from ..observe.stats import Stats
from ..settings.config import Config
from .state import READ, WRITE, ClosedTunnel, Flow, SideFailed, Tunnel, TunnelState
from .timers import Timers

log = logging.getLogger(__name__)

# One recv's worth, and so the most a direction ever holds back (worst case max_tunnels x 2
# x this; idle: nothing). Measured on loopback (scripts/measure_tunnels.py): one stream
# runs at ~0.4 of a direct connection with 256 KiB, ~0.5 with 512 KiB, little more beyond.
BUFFER_SIZE = 512 * 1024
_READS_PER_EVENT = 4  # then let other tunnels have a turn


RECENT_CLOSED = 50  # closed tunnels kept for the stats page
END_GRACE = 0.5  # how long a target may take to end after its client went away (seconds)
SHUTDOWN_IDLE = 1.0  # on stop, a tunnel that moved no byte for this long is closed at once


class TunnelHub:
    """The single thread that shuttles bytes for every open tunnel.

    `on_close`, if given, is called on the hub thread with each ClosedTunnel: keep it
    quick, and do not block (an exception from it is logged and ignored).
    """

    def __init__(
        self, config: Config, stats: Stats, on_close: Callable[[ClosedTunnel], None] | None = None
    ) -> None:
        self.config = config  # may be replaced on reload; read afresh on every sweep
        self.stats = stats
        self.on_close = on_close
        self._lock = threading.Lock()  # guards _incoming, _count, _stopping, _closed, _tunnels, _recent
        self._incoming: deque[Tunnel] = deque()
        self._count = 0
        self._stopping = False
        self._closing_idle = False  # set by close_idle_from_now(): a graceful stop has begun
        self._closed = False
        self._tunnels: set[Tunnel] = set()
        self._owned: Counter[str] = Counter()  # open tunnels by owner
        self._recent: deque[ClosedTunnel] = deque(maxlen=RECENT_CLOSED)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, READ, None)
        self._view = memoryview(bytearray(BUFFER_SIZE))
        self._timers = Timers()  # only tunnels with a fault stream use it
        self._thread = threading.Thread(target=self._run, name="tinyproxy-py-tunnels", daemon=True)

    def __repr__(self) -> str:
        return f"<TunnelHub tunnels={self.count} buffered={self.buffered // 1024}KiB>"

    @property
    def count(self) -> int:
        """Tunnels adopted and not yet closed."""
        with self._lock:
            return self._count

    @property
    def buffered(self) -> int:
        """Bytes held back now, over all tunnels: added up when asked, a moment stale at worst."""
        with self._lock:
            tunnels = list(self._tunnels)
        return sum(t.state.held for t in tunnels if not t.closed)

    @property
    def full(self) -> bool:
        return self.count >= self.config.max_tunnels

    def open_tunnels(self) -> list[dict[str, Any]]:
        """The open tunnels for the stats page: client, target, age, idle, bytes each way."""
        now = time.monotonic()
        with self._lock:
            tunnels = list(self._tunnels)
        return [t.describe(now) for t in sorted(tunnels, key=lambda t: t.state.opened)]

    def closed_tunnels(self) -> list[dict[str, Any]]:
        """The last RECENT_CLOSED tunnels to close, newest first."""
        with self._lock:
            recent = list(self._recent)
        return [dataclasses.asdict(record) for record in reversed(recent)]

    def start(self) -> None:
        self._thread.start()

    def adopt(
        self,
        client: Stream,
        target: Stream,
        pending: bytes,
        label: str = "",
        *,
        greeting: bytes = b"",
        record: AccessRecord | None = None,
        owner: str = "",
    ) -> None:
        """Take ownership of both streams; `pending` are client bytes already read.

        `label` reads "CLIENT -> TARGET" (default: both peers' addresses); `record` comes
        back in the ClosedTunnel; `owner` (a client address) may hold at most
        `max_tunnels_per_address` tunnels. `greeting` is
        sent to the client before any target byte: passing the CONNECT answer here,
        rather than sending it first, means a refused adoption has not told the client
        yes. All or nothing: if this raises (too many tunnels, hub stopping) the caller
        still owns both streams, untouched. After it returns, the caller must not touch
        either.
        """
        state = TunnelState(time.monotonic())
        if pending:
            state.up.tail = memoryview(pending)
            state.up.bytes = len(pending)  # the client's, read early by the caller
        if greeting:
            state.down.tail = memoryview(greeting)
        client_name, _, target_name = (label or peer_label(client, target)).partition(" -> ")
        tunnel = Tunnel(client, target, client_name, target_name or "?", state, record=record, owner=owner)
        tunnel.shaped = client.shaped or target.shaped
        cap = self.config.max_tunnels_per_address if owner else 0
        with self._lock:
            if self._stopping:
                raise Overloaded("proxy is shutting down", cause=Cause.SHUTDOWN)
            if self._count >= self.config.max_tunnels:
                raise Overloaded(f"too many open tunnels (max {self.config.max_tunnels})")
            if cap and self._owned[owner] >= cap:
                raise Overloaded(f"too many open tunnels from {owner} (max {cap})")
            if owner:
                self._owned[owner] += 1
            self._count += 1
            self._incoming.append(tunnel)
            # Under the lock, so the hub cannot count the close before this open.
            self.stats.adjust("tunnels", 1)
            self._wake()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and close every tunnel (reason: shutdown)."""
        with self._lock:
            self._stopping = True
            self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("tunnel hub did not stop within %.1f s", timeout)
        elif self._thread.ident is None:
            self._shutdown()  # never started: nothing else will

    def close_idle_from_now(self) -> None:
        """A graceful stop: from now on close tunnels idle for SHUTDOWN_IDLE (reason
        shutdown), so that waiting for the tunnels means waiting for transfers only."""
        with self._lock:
            self._closing_idle = True
            self._wake()

    def _wake(self) -> None:
        # Called with the lock held: _shutdown closes the socket under the same lock, so
        # this never writes to a descriptor number that has been closed and reused.
        if self._closed:
            return
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    # --- the loop (hub thread only from here on) ---

    def _run(self) -> None:
        try:
            next_sweep = 0.0
            while not self._stopping:
                self._dispatch(self._selector.select(self._timers.timeout(self._tick())))
                now = time.monotonic()
                for tunnel in self._timers.due(now) if self._timers else ():
                    self._woken(tunnel)
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + self._tick()
        except Exception:
            log.exception("tunnel hub failed; closing every tunnel")
        finally:
            self._shutdown()

    def _dispatch(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        # A function of its own so that its locals go when it returns: a loop variable
        # left in _run would keep the last tunnel (and its tails) alive until the next event.
        for key, mask in events:
            if key.data is None:
                self._take_incoming()
            else:
                self._guarded(self._service, key.data, key.fileobj, mask)

    def _tick(self) -> float:
        """How often deadlines are checked: a quarter of the shortest, at most 1 s."""
        shortest = min(self.config.tunnel_idle_timeout, self.config.tunnel_linger)
        if self._closing_idle:
            shortest = min(shortest, SHUTDOWN_IDLE)
        return min(1.0, shortest / 4)

    def _guarded(self, step: Callable[..., None], tunnel: Tunnel, *args: Any) -> None:
        """Run one tunnel's step; a bug in it closes that tunnel, never the hub."""
        if tunnel.closed:
            return  # closed earlier in this same batch of events
        try:
            step(tunnel, *args)
        except Exception as exc:
            log.exception("tunnel %s -> %s: unexpected error", tunnel.client_name, tunnel.target_name)
            self._close(tunnel, Cause.ERROR, repr(exc))

    def _take_incoming(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            adopted, self._incoming = list(self._incoming), deque()
            self._tunnels.update(adopted)
        for tunnel in adopted:
            self._guarded(self._begin, tunnel)

    def _begin(self, tunnel: Tunnel) -> None:
        # Send the greeting (and bytes the client sent with its CONNECT) now: a socket
        # just connected has room, and a selector round per tunnel is saved.
        if tunnel.state.down.wants_write:
            self._service(tunnel, tunnel.client, WRITE)
        if tunnel.state.up.wants_write and not tunnel.closed:
            self._service(tunnel, tunnel.target, WRITE)
        if not tunnel.closed:
            self._service(tunnel, tunnel.client, 0)  # TLS bytes read with the CONNECT

    def _service(self, tunnel: Tunnel, sock: Stream, mask: int) -> None:
        """Move the bytes `mask` allows, then close the tunnel or update what it waits for."""
        if tunnel.awaiting is not None:
            self._target_ended(tunnel)
            return
        inbound, outbound, other = tunnel.sides(sock)
        state = tunnel.state
        try:
            # The mask may be stale (the other socket's event in this batch changed the
            # state), and epoll reports errors as both events: act on what the state wants.
            if mask & WRITE and outbound.wants_write:
                self._flush(outbound, sock)
            if mask & READ and inbound.wants_read:
                self._pump(inbound, sock, other)
            for flow, src, dst in ((inbound, sock, other), (outbound, other, sock)):
                if flow.wants_read and src.buffered():  # TLS holds bytes: no selector would wake
                    self._pump(flow, src, dst)
        except SideFailed as failed:
            # A reset after the target finished and everything was delivered is an end.
            # After its own failure a socket reads as EOF, so only a live target is asked.
            waiting_eof = failed.sock is not tunnel.target and _ended(tunnel.target)
            exc = failed.error
            detail = f"{exc.__class__.__name__}: {exc.strerror or exc}"
            if state.delivered(waiting_eof):
                self._close(tunnel, Cause.EOF, detail)
            elif failed.sock is tunnel.client and state.held == 0 and not state.down.eof:
                self._await_target_end(tunnel, detail)  # its FIN may be a moment behind
            else:
                self._close(tunnel, Cause.RESET, detail)
            return
        state.last_active = time.monotonic()
        if state.finished:
            self._close(tunnel, Cause.EOF)
        else:
            self._update_interest(tunnel)

    def _pump(self, flow: Flow, src: Stream, dst: Stream) -> None:
        """Read from `src` and send on at once; keep only what `dst` would not take.
        After a few reads other tunnels have a turn, once TLS holds no decrypted bytes
        back (no selector would wake us for them; at most a TLS record)."""
        view = self._view
        reads = 0
        while reads < _READS_PER_EVENT or src.buffered():
            reads += 1
            try:
                n = src.recv_into(view)
            except OSError as exc:
                raise SideFailed(src, exc) from exc
            if n is None:
                return
            if n == 0:
                flow.eof = True
                self._pass_eof(flow, dst)
                return
            flow.bytes += n
            try:
                sent = dst.send_nowait(view[:n])
            except OSError as exc:
                flow.tail = nowait.copy_out(view[:n])  # undelivered: the stream was cut
                raise SideFailed(dst, exc) from exc
            if sent < n:
                flow.tail = nowait.copy_out(view[sent:n])
                return

    def _flush(self, flow: Flow, dst: Stream) -> None:
        assert flow.tail is not None
        try:
            flow.sent(dst.send_nowait(flow.tail))
        except OSError as exc:
            raise SideFailed(dst, exc) from exc
        self._pass_eof(flow, dst)

    @staticmethod
    def _pass_eof(flow: Flow, dst: Stream) -> None:
        """Half-close: once everything before the EOF has been sent, send the EOF on."""
        if flow.should_shut:
            try:
                dst.shut_write()
            except OSError as exc:
                raise SideFailed(dst, exc) from exc
            flow.shut = True

    def _await_target_end(self, tunnel: Tunnel, detail: str) -> None:
        """The client is gone and nothing was left undelivered: close its side now and
        give the target a moment to end too (eof), else it was cut (reset)."""
        self._release(tunnel.client, tunnel.masks[0], abort=True)
        tunnel.masks[0] = 0
        tunnel.awaiting = (time.monotonic() + END_GRACE, detail)
        self._update_interest(tunnel)

    def _target_ended(self, tunnel: Tunnel) -> None:
        assert tunnel.awaiting is not None
        try:
            said = tunnel.target.recv_nowait(1)
        except OSError:
            said = b"?"
        if said is None:
            return
        ended = said == b""
        self._close(tunnel, Cause.EOF if ended else Cause.RESET, tunnel.awaiting[1])

    def _update_interest(self, tunnel: Tunnel) -> None:
        socks = (tunnel.client, tunnel.target)
        interest = (0, READ) if tunnel.awaiting is not None else tunnel.state.interest()
        if tunnel.shaped:
            interest = self._shape(tunnel, interest)
        for i, mask in enumerate(interest):
            old = tunnel.masks[i]
            if mask == old:
                continue
            if not old:
                self._selector.register(socks[i], mask, tunnel)
            elif not mask:
                self._selector.unregister(socks[i])
            else:
                self._selector.modify(socks[i], mask, tunnel)
            tunnel.masks[i] = mask

    def _shape(self, tunnel: Tunnel, interest: tuple[int, int]) -> tuple[int, int]:
        """A stream that injects faults holds some events back until its time (`due`):
        they are not waited for, and a timer calls the tunnel then."""
        now = time.monotonic()
        due = min((d for s in (tunnel.client, tunnel.target) if (d := s.due(now)) is not None), default=None)
        if due is not None:
            self._timers.schedule(tunnel, due)
        return interest[0] & ~tunnel.client.held(now), interest[1] & ~tunnel.target.held(now)

    def _woken(self, tunnel: Tunnel) -> None:
        """A timer's call: a fault's reset due, or bytes it held back (the call is no activity)."""
        before = (state := tunnel.state).up.bytes, state.down.bytes, state.last_active
        try:
            tunnel.target.check()
        except OSError as exc:
            self._close(tunnel, Cause.RESET, f"{exc.__class__.__name__}: {exc}")
            return
        for stream in (tunnel.target, tunnel.client):
            self._guarded(self._service, tunnel, stream, READ | WRITE)
        if (state.up.bytes, state.down.bytes) == before[:2]:
            state.last_active = before[2]

    def _sweep(self, now: float) -> None:
        idle, linger, tick = self.config.tunnel_idle_timeout, self.config.tunnel_linger, self._tick()
        for tunnel in [t for t in self._tunnels if t.awaiting is not None and now >= t.awaiting[0]]:
            assert tunnel.awaiting is not None
            self._close(tunnel, Cause.RESET, tunnel.awaiting[1])  # the target went on: a cut
        for tunnel in [t for t in self._tunnels if now - t.state.last_active >= tick]:
            tunnel.client.notify_if_quiet()  # a TLS client's end, deferred while it might send
        for tunnel in [t for t in self._tunnels if t.state.expired(now, idle, linger)]:
            detail = f"half-closed, linger {linger:g} s" if tunnel.state.half_closed else f"{idle:g} s"
            self._close(tunnel, Cause.IDLE, detail)
        if self._closing_idle:
            for tunnel in [t for t in self._tunnels if now - t.state.last_active >= SHUTDOWN_IDLE]:
                self._close(tunnel, Cause.SHUTDOWN, f"idle {SHUTDOWN_IDLE:g} s during a graceful stop")

    def _close(self, tunnel: Tunnel, reason: Cause, detail: str = "") -> None:
        """Close both sockets, once; count, log and report the reason once."""
        if tunnel.closed:
            return
        tunnel.closed = True
        self._timers.forget(tunnel)
        state = tunnel.state
        # A reset is passed on as a reset, and a side that is owed bytes it will never get
        # is reset too: a truncated stream must not look like a clean EOF.
        aborted = reason in (Cause.RESET, Cause.ERROR)
        self._release(tunnel.client, tunnel.masks[0], aborted or state.down.wants_write)
        self._release(tunnel.target, tunnel.masks[1], aborted or state.up.wants_write)
        record = ClosedTunnel(
            tunnel.client_name,
            tunnel.target_name,
            time.monotonic() - state.opened,
            state.up.bytes,
            state.down.bytes,
            reason,
            detail,
            tunnel.record,
            time.time(),
        )
        self.stats.count(f"tunnels_closed.{reason.value}")
        log.debug(  # the access log has the line that counts (cause=...)
            "tunnel %s -> %s closed: %s%s; up %d B, down %d B, %.3f s",
            record.client,
            record.target,
            reason,
            f" ({detail})" if detail else "",
            record.bytes_up,
            record.bytes_down,
            record.duration,
        )
        if self.on_close is not None:
            try:
                self.on_close(record)
            except Exception:
                log.exception("the on_close callback failed")
        # Last: whoever sees the tunnel gone (the gauge, count) finds its close counted,
        # logged and reported already.
        with self._lock:
            self._tunnels.discard(tunnel)
            self._recent.append(record)
            self._count -= 1
            if tunnel.owner:
                self._owned[tunnel.owner] -= 1
                if not self._owned[tunnel.owner]:
                    del self._owned[tunnel.owner]
            self.stats.adjust("tunnels", -1)

    def _release(self, stream: Stream, registered: int, abort: bool) -> None:
        if registered:
            try:
                self._selector.unregister(stream)
            except (KeyError, ValueError) as exc:
                log.warning("unregistering a tunnel socket failed: %r", exc)
        try:
            stream.close(abort=abort)
        except OSError as exc:
            log.warning("closing a tunnel socket failed: %r", exc)

    def _shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            if self._closed:
                return
            self._closed = True
            pending, self._incoming = list(self._incoming), deque()
            self._wake_w.close()
            tunnels = [*self._tunnels, *pending]
        for tunnel in tunnels:
            self._close(tunnel, Cause.SHUTDOWN)
        self._selector.close()
        self._wake_r.close()


def _ended(stream: Stream) -> bool:
    """Whether the peer's EOF is the next thing to read."""
    try:
        return stream.unread() == b""
    except OSError:  # it failed too
        return False
