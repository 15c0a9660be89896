"""Why a tunnel closed, as real clients end real TLS exchanges with nginx (issue 14).

`tunnels_closed_total{reason="reset"}` must reveal broken tunnels, so a healthy fetch
has to be recorded `eof` however its client closes: curl closes cleanly, urllib and
requests often leave nginx's close_notify unread and their kernel answers it with RST.
A target that resets in the middle of a transfer stays `reset`.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import trustme

from tinyproxy_py import ProxyServer

from ..kit.clients import abort, recv_head
from ..kit.servers import accepts, end_process, scripted_server
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import client_env

pytestmark = pytest.mark.usefixtures("no_leaks")
FETCHES = 5  # per client: the order of the last FIN and RST varies from run to run


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[str]:
    """nginx serving https://127.0.0.1:PORT/ with a trustme certificate; yields the URL."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        pytest.skip("nginx is not installed (.ci/run installs it)")
    root = tmp_path_factory.mktemp("nginx")
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
    with socket.socket() as probe:  # a free port; nginx cannot be asked for one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = " ".join(
        f"{kind}_temp_path {root};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (root / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;\n"
        f"events {{}}\nhttp {{ access_log off; {temp}\n"
        f"  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {root}/server.pem;"
        f" ssl_certificate_key {root}/server.pem; location / {{ return 200 'hello\\n'; }} }} }}\n"
    )
    proc = subprocess.Popen(
        [binary, "-p", str(root), "-e", str(root / "error.log"), "-c", str(root / "nginx.conf")]
    )
    try:
        assert wait_until(lambda: accepts(port), MUST_NOT_EXPIRE), (root / "error.log").read_text()
        yield f"https://127.0.0.1:{port}/"
    finally:
        end_process(proc, signal.SIGQUIT)  # graceful: workers finish, then exit


def fetch_with_curl(proxy: str, url: str, ca_file: Path) -> bytes:
    command = ["curl", "-sS", "--cacert", str(ca_file), "-x", proxy, url]
    return subprocess.run(
        command, capture_output=True, timeout=MUST_NOT_EXPIRE, env=client_env(), check=True
    ).stdout


def fetch_with_requests(proxy: str, url: str, ca_file: Path) -> bytes:
    return requests.get(url, proxies={"https": proxy}, verify=str(ca_file), timeout=MUST_NOT_EXPIRE).content


def fetch_with_urllib(proxy: str, url: str, ca_file: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(url, timeout=MUST_NOT_EXPIRE) as response:
        return bytes(response.read())


def reasons(proxy: ProxyServer, count: int) -> list[str]:
    """The close reasons of the first `count` tunnels, once all of them have closed."""
    assert wait_until(lambda: len(proxy.hub.closed_tunnels()) >= count and proxy.hub.count == 0)
    return [record["reason"] for record in proxy.hub.closed_tunnels()]


@pytest.mark.parametrize(
    "fetch", [fetch_with_curl, fetch_with_requests, fetch_with_urllib], ids=["curl", "requests", "urllib"]
)
def test_a_healthy_https_fetch_is_recorded_as_an_end(
    make_proxy: Callable[..., ProxyServer],
    nginx: str,
    ca_file: Path,
    fetch: Callable[[str, str, Path], bytes],
) -> None:
    proxy = make_proxy()
    for _ in range(FETCHES):
        assert fetch(proxy.url, nginx, ca_file) == b"hello\n"
    assert reasons(proxy, FETCHES) == ["eof"] * FETCHES


def test_a_target_that_resets_mid_transfer_is_recorded_as_a_reset(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    def cut_off(sock: socket.socket) -> None:
        sock.sendall(b"x" * 10_000)  # the start of a transfer, then an abort
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    proxy = make_proxy()
    with scripted_server(cut_off) as target, socket.create_connection(proxy.address) as client:
        client.settimeout(MUST_NOT_EXPIRE)
        client.sendall(f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_head(client).startswith(b"HTTP/1.1 200")
        assert reasons(proxy, 1) == ["reset"]


@pytest.mark.parametrize(("target_ends", "reason"), [(True, "eof"), (False, "reset")])
def test_a_client_that_resets_after_everything_was_delivered_waits_for_the_target(
    make_proxy: Callable[..., ProxyServer], target_ends: bool, reason: str
) -> None:
    """The client's RST can beat the target's FIN by a moment (that race is what made some
    healthy urllib fetches look reset): if the target ends soon after, it was an end."""

    def answer(sock: socket.socket) -> None:
        sock.sendall(b"hello")
        if target_ends:
            time.sleep(0.1)  # its FIN comes after the client has already gone
        else:
            target.release.wait(MUST_NOT_EXPIRE)  # it would have gone on

    proxy = make_proxy()
    with scripted_server(answer) as target:
        client = socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE)
        client.sendall(f"CONNECT 127.0.0.1:{target.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = recv_head(client)
        while not received.endswith(b"hello"):
            received += client.recv(100)
        abort(client)  # an RST, with nothing left undelivered either way
        assert reasons(proxy, 1) == [reason]
