"""deploy/haproxy.cfg, run by a real HAProxy in front of two instances: the drain end to end.

HAProxy (`mode tcp`, `send-proxy-v2`, `option httpchk GET /readyz`) balances clients
over two tinyproxy-py processes. SIGTERM to one must take it out of HAProxy within its
check interval, let a tunnel open through it finish, and cost no client a failed request.
The test prints which instance served each phase and how long the mark-down took.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from ..kit.clients import connect_request, recv_head, recv_to_eof
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import request_over
from ..kit.servers import free_port, scripted_server
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import address_of, proxy_process

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
CONFIG = Path(__file__).parents[2] / "deploy" / "haproxy.cfg"
CLIENT = "127.0.0.2"  # the clients' address: what the instances must log, not HAProxy's
DRAIN_DELAY = 4.0  # longer than HAProxy's inter 1s x fall 2 in deploy/haproxy.cfg
BEHIND_HAPROXY = (
    *("--allow", "127.0.0.0/8", "--connect-port", "any", "--drain-delay", f"{DRAIN_DELAY:g}"),
    *("--proxy-protocol", "v2", "--proxy-protocol-from", "127.0.0.1/32"),
)
BLOCKS, PAUSE = 60, 0.1  # the tunnel's transfer: 60 x 10 kB over about 6 s

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy; .ci/run does)"
)


def loopback_config(template: str, port: int, instances: list[tuple[str, int]], socket_path: Path) -> str:
    """deploy/haproxy.cfg as it is, but listening on loopback and balancing over `instances`,
    with an admin socket to read the servers' states. System-only lines (chroot, user) go."""
    servers = iter(instances)
    lines = []
    for line in template.splitlines():
        words = line.split()
        keyword = words[0] if words else ""
        if keyword in ("chroot", "user", "group", "daemon", "pidfile", "stats", "log"):
            continue
        if keyword == "bind":
            line = f"    bind 127.0.0.1:{port}"
        elif keyword == "server":
            host, port_ = next(servers)
            line = line.replace(words[2], f"{host}:{port_}")
        lines.append(line)
        if keyword == "global":
            lines.append(f"    stats socket {socket_path} level admin")
    assert next(servers, None) is None, "deploy/haproxy.cfg should name one server per instance"
    return "\n".join(lines) + "\n"


class HAProxy:
    def __init__(self, config: Path, socket_path: Path, port: int) -> None:
        self.socket_path, self.address = socket_path, ("127.0.0.1", port)
        assert HAPROXY is not None
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def servers(self) -> list[dict[str, str]]:
        """`show stat` on the admin socket: a row per server (status UP/DOWN, scur, ...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(MUST_NOT_EXPIRE)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            header, *rows = recv_to_eof(sock).decode().strip().splitlines()
        names = header.lstrip("# ").split(",")
        records = [dict(zip(names, row.split(","), strict=True)) for row in rows]
        return [r for r in records if r["svname"] not in ("FRONTEND", "BACKEND")]

    def states(self) -> dict[str, str]:
        return {r["svname"]: r["status"] for r in self.servers()}

    def sessions(self) -> dict[str, int]:
        return {r["svname"]: int(r["scur"]) for r in self.servers()}

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, errors = self.proc.communicate(timeout=MUST_NOT_EXPIRE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, errors = self.proc.communicate()
        return errors


@contextmanager
def running_haproxy(tmp_path: Path, instances: list[tuple[str, int]]) -> Iterator[HAProxy]:
    socket_path = tmp_path / "haproxy.sock"
    config = tmp_path / "haproxy.cfg"
    port = free_port()
    config.write_text(loopback_config(CONFIG.read_text(), port, instances, socket_path))
    haproxy = HAProxy(config, socket_path, port)
    try:
        started = wait_until(lambda: socket_path.exists() or haproxy.proc.poll() is not None)
        assert started and haproxy.proc.poll() is None, haproxy.stop()
        yield haproxy
    finally:
        haproxy.stop()


def served_by(haproxy: HAProxy, origin: OriginServer) -> str:
    """One GET through HAProxy from CLIENT on a new connection; the instance that served it
    (its Via name, as the origin saw it). Any failure raises: no client may see an error."""
    url = origin.url("/headers")
    with socket.create_connection(haproxy.address, MUST_NOT_EXPIRE, source_address=(CLIENT, 0)) as sock:
        response = request_over(sock, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert response.status == 200, response.body
    (via,) = [value for name, value in json.loads(response.body)["headers"] if name == "Via"]
    return via.split()[1]  # "1.1 proxy1 (token)"


def drip(sock: socket.socket) -> None:
    sock.settimeout(MUST_NOT_EXPIRE)
    for _ in range(BLOCKS):
        sock.sendall(pattern_bytes(10_000))
        time.sleep(PAUSE)


def test_sigterm_takes_an_instance_out_of_haproxy_without_a_client_error(
    tmp_path: Path, origin: OriginServer, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ("proxy1", "proxy2")
    logs = {name: tmp_path / f"{name}.access.log" for name in names}
    with ExitStack() as stack, scripted_server(drip) as target:
        procs, instances = {}, []
        for name in names:
            args = ["--via-name", name, "--access-log", str(logs[name]), *BEHIND_HAPROXY]
            proc, url = stack.enter_context(proxy_process(*args))
            procs[name] = proc
            instances.append(address_of(url))
        haproxy = stack.enter_context(running_haproxy(tmp_path, instances))
        assert wait_until(lambda: set(haproxy.states().values()) == {"UP"}), haproxy.states()

        # Phase 1: both instances serve, and log the client's address, not HAProxy's.
        before = Counter(served_by(haproxy, origin) for _ in range(10))
        assert set(before) == set(names), before
        for name, log in logs.items():
            assert wait_until(lambda: log.exists() and log.read_text().count("\n") >= before[name])  # noqa: B023
            lines = log.read_text().splitlines()
            assert lines and all(f" {CLIENT} GET " in line for line in lines), lines

        # A tunnel through HAProxy, moving bytes; the instance holding it is the one to stop.
        tunnel = socket.create_connection(haproxy.address, MUST_NOT_EXPIRE, source_address=(CLIENT, 0))
        stack.enter_context(tunnel)
        tunnel.sendall(connect_request(f"127.0.0.1:{target.port}"))
        head = recv_head(tunnel)
        assert head.startswith(b"HTTP/1.1 200 "), head
        received = [head.partition(b"\r\n\r\n")[2]]
        reader = threading.Thread(target=lambda: received.append(recv_to_eof(tunnel)))
        reader.start()
        # Phase 1's connections are over once each instance has seen its client's EOF and
        # closed too; until then HAProxy still counts them (seen in CI: both at 1).
        assert wait_until(lambda: sorted(haproxy.sessions().values()) == [0, 1]), haproxy.sessions()
        (draining,) = [name for name, count in haproxy.sessions().items() if count == 1]
        (other,) = set(names) - {draining}

        # Phase 2: SIGTERM; clients go on fetching all the while.
        procs[draining].send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        during: Counter[str] = Counter()
        marked_down = None
        while marked_down is None and time.monotonic() - signalled < MUST_NOT_EXPIRE:
            during[served_by(haproxy, origin)] += 1
            if haproxy.states()[draining].startswith("DOWN"):  # not "UP 1/2": a check on the way
                marked_down = time.monotonic() - signalled
        assert marked_down is not None, haproxy.states()

        # Phase 3: everything goes to the other instance; the tunnel finishes its transfer.
        after = Counter(served_by(haproxy, origin) for _ in range(20))
        assert after == {other: 20}, after
        reader.join(MUST_NOT_EXPIRE)
        assert b"".join(received) == pattern_bytes(10_000) * BLOCKS
        tunnel_ended = time.monotonic() - signalled
        assert procs[draining].wait(MUST_NOT_EXPIRE) == 0
        exited = time.monotonic() - signalled

    with capsys.disabled():
        print(
            f"\nHAProxy in front of {', '.join(names)} (inter 1s, fall 2; --drain-delay {DRAIN_DELAY:g}):"
            f"\n  before SIGTERM, served: {dict(before)}"
            f"\n  SIGTERM to {draining} (holding a tunnel); marked down after {marked_down:.2f} s;"
            f" served meanwhile: {dict(during)}"
            f"\n  after: {dict(after)}; the tunnel finished its {BLOCKS * 10} kB at {tunnel_ended:.2f} s;"
            f" {draining} exited 0 at {exited:.2f} s"
        )
    assert marked_down < 2 * 1.0 + 1.0  # fall x inter, plus one check in flight
