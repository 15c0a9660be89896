"""`serve --workers N`: N processes sharing one port, each with its own threads, hub and pool.

Python runs one thread of bytecode at a time per process, so a second process is what
doubles plain-HTTP throughput on a second core. The kernel spreads connections over the
workers' listening sockets (SO_REUSEPORT). The parent only supervises: it reserves the
port, forks the workers, passes signals on (stop, reload, drain), replaces a worker that
dies, and waits for them; a second stop signal kills them. Each worker publishes its
stats snapshot to a shared folder every second and before it answers a stats page,
which adds up all of them.
Used by the CLI only (it forks: an embedding program decides that for itself).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..observe.statspage import Snapshot
from ..server.proxy import ProxyServer
from ..settings.config import Config
from .process import account

log = logging.getLogger(__name__)

PUBLISH_INTERVAL = 1.0
STALE_AFTER = 5.0  # a snapshot older than this belongs to a worker that is gone
RESTART_AFTER = 2.0  # a worker that ends sooner after its start is not replaced: all stop
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)
PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def supervise(
    config: Config,
    run_worker: Callable[[Config, SharedStats], None],
    on_reload: Callable[[], None] | None = None,
) -> int:
    """Fork `config.workers` workers on one port and wait for them; the exit status.
    `on_reload` runs in this process when a reload signal has been passed on."""
    import shutil  # here, not at the top: a proxy without --workers never needs them
    import tempfile

    # Held until the end: a restarted worker binds them again.
    reserved = [_reserve_port(config, config.port)]
    if config.tls_port is not None:
        try:
            reserved.append(_reserve_port(config, config.tls_port))
        except OSError:
            reserved[0].close()
            raise
    config = config.replace(port=_port(reserved[0]), tls_port=_port(reserved[-1]) if reserved[1:] else None)
    folder = Path(tempfile.mkdtemp(prefix="tinyproxy-py-"))
    if (config.user or config.group) and os.geteuid() == 0:  # workers drop to them, then publish here
        os.chown(folder, *account(config.user, config.group)[1:])
    children: dict[int, tuple[int, float]] = {}  # pid → (worker index, started, monotonic)
    stops = _pass_signals_on(children, on_reload)  # before forking: no window where a signal is lost

    def spawn(index: int) -> None:
        # Blocked while forking: a child has no handlers of its own until run_worker
        # installs them (and unblocks), and a SIGUSR2's default action would kill it. The
        # parent gets what arrived meanwhile once the child exists, and passes it on.
        signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                for sock in reserved:
                    sock.close()
                os._exit(_worker_main(run_worker, config, SharedStats(folder, index)))
            children[pid] = (index, time.monotonic())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, PASSED_ON)

    try:
        for index in range(config.workers):
            spawn(index)
        ports = (
            f"{config.port} and TLS port {config.tls_port}" if config.tls_port is not None else config.port
        )
        log.info("%d workers on port %s: %s", len(children), ports, ", ".join(map(str, children)))
        return _wait_for(children, stops, spawn)
    finally:
        for sock in reserved:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _reserve_port(config: Config, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: fixes port 0 to a number the workers all share."""
    host = config.host[0]  # the others listen on the port this one gets
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _worker_main(
    run_worker: Callable[[Config, SharedStats], None], config: Config, stats: SharedStats
) -> int:
    for signum in PASSED_ON:
        signal.signal(signum, signal.SIG_DFL)  # run_worker installs its own
    try:
        run_worker(config, stats)
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        return 1
    return 0


def _pass_signals_on(
    children: dict[int, tuple[int, float]], on_reload: Callable[[], None] | None
) -> list[int]:
    """Send stop and reload signals on to the workers; a second stop signal kills them.

    Returns the list that records the stop signals received (for _wait_for)."""
    stops: list[int] = []

    def pass_on(signum: int, frame: object) -> None:
        if signum in STOP_SIGNALS:
            stops.append(signum)
        sent = signal.SIGKILL if len(stops) > 1 else signum
        for pid in list(children):
            try:
                os.kill(pid, sent)
            except ProcessLookupError:
                pass
        if signum in RELOAD_SIGNALS and on_reload is not None:
            on_reload()

    for signum in PASSED_ON:
        signal.signal(signum, pass_on)
    return stops


def _wait_for(children: dict[int, tuple[int, float]], stops: list[int], spawn: Callable[[int], None]) -> int:
    """Wait for every worker. One that ends on its own (a crash, the OOM killer) is
    replaced, unless it ended within RESTART_AFTER of its start: it would again (a broken
    start), so the others stop too. The exit status."""
    status = 0
    while children:
        pid, code = os.wait()
        index, started = children.pop(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        if stops:  # the parent is stopping them
            status = status or int(exit_code != 0)
            continue
        lived = time.monotonic() - started
        if lived >= RESTART_AFTER:
            log.error(
                "worker %d ended (exit status %d) after %.0f s; starting another", pid, exit_code, lived
            )
            spawn(index)
            continue
        status = 1
        log.error(
            "worker %d exited with %d %.1f s after it started; stopping the others", pid, exit_code, lived
        )
        signal.raise_signal(signal.SIGTERM)
    return status


class SharedStats:
    """A worker's view of the shared snapshot folder: it publishes its own, reads all."""

    def __init__(self, folder: Path, index: int) -> None:
        self.folder, self.index = folder, index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proxy: ProxyServer | None = None
        self._lock = threading.Lock()  # a snapshot is written before any later one
        self._failed = False  # the last write failed (said once, not every second)

    def attach(self, proxy: ProxyServer) -> None:
        """Publish `proxy`'s snapshot every second, and let its stats pages add up every worker's."""
        self._proxy = proxy
        proxy.siblings = self
        self._thread = threading.Thread(target=self._publish_often, name="tinyproxy-py-stats", daemon=True)
        self._thread.start()

    def detach(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        (self.folder / f"{self.index}.json").unlink(missing_ok=True)

    def _publish_often(self) -> None:
        while not self._stop.wait(PUBLISH_INTERVAL):
            self.publish()

    def publish(self) -> Snapshot:
        assert self._proxy is not None
        target = self.folder / f"{self.index}.json"
        with self._lock:
            snapshot = self._proxy.local_snapshot()
            scratch = target.with_suffix(".tmp")
            try:
                scratch.write_text(json.dumps(snapshot))
                scratch.replace(target)  # atomic: readers never see half a file
            except OSError as exc:  # the page is still answered; the others see an older share
                if not self._failed:
                    log.warning("cannot share this worker's stats in %s: %s", self.folder, exc)
                self._failed = True
            else:
                self._failed = False
        return snapshot

    def read_others(self) -> list[Snapshot]:
        found = []
        for path in self.folder.glob("*.json"):
            if path.name == f"{self.index}.json":
                continue
            try:
                if time.time() - path.stat().st_mtime < STALE_AFTER:
                    found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # a worker that just stopped
        return found
