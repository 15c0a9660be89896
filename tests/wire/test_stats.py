"""The stats pages at the stat host: HTML for people, Prometheus text, JSON; and the access log."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tinyproxy_py import ProxyServer
from tinyproxy_py.observe.accesslog import AccessRecord

from ..kit.browser import CHROMIUM, SKIP_REASON, chromium
from ..kit.clients import client_from, recv_all, recv_head
from ..kit.origins import OriginServer
from ..kit.responses import Response, get, request_over
from ..kit.servers import free_port
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import client_env, proxy_process

STATS = "http://tinyproxy-py.stats"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def metrics(proxy: ProxyServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = get(proxy.address, f"{STATS}/metrics")
    assert response.status == 200
    assert response.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_parse_as_prometheus_text_and_count_traffic(proxy: ProxyServer, origin: OriginServer) -> None:
    assert get(proxy.address, origin.url("/bytes/10")).status == 200
    assert get(proxy.address, f"http://127.0.0.1:{free_port()}/").status == 502  # nothing listens
    # A response is counted just after it is sent, and a reused handler thread may
    # answer the scrape first: wait until both connections are done.
    assert wait_until(lambda: proxy.stats.gauge("clients") == 0)
    found = metrics(proxy)
    assert found["tinyproxy_py_responses_total"][(("class", "2xx"),)] == 1
    assert found["tinyproxy_py_responses_total"][(("class", "5xx"),)] == 1
    assert found["tinyproxy_py_errors_total"][(("cause", "refused"),)] == 1
    assert (
        found["tinyproxy_py_pool_connections"][
            (("origin", f"http://127.0.0.1:{origin.port}"), ("state", "idle"))
        ]
        == 1
    )
    assert found["tinyproxy_py_clients"][()] == 1  # the connection asking for the metrics
    assert found["tinyproxy_py_open_fds"][()] > found["tinyproxy_py_fds_accounted"][()] > 0


def test_curl_gets_metrics_through_the_proxy(proxy: ProxyServer) -> None:
    result = subprocess.run(
        ["curl", "-sS", "--fail", "-x", proxy.url, f"{STATS}/metrics"],
        capture_output=True,
        text=True,
        env=client_env(),
        timeout=MUST_NOT_EXPIRE,
        check=True,
    )
    names = {family.name for family in text_string_to_metric_families(result.stdout)}
    assert {"tinyproxy_py_uptime_seconds", "tinyproxy_py_tunnels", "tinyproxy_py_responses"} <= names


def test_json_has_the_same_data(proxy: ProxyServer, origin: OriginServer) -> None:
    get(proxy.address, origin.url("/bytes/10"))
    assert wait_until(lambda: proxy.stats.gauge("clients") == 0)  # that handler sees the close
    data = json.loads(get(proxy.address, f"{STATS}/json").body)
    assert data["counters"]["responses.2xx"] == 1
    assert data["pool"][f"http://127.0.0.1:{origin.port}"] == {"in_use": 0, "idle": 1}
    assert data["tunnels"] == [] and data["gauges"]["clients"] == 1


def test_origin_form_reaches_the_stats_too(proxy: ProxyServer) -> None:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b'"counters"' in recv_all(sock)


def test_tinyproxys_stat_host_is_answered_too_unless_another_is_set(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    """A tinyproxy user's http://tinyproxy.stats/ bookmark works, and is never sent to DNS."""
    default = make_proxy()
    assert json.loads(get(default.address, "http://tinyproxy.stats/json").body)["version"]
    custom = make_proxy(stat_host="stats.local", filter_hosts=("tinyproxy.stats",))
    assert get(custom.address, "http://stats.local/json").status == 200
    assert get(custom.address, "http://tinyproxy.stats/json").status == 403  # not ours: filtered


def test_unknown_stats_path_is_404_and_post_is_400(proxy: ProxyServer) -> None:
    assert get(proxy.address, f"{STATS}/nope").status == 404
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"POST {STATS}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".encode())
        assert recv_all(sock).startswith(b"HTTP/1.1 400")


def test_stats_behind_proxy_auth_when_configured(make_proxy: Callable[..., ProxyServer]) -> None:
    proxy = make_proxy(basic_auth=("u:p",))
    assert get(proxy.address, f"{STATS}/").status == 407


def test_the_stats_pages_are_for_stats_allow_clients_and_probes_for_everyone_allowed(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    """They list every client's targets and bytes: by default loopback clients alone may
    read them, while a balancer elsewhere still probes /healthz and /readyz."""
    proxy = make_proxy(stats_allow=("127.0.0.1",), allow=("127.0.0.0/8",))
    for path in ("/", "/metrics", "/json"):
        for form in (f"GET {path}", f"GET {STATS}{path}"):
            request = f"{form} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            with client_from("127.0.0.2", proxy.address) as sock:
                refused = request_over(sock, request)
            assert (refused.status, refused.header("X-Tinyproxy-Py-Cause")) == (403, "acl")
            assert b"tinyproxy_py" not in refused.body and b"127.0.0.1" not in refused.body
    for path in ("/healthz", "/readyz"):
        with client_from("127.0.0.2", proxy.address) as sock:
            assert request_over(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).status == 200
    assert get(proxy.address, f"{STATS}/metrics").status == 200  # from 127.0.0.1


def test_html_escapes_hostile_targets(proxy: ProxyServer) -> None:
    get(proxy.address, "http://127.0.0.1:1/<script>")
    page = get(proxy.address, f"{STATS}/").body.decode()
    assert "<script>" not in page.split("<style>")[0] + page.split("</style>")[1]


@pytest.mark.parametrize("style", ["common", "combined"])
def test_access_log_formats(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_proxy(access_log_format=style)
    with caplog.at_level(logging.INFO, logger="tinyproxy_py.access"):
        get(proxy.address, origin.url("/bytes/10"), headers="User-Agent: probe/1\r\nReferer: http://r/\r\n")
        assert wait_until(lambda: any(r.name == "tinyproxy_py.access" for r in caplog.records))
    line = next(r.getMessage() for r in caplog.records if r.name == "tinyproxy_py.access")
    request = f'"GET {origin.url("/bytes/10")} HTTP/1.1" 200 10'
    assert line.startswith("127.0.0.1 - - [") and request in line
    assert line.endswith('"http://r/" "probe/1"') == (style == "combined")


CLF_LINE = re.compile(r'[0-9a-f.:]+ - - \[[^]]+\] "[^"]*" (\d{3}|-) (\d+|-)( "[^"]*" "[^"]*")?')


@pytest.mark.parametrize("style", ["common", "combined"])
def test_an_access_log_file_holds_only_access_lines(origin: OriginServer, tmp_path: Path, style: str) -> None:
    """Log parsers read it: tunnels, their closes and the proxy's own news stay out."""
    access = tmp_path / "access.log"
    with proxy_process(
        "--access-log-format", style, "--access-log", str(access), "--connect-port", "any"
    ) as (
        proc,
        url,
    ):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        assert get((host, int(port)), origin.url("/bytes/10")).status == 200
        with socket.create_connection((host, int(port)), timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert recv_head(sock).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
    lines = access.read_text().splitlines()
    assert len(lines) == 2, lines  # the GET, and the tunnel when it closed
    assert all(CLF_LINE.fullmatch(line) for line in lines), lines


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_headless_chromium_renders_the_stats_page(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, tmp_path: Path
) -> None:
    # Chromium tries to reach outside hosts even with background features off: the proxy
    # under test refuses every target but loopback, so nothing leaves the machine.
    proxy = make_proxy(filter_hosts=("127.0.0.1", "localhost"), filter_mode="allow")
    get(proxy.address, origin.url("/bytes/10"))
    tunnel = socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE)  # open during the shot
    tunnel.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert tunnel.recv(100).startswith(b"HTTP/1.1 200")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "stats-page.png"
    dom = chromium(proxy.url, f"{STATS}/", tmp_path / "profile", shot, env=client_env())
    tunnel.close()
    assert "Responses by status class" in dom.stdout, dom.stderr[-2000:]
    assert f"<td>127.0.0.1:{origin.port}</td>" in dom.stdout  # the open tunnel's target
    assert f"http://127.0.0.1:{origin.port}" in dom.stdout
    assert shot.exists() and shot.stat().st_size > 10_000


def test_the_page_has_exactly_the_sections_the_docs_name(proxy: ProxyServer) -> None:
    """docs/operations.md lists the HTML page's sections by their headings."""
    page = get(proxy.address, f"{STATS}/").body.decode()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    listed = re.search(r"The HTML page's sections, top to bottom: (.*?)\.\n", docs, re.S)
    assert listed is not None, "docs/operations.md no longer lists the sections"
    assert headings == [h.strip() for h in re.findall(r"\*\*(.*?)\*\*", listed[1])]


@pytest.mark.parametrize("url", ["http://tinyproxy-py.stats/healthz", "http://tinyproxy-py.stats/readyz"])
def test_health_probes_answer_without_credentials_but_within_the_acl(
    make_proxy: Callable[..., ProxyServer], url: str
) -> None:
    """Load balancers probe them: no credentials, cheap, and still only for allowed clients."""
    proxy = make_proxy(basic_auth=("u:p",))
    records: list[AccessRecord] = []
    proxy.on_access = records.append
    assert (get(proxy.address, url).status, get(proxy.address, url).body) == (200, b"ok\n")
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        path = "/" + url.rsplit("/", 1)[1]
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert Response(sock).status == 200  # origin-form, straight to the proxy
    assert records == []  # a balancer probes every second: not one access log line each
    assert get(proxy.address, "http://tinyproxy-py.stats/json").status == 407  # the rest needs them
    denied = make_proxy(deny=("127.0.0.1",))
    assert get(denied.address, url).status == 403


def test_readyz_is_503_once_the_drain_begins_while_healthz_stays_200(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    proxy = make_proxy()
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        request = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request)
        assert Response(sock).status == 200
        proxy.drain()  # what stop() (SIGTERM) and SIGUSR2 do first
        sock.sendall(request)
        assert Response(sock).status == 503


def test_the_page_says_when_a_tunnel_closed_and_drops_origins_without_connections(
    proxy: ProxyServer, origin: OriginServer
) -> None:
    assert get(proxy.address, origin.url("/close/10")).status == 200  # its connection is not kept
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as tunnel:
        tunnel.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert tunnel.recv(100).startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: proxy.stats.gauge("tunnels") == 0)
    assert wait_until(
        lambda: proxy.pool.usage().get(f"http://127.0.0.1:{origin.port}", {}).get("idle", 0) == 0
    )
    page = get(proxy.address, f"{STATS}/").body.decode()
    closed = page.split("<h2>Recently closed tunnels</h2>", 1)[1]
    assert re.search(r"<td>\d+\.\d s ago \(\d\d:\d\d:\d\d\)</td>", closed), closed
    pool = page.split("<h2>Connection pool</h2>", 1)[1].split("<h2>", 1)[0]
    assert f"127.0.0.1:{origin.port}" not in pool  # in use 0, idle 0: not a row
