"""Every open connection of one pool manager, counted, and shut down at once on stop().

Its own module: the pool makes one at start, and the urllib3 adapter (origin/connections.py,
loaded with the first plain request) reports to it.
"""

from __future__ import annotations

import socket
import threading
from typing import Protocol

from ..observe.stats import Stats


class _Connection(Protocol):
    """What the tracker needs of a pooled connection (urllib3's _Connection)."""

    sock: socket.socket | None


class ConnectionTracker:
    """Knows every open connection of one pool manager."""

    def __init__(self, stats: Stats) -> None:
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._stats = stats

    def opened(self, conn: _Connection) -> None:
        with self._lock:
            if conn not in self._open:
                self._open.add(conn)
                self._stats.adjust("pool_open", 1)

    def closed(self, conn: _Connection) -> None:
        with self._lock:
            if conn in self._open:
                self._open.discard(conn)
                self._stats.adjust("pool_open", -1)

    def abort_all(self) -> None:
        """Shut down every open socket of the pool, waking threads blocked reading them."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                try:
                    # The base method: SSLSocket.shutdown would tear down its SSL
                    # object under the thread that is still using it.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass
