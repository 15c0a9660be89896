"""The command line with config files, the environment, reloads and the dev conveniences."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..kit.clients import recv_head
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.responses import Response, get
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import address_of, client_env, proxy_process

COMMAND = [sys.executable, "-m", "tinyproxy_py"]


def tinyproxy_conf(tmp_path: Path, extra: str = "") -> Path:
    """A tinyproxy.conf as Debian ships it, with log and pid files moved into tmp_path, and
    without its User and Group lines (test_privileges.py drops to a user)."""
    path = tmp_path / "tinyproxy.conf"
    path.write_text(
        "Port 8888\nTimeout 600\n"
        'DefaultErrorFile "/usr/share/tinyproxy/default.html"\n'
        'StatFile "/usr/share/tinyproxy/stats.html"\n'
        f'LogFile "{tmp_path / "proxy.log"}"\nLogLevel Info\n'
        f'PidFile "{tmp_path / "proxy.pid"}"\nMaxClients 100\n'
        'Allow 127.0.0.1\nAllow ::1\nViaProxyName "tinyproxy"\n' + extra
    )
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=MUST_NOT_EXPIRE, env=env or client_env()
    )


def test_unmodified_tinyproxy_config_serves_and_warns_with_file_and_line(
    tmp_path: Path, origin: OriginServer
) -> None:
    conf = tinyproxy_conf(tmp_path, "ConnectPort 443\n")
    with proxy_process("--config", str(conf)) as (proc, url):
        assert (tmp_path / "proxy.pid").read_text().strip() == str(proc.pid)
        response = get(address_of(url), origin.url("/bytes/100"))
        assert response.body == pattern_bytes(100)
        assert (response.header("Via") or "").startswith("1.1 tinyproxy (")
        proc.send_signal(signal.SIGHUP)  # the same file again: nothing new to warn about
        assert wait_until(lambda: "configuration reloaded" in (tmp_path / "proxy.log").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
        assert proc.stderr is not None
        terminal = proc.stderr.read()
    log = (tmp_path / "proxy.log").read_text()
    assert f"{conf}:3: DefaultErrorFile: not supported" in log and f"{conf}:4: StatFile: not supported" in log
    assert log.count(f"{conf}:4: StatFile: not supported") == 1  # said once, not at every SIGHUP
    assert f"warning: {conf}:4: StatFile: not supported" in terminal  # the log is a file: said here too
    assert f"GET {origin.url('/bytes/100')} 200" in log
    assert not (tmp_path / "proxy.pid").exists()


@pytest.mark.parametrize(("extra", "allowed"), [("", True), ("ConnectPort 0\n", False)], ids=["none", "zero"])
def test_connect_port_means_what_tinyproxy_conf_5_says(
    tmp_path: Path, origin: OriginServer, extra: str, allowed: bool
) -> None:
    """No ConnectPort line: CONNECT may reach every port. `ConnectPort 0`: no CONNECT."""
    conf = tinyproxy_conf(tmp_path, extra)
    with proxy_process("--config", str(conf)) as (_, url), socket.create_connection(address_of(url)) as sock:
        sock.settimeout(MUST_NOT_EXPIRE)
        sock.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status = recv_head(sock).split(b" ", 2)[1]
        if not allowed:
            assert status == b"403"
            return
        assert status == b"200"
        sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert Response(sock).body == pattern_bytes(10)  # the tunnel reaches the origin's port


def test_run_keeps_the_files_connect_ports(tmp_path: Path) -> None:
    """run's own defaults (any CONNECT port) are the lowest layer: a file's ConnectPort wins."""
    conf = tinyproxy_conf(tmp_path, "ConnectPort 443\n")
    probe = (
        "import os, socket, urllib.parse as u; p = u.urlsplit(os.environ['HTTPS_PROXY']);"
        "s = socket.create_connection((p.hostname, p.port));"
        "s.sendall(b'CONNECT 127.0.0.1:1 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n');"
        "print(s.recv(100).split()[1].decode())"
    )
    result = run("run", "--config", str(conf), "--", sys.executable, "-c", probe)
    assert result.stdout.strip() == "403", result.stdout + result.stderr


def test_check_config_says_what_a_missing_directive_means_here(tmp_path: Path) -> None:
    conf = tinyproxy_conf(tmp_path)  # Debian's: no Listen line, ConnectPort commented out
    result = run("check-config", str(conf))
    assert result.returncode == 0, result.stderr
    assert f"{conf}: no Listen line: listening on 127.0.0.1 only" in result.stderr
    assert f"{conf}: no ConnectPort line: CONNECT may reach every port" in result.stderr
    assert "connect_ports = any port" in result.stdout
    quiet = run("check-config", str(tinyproxy_conf(tmp_path, "Listen 127.0.0.1\nConnectPort 443\n")))
    assert "no Listen line" not in quiet.stderr and "no ConnectPort line" not in quiet.stderr


def test_bad_value_exits_2_naming_file_line_and_reason(tmp_path: Path) -> None:
    conf = tinyproxy_conf(tmp_path, "MaxClients lots\n")
    result = run("serve", "--config", str(conf))
    assert result.returncode == 2
    assert f"{conf}:12: MaxClients: takes a whole number" in result.stderr


def test_a_value_refused_only_by_another_setting_names_its_file_line(tmp_path: Path) -> None:
    """max_head_bytes is judged against max_line_bytes when Config is built, after the
    file was read: the error still points at the line that set it."""
    conf = tinyproxy_conf(tmp_path, "MaxHeadBytes 100\n")
    result = run("check-config", str(conf))
    assert result.returncode == 2
    assert f"Error: {conf}:12: MaxHeadBytes: must be at least max_line_bytes" in result.stderr


def test_check_config_prints_the_effective_settings_and_masks_passwords(tmp_path: Path) -> None:
    conf = tinyproxy_conf(tmp_path, 'BasicAuth alice "s3cret"\n')
    env = client_env(TINYPROXY_PY_READ_TIMEOUT="7")
    result = run("check-config", str(conf), env=env)
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    assert {
        "port = 8888",
        "max_clients = 100",
        "via_name = tinyproxy",
        "client_idle_timeout = 600.0",
    } <= lines
    assert "read_timeout = 7.0" in lines  # the environment wins over the file's Timeout
    assert "basic_auth = alice:***" in lines and "s3cret" not in result.stdout
    # The file has Allow lines; without them credentials would let any address try:
    assert "allow = 127.0.0.1, ::1" in lines
    assert f"warning: {conf}:4: StatFile: not supported" in result.stderr


def test_command_line_beats_environment_beats_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("Port 1\nMaxClients 5\nMaxTunnels 6\nHeaderTimeout 3\n")
    env = client_env(TINYPROXY_PY_PORT="0", TINYPROXY_PY_MAX_TUNNELS="60", TINYPROXY_PY_HEADER_TIMEOUT="4")
    result = run("check-config", str(conf), env=env)
    assert {"max_clients = 5", "max_tunnels = 60", "header_timeout = 4.0"} <= set(result.stdout.splitlines())
    proc = subprocess.Popen(
        [*COMMAND, "serve", "--config", str(conf), "--header-timeout", "9", "--max-tunnels", "61"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert "listening on http://127.0.0.1:" in proc.stdout.readline()  # port 0 from the env
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=MUST_NOT_EXPIRE)
    assert "max_tunnels=61" in err  # the command line won


def test_sighup_reloads_rules_without_dropping_connections(tmp_path: Path, origin: OriginServer) -> None:
    conf, log = tmp_path / "c.conf", tmp_path / "proxy.log"
    conf.write_text(f'Allow 127.0.0.1\nLogFile "{log}"\n')
    with (
        proxy_process("--config", str(conf)) as (proc, url),
        socket.create_connection(address_of(url), timeout=MUST_NOT_EXPIRE) as tunnel,
    ):
        tunnel.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert tunnel.recv(100).startswith(b"HTTP/1.1 200")
        conf.write_text(f'Allow 127.0.0.1\nLogFile "{log}"\nFilterHost "127.0.0.1"\n')
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: get(address_of(url), origin.url("/bytes/3")).status == 403)
        conf.write_text("MaxClients many\n")  # a bad file: the running configuration stays
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reload failed, keeping the running configuration" in log.read_text())
        assert get(address_of(url), origin.url("/bytes/3")).status == 403
        # The tunnel opened before both reloads still carries traffic.
        tunnel.sendall(b"GET /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert Response(tunnel).body == pattern_bytes(5)


def test_sigusr1_reopens_the_log_file(tmp_path: Path, origin: OriginServer) -> None:
    log = tmp_path / "proxy.log"
    with proxy_process("--log-file", str(log)) as (proc, url):
        get(address_of(url), origin.url("/bytes/1"))
        assert wait_until(lambda: "/bytes/1" in log.read_text())
        log.rename(tmp_path / "proxy.log.1")  # what logrotate does
        proc.send_signal(signal.SIGUSR1)
        assert wait_until(log.exists)
        get(address_of(url), origin.url("/bytes/2"))
        assert wait_until(lambda: "/bytes/2" in log.read_text())
    assert "/bytes/2" not in (tmp_path / "proxy.log.1").read_text()


def test_run_wraps_a_command_and_shows_what_it_fetched(origin: OriginServer) -> None:
    # NO_PROXY in the caller's environment would let curl bypass the proxy: run clears it.
    result = subprocess.run(
        [*COMMAND, "run", "--", "curl", "-sS", origin.url("/bytes/64")],
        capture_output=True,
        timeout=MUST_NOT_EXPIRE,
        env=client_env(NO_PROXY="127.0.0.1"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == pattern_bytes(64)
    assert f"GET {origin.url('/bytes/64')} 200 up=0 down=64".encode() in result.stderr
    failed = run("run", "--", "curl", "-sS", "--fail", origin.url("/status/404"))
    assert failed.returncode == 22  # curl's own exit status for an HTTP error with --fail


def test_run_exits_as_a_shell_does_when_the_command_cannot_run(tmp_path: Path) -> None:
    missing = run("run", "--", "no-such-command-tinyproxy-py")
    assert missing.returncode == 127
    assert "cannot run no-such-command-tinyproxy-py: No such file or directory" in missing.stderr
    plain_file = tmp_path / "not-executable"
    plain_file.write_text("#!/bin/sh\n")
    refused = run("run", "--", str(plain_file))
    assert refused.returncode == 126


def test_env_prints_export_lines() -> None:
    result = run("env", "--port", "3128")
    assert result.stdout.splitlines() == [
        f"export {name}=http://127.0.0.1:3128"
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
    ]
