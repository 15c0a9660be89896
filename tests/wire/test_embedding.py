"""Embedding: the pytest fixture from the plugin, and a vendored copy that runs without click."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from tinyproxy_py.pytest_plugin import RecordingProxy, tinyproxy_config

from ..kit.origins import OriginServer, pattern_bytes
from ..kit.waits import MUST_NOT_EXPIRE
from ..support import client_env

PACKAGE = Path(__file__).resolve().parents[2] / "tinyproxy_py"


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


def test_fixture_is_available_to_a_users_test_suite(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import threading, urllib.request
            from http.server import BaseHTTPRequestHandler, HTTPServer

            class Hello(BaseHTTPRequestHandler):
                def do_GET(self):
                    self.send_response(200)
                    self.send_header("Content-Length", "5")
                    self.end_headers()
                    self.wfile.write(b"hello")
                def log_message(self, *args):
                    pass

            def test_through_the_fixture(tinyproxy):
                server = HTTPServer(("127.0.0.1", 0), Hello)
                thread = threading.Thread(target=server.handle_request)
                thread.start()
                url = f"http://127.0.0.1:{server.server_port}/x"
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": tinyproxy.url}))
                assert opener.open(url, timeout=10).read() == b"hello"
                thread.join(10)
                server.server_close()
                assert [(r.method, r.status) for r in tinyproxy.wait_for_requests(1)] == [("GET", 200)]
            """
        )
    )
    result = subprocess.run(
        # -p no:tinyproxy drops the installed entry point, so the explicit -p works either way.
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:tinyproxy",
            "-p",
            "tinyproxy_py.pytest_plugin",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=MUST_NOT_EXPIRE * 3,
        env=client_env(PYTHONPATH=str(PACKAGE.parent)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


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
