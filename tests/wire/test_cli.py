"""The command line in a real child process: start, serve, stop, options, bad values."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tinyproxy_py import AccessRecord, ProxyServer
from tinyproxy_py.app.cli import _announce
from tinyproxy_py.app.workers import RESTART_AFTER

from ..kit.clients import recv_head
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


def test_curl_follows_the_banners_exports(
    proxy: ProxyServer, origin: OriginServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """curl reads only the lower-case http_proxy: an upper-case export alone would send
    `curl http://...` straight to the origin, past the proxy, without a word."""
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    _announce(proxy)
    exports = capsys.readouterr().out.split("use it with: ", 1)[1].strip()
    assert exports.startswith("export http_proxy=") and "HTTPS_PROXY=" in exports
    url = origin.url("/bytes/10")
    result = subprocess.run(
        ["sh", "-c", f"{exports}; curl -sS --fail {url}"],
        capture_output=True,
        env=client_env(),
        timeout=MUST_NOT_EXPIRE,
        check=True,
    )
    assert result.stdout == pattern_bytes(10)
    assert [r.target for r in records] == [url]  # through the proxy


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


def test_run_help_shows_what_run_does() -> None:
    """`run` listens on a free port, lets CONNECT reach ports as serve does (auto: any,
    for this machine's clients), and has no serve-only options."""
    command = [sys.executable, "-m", "tinyproxy_py", "run", "--help"]
    text = " ".join(
        subprocess.run(command, capture_output=True, text=True, timeout=MUST_NOT_EXPIRE).stdout.split()
    )
    assert "[default: 0]" in text.split("--port", 1)[1].split("--", 1)[0]
    assert "[default: (auto)]" in text.split("--connect-port", 1)[1].split("--", 1)[0]
    assert "--workers" not in text and "--pid-file" not in text


def test_bad_value_exits_2_with_a_reason() -> None:
    result = subprocess.run(
        [*SERVE, "--max-clients", "0"], capture_output=True, text=True, timeout=MUST_NOT_EXPIRE
    )
    assert result.returncode == 2
    assert "Error: --max-clients: must be at least 1" in result.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--auth-realm", "a\r\nb"),
        ("--header-timeout", "nan"),
        ("--via-name", "v\nX: 1"),
        ("--add-header", "Content-Length: 5"),
        ("--allow", "10.0.0.0/33"),
    ],
)
def test_a_setting_that_would_break_every_request_is_refused_at_start(option: str, value: str) -> None:
    result = subprocess.run([*SERVE, option, value], capture_output=True, text=True, timeout=MUST_NOT_EXPIRE)
    assert result.returncode == 2, result.stderr
    assert f"Error: {option}: " in result.stderr


def test_one_proxy_listens_on_ipv4_and_ipv6_at_once(origin: OriginServer) -> None:
    with proxy_process("--host", "127.0.0.1", "--host", "::1") as (_, url):
        port = url.rsplit(":", 1)[1]
        for proxy in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
            fetched = subprocess.run(
                ["curl", "-sS", "-x", proxy, origin.url("/bytes/7")],
                capture_output=True,
                timeout=MUST_NOT_EXPIRE,
                env=client_env(),
                check=True,
            )
            assert fetched.stdout == pattern_bytes(7)
        stats = json.loads(get(("::1", int(port)), "http://tinyproxy-py.stats/json").body)
    assert stats["listening"] == f"http://127.0.0.1:{port}, http://[::1]:{port}"


def test_an_address_that_cannot_be_bound_stops_the_start_naming_it() -> None:
    result = subprocess.run(
        # 192.0.2.1 is TEST-NET-1: no address of this machine. The allow rule only gets
        # past the exposure check, which comes first.
        [*SERVE, "--port", "0", "--host", "127.0.0.1", "--host", "192.0.2.1", "--allow", "192.0.2.0/24"],
        capture_output=True,
        text=True,
        timeout=MUST_NOT_EXPIRE,
    )
    assert result.returncode == 1
    assert re.search(r"Error: cannot listen on 192\.0\.2\.1:\d+: ", result.stderr), result.stderr


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


def test_a_worker_that_dies_is_replaced_and_the_others_serve_on(origin: OriginServer) -> None:
    with proxy_process("--workers", "2", "--log-level", "warning") as (proc, url):
        address = address_of(url)

        def workers() -> list[int]:
            try:
                return sorted(json.loads(get(address, "http://tinyproxy-py.stats/json").body)["workers"])
            except ConnectionResetError:  # queued for the killed worker: the kernel resets those
                return []

        assert wait_until(lambda: len(workers()) == 2)
        first = workers()
        time.sleep(RESTART_AFTER)  # one that dies sooner is a broken start: all would stop
        os.kill(first[0], signal.SIGKILL)  # as the OOM killer would
        assert wait_until(lambda: len(set(workers()) - set(first)) == 1 and first[1] in workers())
        for _ in range(20):
            assert get(address, origin.url("/bytes/10")).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
        assert proc.stderr is not None
        assert f"worker {first[0]} ended (exit status -9)" in proc.stderr.read()


def counters(metrics: bytes) -> dict[str, float]:
    """Every counter sample of a /metrics page: 'name{labels}' -> value."""
    samples = (line.rsplit(" ", 1) for line in metrics.decode().splitlines() if line and line[0] != "#")
    return {key: float(value) for key, value in samples if key.split("{", 1)[0].endswith("_total")}


def test_counters_never_go_down_between_scrapes_of_two_workers(origin: OriginServer) -> None:
    """Prometheus reads a decrease as a restart; whichever worker answers, totals only grow."""
    with proxy_process("--workers", "2", "--log-level", "warning") as (_, url):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        proxy = (host, int(port))
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                get(proxy, origin.url("/bytes/10"))

        background = threading.Thread(target=traffic)
        background.start()
        try:
            scrapes = []
            for _ in range(20):  # each on a new connection: both workers answer some
                scrapes.append(counters(get(proxy, "http://tinyproxy-py.stats/metrics").body))
                time.sleep(0.1)
        finally:
            stop.set()
            background.join(MUST_NOT_EXPIRE)
    assert scrapes[-1]['tinyproxy_py_responses_total{class="2xx"}'] > scrapes[0].get(
        'tinyproxy_py_responses_total{class="2xx"}', 0
    )
    for earlier, later in itertools.pairwise(scrapes):
        for key, value in earlier.items():
            assert later.get(key, 0) >= value, f"{key} went from {value} to {later.get(key)}"


def test_the_open_files_warning_names_the_values_that_fit() -> None:
    with proxy_process("--max-tunnels", "2000", open_files=4096) as (proc, _):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
    # 2 x 256 clients + 100 x 10 pooled = 1512; (4096 - 1512) / 2 tunnels fit.
    assert "lower --max-tunnels to 1292, or raise the limit to 5512" in log


@pytest.mark.parametrize(
    ("args", "reach", "status"),
    [((), "any port", b"200"), (("--allow", "127.0.0.1", "--allow", "10.0.0.0/8"), "ports 443, 563", b"403")],
    ids=["local-clients-only", "opened-to-a-network"],
)
def test_serve_lets_connect_reach_a_dev_port_while_only_local_clients_may_connect(
    origin: OriginServer, args: tuple[str, ...], reach: str, status: bytes
) -> None:
    """One rule for serve, run and the fixture: a local HTTPS server on an ephemeral port
    is reachable out of the box; a proxy opened to a network keeps to 443 and 563."""
    with proxy_process(*args) as (proc, url), socket.create_connection(address_of(url)) as sock:
        sock.settimeout(MUST_NOT_EXPIRE)
        sock.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_head(sock).split(b" ", 2)[1] == status
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
        assert proc.stderr is not None
        assert f"CONNECT may reach {reach}" in proc.stderr.read()
