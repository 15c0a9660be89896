"""The command line in a real child process: start, serve, stop, options, bad values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import get
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import address_of, client_env, proxy_process

SERVE = [sys.executable, "-m", "tinyproxy_py", "serve"]


def test_serve_prints_usage_line_forwards_and_exits_0_on_sigterm(origin: OriginServer) -> None:
    with proxy_process() as (proc, url):
        result = subprocess.run(
            ["curl", "-sS", "--fail", "-x", url, origin.url("/bytes/5000")],
            capture_output=True,
            env=client_env(),
            timeout=MUST_NOT_EXPIRE,
            check=True,
        )
        assert result.stdout == pattern_bytes(5000)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
    assert f"GET {origin.url('/bytes/5000')} 200 up=0 down=5000" in log
    assert "stopped" in log


def test_env_proxy_with_urllib_in_a_child(origin: OriginServer) -> None:
    with proxy_process("--log-level", "warning") as (proc, url):
        code = (
            f"import urllib.request; print(len(urllib.request.urlopen({origin.url('/bytes/1234')!r}).read()))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=client_env(HTTP_PROXY=url),
            timeout=MUST_NOT_EXPIRE,
            check=True,
        )
        assert result.stdout.strip() == "1234"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(MUST_NOT_EXPIRE) == 0


def test_help_lists_every_limit_with_its_default() -> None:
    result = subprocess.run([*SERVE, "--help"], capture_output=True, text=True, timeout=MUST_NOT_EXPIRE)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option, default in [
        ("--port", "8888"),
        ("--connect-timeout", "10.0"),
        ("--read-timeout", "60.0"),
        ("--pool-idle-timeout", "90.0"),
        ("--header-timeout", "10.0"),
        ("--client-idle-timeout", "30.0"),
        ("--tunnel-idle-timeout", "300.0"),
        ("--tunnel-linger", "30.0"),
        ("--max-clients", "256"),
        ("--max-tunnels", "10000"),
        ("--max-head-bytes", "65536"),
        ("--max-headers", "100"),
        ("--shutdown-grace", "10.0"),
    ]:
        assert option in text
        assert f"[default: {default}]" in text.split(option, 1)[1].split("--", 1)[0]


def test_bad_value_exits_2_with_a_reason() -> None:
    result = subprocess.run(
        [*SERVE, "--max-clients", "0"], capture_output=True, text=True, timeout=MUST_NOT_EXPIRE
    )
    assert result.returncode == 2
    assert "max_clients must be at least 1" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "setting"),
    [
        ("--auth-realm", "a\r\nb", "auth_realm"),
        ("--header-timeout", "nan", "header_timeout"),
        ("--via-name", "v\nX: 1", "via_name"),
        ("--add-header", "Content-Length: 5", "add_headers"),
    ],
)
def test_a_setting_that_would_break_every_request_is_refused_at_start(
    option: str, value: str, setting: str
) -> None:
    result = subprocess.run([*SERVE, option, value], capture_output=True, text=True, timeout=MUST_NOT_EXPIRE)
    assert result.returncode == 2, result.stderr
    assert f"Error: {setting} " in result.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with proxy_process() as (_, url):
        port = url.rsplit(":", 1)[1]
        result = subprocess.run(
            [*SERVE, "--port", port], capture_output=True, text=True, timeout=MUST_NOT_EXPIRE
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_workers_share_the_port_add_up_their_stats_and_stop_together(origin: OriginServer) -> None:
    with proxy_process("--workers", "2", "--log-level", "warning") as (proc, url):
        address = address_of(url)
        for _ in range(40):  # new connections: the kernel spreads them over both workers
            assert get(address, origin.url("/bytes/10")).status == 200

        def both_counted() -> bool:
            stats = json.loads(get(address, "http://tinyproxy-py.stats/json").body)
            return len(stats["workers"]) == 2 and stats["counters"].get("responses.2xx", 0) >= 40

        assert wait_until(both_counted)  # each worker publishes its share every second
        workers = json.loads(get(address, "http://tinyproxy-py.stats/json").body)["workers"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
