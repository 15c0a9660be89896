"""deploy/nginx-stream.conf in a real nginx, in front of two proxies on loopback.

What docs/deploy.md says of it, on the wire: the proxies accept the PROXY header nginx
sends (v1), and once one instance has stopped, nginx passes every client on to the
other (open-source nginx has no health check: the refused connection is its signal).
Only the `listen` and `server` lines are changed, to loopback addresses.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.observe.accesslog import AccessRecord

from ..kit.clients import recv_all
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.servers import accepts, end_process, free_port
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..unit.test_deploy import DEPLOY, nginx_command, nginx_main_config

pytestmark = pytest.mark.usefixtures("no_leaks")
FETCHES = 4
BEHIND_NGINX = {"proxy_protocol": "v1", "proxy_protocol_from": ("127.0.0.1/32",)}


def on_loopback(config: str, port: int, instances: list[tuple[str, int]]) -> str:
    """The deploy file with its listen line and its two server lines moved to loopback."""
    config, listens = re.subn(r"^( +)listen 3128;$", rf"\1listen 127.0.0.1:{port};", config, flags=re.M)
    servers = iter(instances)
    config, count = re.subn(
        r"^( +)server 10\.0\.0\.1[12]:8888 ",
        lambda line: "{}server {}:{} ".format(line[1], *next(servers)),
        config,
        flags=re.M,
    )
    assert (listens, count) == (1, 2), "deploy/nginx-stream.conf changed shape"
    return config


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[list[tuple[str, int]]], int]]:
    """Start nginx with the deploy file in front of the given instances; yields its port."""
    started: list[subprocess.Popen[bytes]] = []

    def start(instances: list[tuple[str, int]]) -> int:
        port = free_port()  # nginx cannot be asked for one
        body = on_loopback((DEPLOY / "nginx-stream.conf").read_text(), port, instances)
        config = nginx_main_config(tmp_path, body)
        started.append(subprocess.Popen(nginx_command(config)))
        log = tmp_path / "error.log"
        assert wait_until(lambda: accepts(port), MUST_NOT_EXPIRE), log.read_text() if log.exists() else ""
        return port

    yield start
    for proc in started:
        end_process(proc, signal.SIGQUIT)  # graceful: workers finish, then exit


def fetch(port: int, url: str) -> bytes:
    """One request through nginx to the proxies behind it; the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return recv_all(sock)


def recording(proxy: ProxyServer) -> list[AccessRecord]:
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    return records


def test_nginx_sends_a_header_the_proxies_accept_and_skips_a_stopped_one(
    make_proxy: Callable[..., ProxyServer],
    origin: OriginServer,
    nginx: Callable[[list[tuple[str, int]]], int],
) -> None:
    first, second = make_proxy(**BEHIND_NGINX), make_proxy(**BEHIND_NGINX)
    served = [recording(first), recording(second)]
    port = nginx([first.address, second.address])
    for _ in range(FETCHES):
        assert fetch(port, origin.url("/bytes/7")).endswith(b"\r\n\r\n" + pattern_bytes(7))
    assert wait_until(lambda: sum(map(len, served)) == FETCHES)
    assert served[0] and served[1], "nginx spreads clients over both instances"
    assert {record.client for records in served for record in records} == {"127.0.0.1"}

    first.stop()  # its listener is closed: nginx's connects are refused
    before = [len(records) for records in served]
    for _ in range(FETCHES):
        assert fetch(port, origin.url("/bytes/7")).endswith(b"\r\n\r\n" + pattern_bytes(7))
    assert wait_until(lambda: len(served[1]) == before[1] + FETCHES), "all by the second instance"
    assert len(served[0]) == before[0]
