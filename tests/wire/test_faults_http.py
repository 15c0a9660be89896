"""HTTP-level faults with real clients: status, fail_first, slow_head, truncate,
header_delay; the JSON control endpoint; --fault on the command line."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import pytest
import requests
import urllib3
from urllib3.util.retry import Retry

from tinyproxy_py import ProxyServer

from ..kit.clients import read_response, recv_head, request
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.resolver import offline_resolver
from ..kit.waits import MUST_NOT_EXPIRE
from ..support import client_env, proxy_process

STATS = "http://tinyproxy-py.stats"


def proxies(proxy: ProxyServer) -> dict[str, str]:
    return {"http": proxy.url, "https": proxy.url}


def elapsed(call: object) -> float:
    started = time.monotonic()
    call()  # type: ignore[operator]
    return time.monotonic() - started


def test_status_answers_without_the_origin(proxy: ProxyServer, origin: OriginServer) -> None:
    with proxy.faults.add(
        host="127.0.0.1", kind="status", status=429, retry_after="3", body="slow down"
    ) as fault:
        reply = requests.get(origin.url("/bytes/10"), proxies=proxies(proxy), timeout=MUST_NOT_EXPIRE)
    assert (reply.status_code, reply.headers["Retry-After"], reply.text) == (429, "3", "slow down")
    assert origin.requests == [] and fault.applied == 1
    assert proxy.stats.snapshot()["counters"]["faults.status"] == 1
    assert requests.get(origin.url("/bytes/10"), proxies=proxies(proxy), timeout=MUST_NOT_EXPIRE).ok


def test_a_client_with_retries_gets_through_fail_first(proxy: ProxyServer, origin: OriginServer) -> None:
    retry = Retry(total=3, status_forcelist=[503], backoff_factor=0)
    with (
        urllib3.ProxyManager(proxy.url, retries=retry) as http,
        proxy.faults.add(host="127.0.0.1", kind="fail_first", n=2, path="/bytes/") as fault,
    ):
        reply = http.request("GET", origin.url("/bytes/100"), timeout=MUST_NOT_EXPIRE)
        assert (reply.status, reply.data) == (200, pattern_bytes(100))
        assert fault.applied == 2 and fault.rule.matched == 3
        assert len(origin.requests) == 1  # the two failures never reached it


def test_header_delay_holds_the_first_byte(proxy: ProxyServer, origin: OriginServer) -> None:
    url = origin.url("/bytes/100")
    plain = elapsed(lambda: requests.get(url, proxies=proxies(proxy), timeout=MUST_NOT_EXPIRE))
    with proxy.faults.add(host="127.0.0.1", kind="header_delay", ms=300):
        delayed = elapsed(lambda: requests.get(url, proxies=proxies(proxy), timeout=MUST_NOT_EXPIRE))
    assert 0.25 <= delayed - plain <= 0.35


def test_slow_head_dribbles_the_head_and_a_read_timeout_fires(
    proxy: ProxyServer, origin: OriginServer
) -> None:
    with proxy.faults.add(host="127.0.0.1", kind="slow_head", size=16, ms=40):
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(request("GET", origin.url("/bytes/100")))
            started, pieces = time.monotonic(), []
            while b"\r\n\r\n" not in b"".join(pieces):
                pieces.append(sock.recv(65536))
            took = time.monotonic() - started
        head = b"".join(pieces).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        assert len(pieces) >= len(head) // 16 - 1  # arrived in pieces of 16 bytes
        assert took >= 0.04 * (len(head) // 16 - 1) - 0.05
    with (
        proxy.faults.add(host="127.0.0.1", kind="slow_head", size=1, ms=600),
        pytest.raises(requests.exceptions.ReadTimeout),
    ):
        requests.get(origin.url("/bytes/100"), proxies=proxies(proxy), timeout=(2, 0.3))


def test_truncate_cuts_the_body_with_a_reset(proxy: ProxyServer, origin: OriginServer) -> None:
    with proxy.faults.add(host="127.0.0.1", kind="truncate", bytes=1000):
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(request("GET", origin.url("/bytes/5000")))
            head = recv_head(sock)
            body = head.split(b"\r\n\r\n", 1)[1]
            with pytest.raises(ConnectionResetError):
                while chunk := sock.recv(65536):
                    body += chunk
        assert body == pattern_bytes(1000)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(origin.url("/bytes/5000"), proxies=proxies(proxy), timeout=MUST_NOT_EXPIRE)
    counters = proxy.stats.snapshot()["counters"]
    assert counters["faults.truncate"] == counters["errors.fault"] == 2  # not a client's abort
    assert counters["responses.2xx"] == 2  # the access line has the 200 that was cut


def test_status_answers_a_connect_too(proxy: ProxyServer, origin: OriginServer) -> None:
    fault = proxy.faults.add(host="127.0.0.1", kind="status", status=503)
    with fault, socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, _, _ = read_response(sock)
    assert status == 503


def test_the_json_endpoint_adds_lists_and_removes_rules(proxy: ProxyServer, origin: OriginServer) -> None:
    via = proxies(proxy)
    added = requests.post(
        f"{STATS}/faults", json={"rule": "host=127.0.0.1 kind=status status=418"}, proxies=via
    )
    assert added.status_code == 201, added.text
    rule_id = added.json()["id"]
    assert requests.get(origin.url("/bytes/1"), proxies=via).status_code == 418
    listed = requests.get(f"{STATS}/faults", proxies=via).json()["rules"]
    assert [(r["id"], r["kind"], r["applied"]) for r in listed] == [(rule_id, "status", 1)]
    assert requests.delete(f"{STATS}/faults/{rule_id}", proxies=via).status_code == 200
    assert requests.get(origin.url("/bytes/1"), proxies=via).status_code == 200
    assert requests.delete(f"{STATS}/faults/{rule_id}", proxies=via).status_code == 404
    bad = requests.post(f"{STATS}/faults", json={"host": "h", "kind": "latency"}, proxies=via)
    assert (bad.status_code, bad.json()["error"]) == (400, "latency needs ms=")
    assert requests.post(f"{STATS}/faults", data=b"not json", proxies=via).status_code == 400
    requests.post(f"{STATS}/faults", json={"host": "a", "kind": "refuse"}, proxies=via)
    assert requests.delete(f"{STATS}/faults", proxies=via).json() == {"rules": []}
    assert proxy.faults.rules() == []


def test_the_json_endpoint_keeps_the_stats_pages_access_rule(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy(stats_allow=("10.0.0.0/8",))
    reply = requests.post(f"{STATS}/faults", json={"host": "a", "kind": "refuse"}, proxies=proxies(proxy))
    assert reply.status_code == 403 and proxy.faults.rules() == []


def test_fault_on_the_command_line(origin: OriginServer) -> None:
    rule = "host=127.0.0.1 kind=status status=418 body=teapot"
    with proxy_process("--fault", rule) as (proc, url):
        result = subprocess.run(
            ["curl", "-sS", "-x", url, "-w", " %{http_code}", origin.url("/bytes/5")],
            capture_output=True, text=True, env=client_env(), timeout=MUST_NOT_EXPIRE, check=True,
        )  # fmt: skip
        listed = subprocess.run(
            ["curl", "-sS", "-x", url, f"{STATS}/faults"],
            capture_output=True, text=True, env=client_env(), timeout=MUST_NOT_EXPIRE, check=True,
        )  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
    assert result.stdout == "teapot 418"
    assert json.loads(listed.stdout)["rules"][0]["source"] == "config"
    assert "fault rule 1 in force: host=127.0.0.1 kind=status status=418 body=teapot" in log
    assert "fault status (rule 1, #1) applied to GET 127.0.0.1" in log


def test_a_seeded_rule_gives_the_same_outcomes_on_two_proxies(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    rule = "host=127.0.0.1 kind=status status=503 p=0.5 seed=1234"
    runs = []
    for _ in range(2):
        proxy = make_proxy(faults=(rule,))
        with requests.Session() as session:
            replies = [session.get(origin.url("/bytes/1"), proxies=proxies(proxy)) for _ in range(24)]
        runs.append([reply.status_code for reply in replies])
    assert runs[0] == runs[1]
    assert 4 <= runs[0].count(503) <= 20  # a mix, as p=0.5 draws it


def test_a_black_hole_times_out_quietly_at_the_response_deadline(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(offline_resolver({"api.test": ["127.0.0.1"]}), response_header_timeout=1.0)
    with proxy.faults.add(host="API.test", kind="timeout"):  # hosts match in any case
        url = origin.url("/bytes/10").replace("127.0.0.1", "Api.Test")
        started, cpu = time.monotonic(), time.process_time()
        reply = requests.get(url, proxies=proxies(proxy), timeout=MUST_NOT_EXPIRE)
        took, spent = time.monotonic() - started, time.process_time() - cpu
    assert reply.status_code == 504 and 0.9 <= took <= 1.5
    assert spent < 0.3  # waited, not spun (this process is the proxy too)
