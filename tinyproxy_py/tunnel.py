"""CONNECT tunnels: one thread, one selectors loop, every tunnel.

Rule: after `TunnelHub.adopt()` returns, only the hub thread touches the two sockets,
and the hub closes both, exactly once, when: both directions have ended (eof), either
side errors or resets (reset), no byte moved for the idle timeout, or for the shorter
linger once one side has sent EOF (idle), or the hub stops (shutdown).

Memory is bounded: bytes are read into one shared buffer and sent on at once; only an
unsent tail is kept, per direction, and while a direction holds a tail the hub stops
reading its source (backpressure). So a tunnel holds at most one buffer's worth per
direction, and an idle tunnel holds none. This module knows nothing of HTTP.
Imports: errors, config, stats; socket, selectors.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .config import Config
from .errors import Overloaded, UpstreamError, UpstreamTimeout
from .stats import Stats

log = logging.getLogger(__name__)

BUFFER_SIZE = 256 * 1024
_READS_PER_EVENT = 4


def dial(host: str, port: int, timeout: float) -> socket.socket:
    """Open a TCP connection to host:port, or raise the ProxyError the client should see."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise UpstreamTimeout(f"connecting to {host}:{port} timed out", cause="connect-timeout") from exc
    except socket.gaierror as exc:
        raise UpstreamError(f"cannot resolve {host}", cause="dns") from exc
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {host}:{port}", cause="refused") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class Flow:
    """One direction of a tunnel: bytes from `src` to `dst`."""

    src: socket.socket
    dst: socket.socket
    tail: memoryview | None = None
    eof: bool = False
    shut: bool = False
    bytes: int = 0

    @property
    def wants_read(self) -> bool:
        return not self.eof and self.tail is None

    @property
    def finished(self) -> bool:
        return self.shut


@dataclass(eq=False)
class Tunnel:
    client: socket.socket
    upstream: socket.socket
    label: str
    up: Flow = field(init=False)
    down: Flow = field(init=False)
    opened: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    masks: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.up = Flow(self.client, self.upstream)
        self.down = Flow(self.upstream, self.client)

    def flows_from(self, sock: socket.socket) -> tuple[Flow, Flow]:
        """(the flow `sock` reads into, the flow `sock` writes out of)."""
        return (self.up, self.down) if sock is self.client else (self.down, self.up)

    def deadline(self, config: Config) -> float:
        half_closed = self.up.eof or self.down.eof
        return self.last_active + (config.tunnel_linger if half_closed else config.tunnel_idle_timeout)


class TunnelHub:
    """The single thread that shuttles bytes for every open tunnel."""

    def __init__(self, config: Config, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self._lock = threading.Lock()
        self._incoming: deque[Tunnel] = deque()
        self._count = 0
        self._stopping = False
        self._tunnels: set[Tunnel] = set()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._view = memoryview(bytearray(BUFFER_SIZE))
        self._thread = threading.Thread(target=self._run, name="tinyproxy-py-tunnels", daemon=True)

    def __repr__(self) -> str:
        return f"<TunnelHub tunnels={self.count}>"

    @property
    def count(self) -> int:
        """Tunnels adopted and not yet closed."""
        with self._lock:
            return self._count

    @property
    def full(self) -> bool:
        return self.count >= self.config.max_tunnels

    def start(self) -> None:
        self._thread.start()

    def adopt(self, client: socket.socket, upstream: socket.socket, pending: bytes, label: str) -> None:
        """Take ownership of both sockets; `pending` are client bytes already read.

        All or nothing: if this raises (too many tunnels, hub stopping) the caller still
        owns both sockets. After it returns, the caller must not touch either socket.
        """
        tunnel = Tunnel(client, upstream, label)
        if pending:
            tunnel.up.tail = memoryview(pending)
        with self._lock:
            if self._stopping:
                raise Overloaded("proxy is shutting down", cause="shutdown")
            if self._count >= self.config.max_tunnels:
                raise Overloaded(f"too many open tunnels (max {self.config.max_tunnels})")
            self._count += 1
            self._incoming.append(tunnel)
        self.stats.adjust("tunnels", 1)
        self._wake()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and close every tunnel (reason: shutdown)."""
        with self._lock:
            self._stopping = True
        if self._thread.is_alive():
            self._wake()
            self._thread.join(timeout)
        else:
            self._shutdown()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _run(self) -> None:
        try:
            next_sweep = time.monotonic()
            while not self._stopping:
                for key, mask in self._selector.select(self._sweep_interval()):
                    if key.data is None:
                        self._take_incoming()
                    else:
                        self._service(key.data, key.fileobj, mask)  # type: ignore[arg-type]
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + self._sweep_interval()
        finally:
            self._shutdown()

    def _sweep_interval(self) -> float:
        return min(1.0, self.config.tunnel_idle_timeout / 4, self.config.tunnel_linger / 4)

    def _take_incoming(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            adopted, self._incoming = list(self._incoming), deque()
        for tunnel in adopted:
            tunnel.client.setblocking(False)
            tunnel.upstream.setblocking(False)
            self._tunnels.add(tunnel)
            self._update_interest(tunnel)

    def _service(self, tunnel: Tunnel, sock: socket.socket, mask: int) -> None:
        if tunnel not in self._tunnels:
            return  # closed earlier in this same batch of events
        inbound, outbound = tunnel.flows_from(sock)
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(outbound)
            if mask & selectors.EVENT_READ:
                self._pump(inbound)
        except OSError as exc:
            self._close(tunnel, f"reset ({exc.__class__.__name__})")
            return
        tunnel.last_active = time.monotonic()
        if tunnel.up.finished and tunnel.down.finished:
            self._close(tunnel, "eof")
        else:
            self._update_interest(tunnel)

    def _pump(self, flow: Flow) -> None:
        """Read from `flow.src` and send on at once; keep only what `dst` would not take."""
        view = self._view
        for _ in range(_READS_PER_EVENT):
            try:
                n = flow.src.recv_into(view)
            except BlockingIOError:
                return
            if n == 0:
                flow.eof = True
                self._finish_if_drained(flow)
                return
            flow.bytes += n
            try:
                sent = flow.dst.send(view[:n])
            except BlockingIOError:
                sent = 0
            if sent < n:
                flow.tail = memoryview(bytes(view[sent:n]))
                return

    def _flush(self, flow: Flow) -> None:
        if flow.tail is not None:
            try:
                sent = flow.dst.send(flow.tail)
            except BlockingIOError:
                return
            flow.tail = flow.tail[sent:] if sent < len(flow.tail) else None
        self._finish_if_drained(flow)

    @staticmethod
    def _finish_if_drained(flow: Flow) -> None:
        """Pass a half-close on once everything before the EOF has been sent."""
        if flow.eof and flow.tail is None and not flow.shut:
            flow.dst.shutdown(socket.SHUT_WR)
            flow.shut = True

    def _update_interest(self, tunnel: Tunnel) -> None:
        for sock in (tunnel.client, tunnel.upstream):
            inbound, outbound = tunnel.flows_from(sock)
            mask = (selectors.EVENT_READ if inbound.wants_read else 0) | (
                selectors.EVENT_WRITE if outbound.tail is not None else 0
            )
            fd = sock.fileno()
            old = tunnel.masks.get(fd, 0)
            if mask == old:
                continue
            if not old:
                self._selector.register(sock, mask, tunnel)
            elif not mask:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, mask, tunnel)
            tunnel.masks[fd] = mask

    def _sweep(self) -> None:
        now = time.monotonic()
        for tunnel in [t for t in self._tunnels if now >= t.deadline(self.config)]:
            self._close(tunnel, "idle")

    def _close(self, tunnel: Tunnel, reason: str) -> None:
        self._tunnels.discard(tunnel)
        for sock in (tunnel.client, tunnel.upstream):
            if tunnel.masks.get(sock.fileno()):
                self._selector.unregister(sock)
            sock.close()
        with self._lock:
            self._count -= 1
        self.stats.adjust("tunnels", -1)
        self.stats.count(f"tunnels_closed.{reason.split()[0]}")
        log.info(
            "tunnel %s closed: %s; up %d B, down %d B, %.3f s",
            tunnel.label,
            reason,
            tunnel.up.bytes,
            tunnel.down.bytes,
            time.monotonic() - tunnel.opened,
        )

    def _shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            pending, self._incoming = list(self._incoming), deque()
            if self._wake_r.fileno() < 0:
                return  # already shut down
        for tunnel in list(self._tunnels) + pending:
            self._tunnels.add(tunnel)
            self._close(tunnel, "shutdown")
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
