"""Embedding: the pytest fixture from the plugin, and a vendored copy that runs without click."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from tinyproxy_py.app.pytest_plugin import RecordingProxy, tinyproxy_config

from ..kit.clients import recv_head
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import Response
from ..kit.waits import MUST_NOT_EXPIRE
from ..support import client_env

PACKAGE = Path(__file__).resolve().parents[2] / "tinyproxy_py"
PLUGIN_ONLY = ("-p", "no:tinyproxy", "-p", "tinyproxy_py.app.pytest_plugin", "-p", "no:cacheprovider")


def test_recording_proxy_records_requests_and_leaves_nothing_behind(
    no_leaks: None, origin: OriginServer
) -> None:
    # The fixture's body, run under the fd/thread baseline check (no_leaks).
    config = tinyproxy_config.__wrapped__()  # type: ignore[attr-defined]
    with RecordingProxy(config) as proxy:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
        with opener.open(origin.url("/bytes/10"), timeout=MUST_NOT_EXPIRE) as response:
            assert response.read() == pattern_bytes(10)
        record = proxy.wait_for_requests(1)[0]
        assert (record.method, record.target, record.status, record.bytes_down) == (
            "GET",
            origin.url("/bytes/10"),
            200,
            10,
        )
        assert proxy.stats.counter("responses.2xx") == 1  # counted before the access record


def run_user_suite(folder: Path) -> subprocess.CompletedProcess[str]:
    """pytest in `folder`, a user's suite with the plugin (and no other conftest of ours)."""
    return subprocess.run(
        # -p no:tinyproxy drops the installed entry point, so the explicit -p works either way.
        [sys.executable, "-m", "pytest", "-q", *PLUGIN_ONLY],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=MUST_NOT_EXPIRE * 3,
        env=client_env(PYTHONPATH=str(PACKAGE.parent)),
    )


USER_FIXTURES = """
import ssl, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args):
        pass


def serve(context=None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path):
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return str(tmp_path / "ca.pem")


@pytest.fixture
def app_url():
    server = serve()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_app_url(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = serve(context)
    yield f"https://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
"""


def test_the_fixture_examples_in_the_docs_run_as_written(tmp_path: Path) -> None:
    """docs/embedding.md's pytest blocks, verbatim, against the fixtures they name: the
    installed plugin's fixture works in a user's own suite, as the docs show it."""
    text = (PACKAGE.parent / "docs" / "embedding.md").read_text()
    section = text.split("## In your tests", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 4
    (tmp_path / "conftest.py").write_text(USER_FIXTURES)
    for number, block in enumerate(blocks):
        (tmp_path / f"test_example_{number}.py").write_text(block)
    result = run_user_suite(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_vendored_copy_serves_without_click(tmp_path: Path, origin: OriginServer) -> None:
    vendor = tmp_path / "myapp" / "_vendor"
    shutil.copytree(PACKAGE, vendor / "proxy_copy", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    script = textwrap.dedent(
        f"""
        import sys, urllib.request
        sys.modules["click"] = None  # importing click now fails: the core must not need it
        from myapp._vendor.proxy_copy import Config, ProxyServer
        assert "tinyproxy_py" not in sys.modules
        with ProxyServer(Config(port=0)) as proxy:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({{"http": proxy.url}}))
            print(opener.open({origin.url("/bytes/7")!r}, timeout=10).read().hex())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=MUST_NOT_EXPIRE,
        env=client_env(PYTHONPATH=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == pattern_bytes(7).hex()


def test_ipv6_any_and_ipv4_any_listen_side_by_side(no_leaks: None) -> None:
    """`Listen ::` and `Listen 0.0.0.0` together: the IPv6 socket is made IPv6-only, as
    tinyproxy does, so the IPv4 one can bind the same port."""
    config = tinyproxy_config.__wrapped__().replace(host=("::", "0.0.0.0"), basic_auth=("u:p",))  # type: ignore[attr-defined]
    with RecordingProxy(config) as proxy:
        (v6, port), (v4, same) = proxy.addresses
        assert (v6, v4, same) == ("::", "0.0.0.0", port)
        for loopback in ("127.0.0.1", "::1"):
            with socket.create_connection((loopback, port), timeout=MUST_NOT_EXPIRE) as sock:
                sock.sendall(b"GET http://tinyproxy-py.stats/json HTTP/1.1\r\nHost: x\r\n\r\n")
                assert Response(sock).status == 407  # served (and guarded) on both


def test_a_failed_start_leaves_nothing_open(no_leaks: None) -> None:
    """The second address cannot be bound: the first listener, hub and pool are closed."""
    config = tinyproxy_config.__wrapped__().replace(host=("127.0.0.1", "192.0.2.1"), allow=("0.0.0.0/0",))  # type: ignore[attr-defined]
    proxy = RecordingProxy(config)
    with pytest.raises(OSError) as caught:
        proxy.start()
    assert caught.value.filename.startswith("192.0.2.1:")


def test_a_tunnels_record_comes_when_it_opens_and_again_complete_when_it_closes(
    no_leaks: None, origin: OriginServer
) -> None:
    config = tinyproxy_config.__wrapped__()  # type: ignore[attr-defined]
    with RecordingProxy(config) as proxy:
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert recv_head(sock).startswith(b"HTTP/1.1 200")
            (opened,) = proxy.wait_for_requests(1)
            assert (opened.method, opened.status, opened.ongoing, opened.cause) == ("CONNECT", 200, True, "")
            sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert Response(sock).body == pattern_bytes(10)
        (closed,) = proxy.wait_for_requests(1, done=True)
        assert closed is opened and not closed.ongoing
        assert (closed.cause, closed.bytes_down > 10) == ("eof", True)
