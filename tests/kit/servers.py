"""Scripted loopback listeners, ports that never answer, ports nothing listens on, and
the end of a server process a test started (nginx, HAProxy, the proxy's CLI).

A scripted server is a raw socket per connection and a function that decides every
byte and pause: the way to be a hostile origin, a resetting target or a SOCKS server.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from .waits import MUST_NOT_EXPIRE


class ScriptedServer:
    """A loopback listener whose connections are handled by `script(sock)`, a thread each.

    The server owns every accepted socket and closes it after the script returns;
    `release` is set on close so scripts blocked on it end promptly. With `wake`, close()
    also shuts down the sockets of scripts still running, so one blocked in recv ends.
    """

    def __init__(
        self, script: Callable[[socket.socket], None], family: int = socket.AF_INET, wake: bool = False
    ) -> None:
        self.script = script
        self.wake = wake
        self.release = threading.Event()
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()  # the sockets of scripts still running
        self._threads: list[threading.Thread] = []  # finished ones dropped as new ones start
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
            with self._lock:
                self._live.add(sock)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        try:
            with sock:
                self.script(sock)
        except OSError:
            pass
        finally:
            with self._lock:
                self._live.discard(sock)

    def close(self) -> None:
        self.release.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._accepter.join(MUST_NOT_EXPIRE)
        with self._lock:
            live = list(self._live) if self.wake else []
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(MUST_NOT_EXPIRE)


@contextmanager
def scripted_server(script: Callable[[socket.socket], None]) -> Iterator[ScriptedServer]:
    server = ScriptedServer(script)
    try:
        yield server
    finally:
        server.close()


def stalled_listener(stack: ExitStack, accept_queue_full: bool = True, host: str = "127.0.0.1") -> int:
    """A loopback port that never answers: its accept queue full (connect hangs), or
    connections completed by the kernel but never accepted (the handshake hangs).
    Everything it opens is closed by `stack`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = stack.enter_context(socket.socket(family))
    listener.bind((host, 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    if accept_queue_full:
        for _ in range(3):
            filler = stack.enter_context(socket.socket(family))
            filler.setblocking(False)
            filler.connect_ex((host, port))
    return port


def accepts(port: int) -> bool:
    """Whether something listens on the loopback port: a server process is up."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def end_process(proc: subprocess.Popen[Any], signum: int = signal.SIGTERM) -> None:
    """Ask a server process to stop with `signum`; kill it if it has not within the bound."""
    if proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(MUST_NOT_EXPIRE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A loopback port nothing listens on: a connect gets ECONNREFUSED at once, and a
    child told to listen there can (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
