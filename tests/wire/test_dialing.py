"""Where the proxy connects, and how (issue 15): Happy Eyeballs, the destination policy on
resolved addresses, loops in any spelling, malformed names, host overrides, and name
lookups that hang (bounded by the connect timeout, and in number).

No DNS: every proxy here resolves with tests/kit/resolver.py, whose table stands in for
a name server (a black hole first, a working address second, a metadata address).
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.errors import Overloaded
from tinyproxy_py.net.dialer import Dialer

from ..kit.clients import client_from, connect_request, recv_head
from ..kit.origins import OriginServer, pattern_bytes
from ..kit.resolver import Resolved, offline_resolver
from ..kit.responses import Response, get
from ..kit.servers import stalled_listener
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import client_env

DELAY = 0.25  # the attempt delay; the connect timeout of these proxies is 2 s


@pytest.fixture
def black_hole() -> Iterator[Callable[[str], int]]:
    """Ports on loopback whose accept queue is full: a connect there is never answered."""
    with ExitStack() as stack:
        yield lambda host="127.0.0.1": stalled_listener(stack, host=host)


def connect_status(address: tuple[str, int], target: str, source: str = "127.0.0.1") -> int:
    with client_from(source, address) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return int(recv_head(sock).split(b" ", 2)[1])


# --- Happy Eyeballs ----------------------------------------------------------------------------


def test_curl_through_a_name_whose_first_address_black_holes_answers_in_the_attempt_delay(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, black_hole: Callable[..., int]
) -> None:
    table = {"dual.test": [("127.0.0.1", black_hole()), ("127.0.0.1", origin.port)]}
    proxy = make_proxy(resolver=offline_resolver(table), attempt_delay=DELAY)
    started = time.monotonic()
    fetched = subprocess.run(
        ["curl", "-sS", "-x", proxy.url, f"http://dual.test:{origin.port}/bytes/10"],
        capture_output=True,
        timeout=MUST_NOT_EXPIRE,
        env=client_env(),
        check=True,
    )
    elapsed = time.monotonic() - started
    print(f"curl through dual.test (first address a black hole): {elapsed:.3f} s")
    assert fetched.stdout == pattern_bytes(10)
    assert DELAY <= elapsed < 1.0  # the attempt delay, not the 2 s connect timeout
    assert proxy.stats.counter("connect_attempts") == 2


def test_a_connect_target_and_a_parent_proxy_are_raced_the_same_way(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, black_hole: Callable[..., int]
) -> None:
    parent = make_proxy()
    table = {
        "dual.test": [("127.0.0.1", black_hole()), ("127.0.0.1", origin.port)],
        "parent.test": [("127.0.0.1", black_hole()), parent.address],
    }
    direct = make_proxy(resolver=offline_resolver(table), attempt_delay=DELAY)
    chained = make_proxy(
        resolver=offline_resolver(table), attempt_delay=DELAY, upstream=("http://parent.test:3128",)
    )
    for proxy in (direct, chained):
        started = time.monotonic()
        assert (
            connect_status(proxy.address, f"127.0.0.1:{origin.port}" if proxy is chained else "dual.test:1")
            == 200
        )
        assert time.monotonic() - started < 1.0


def test_broken_ipv6_falls_back_to_ipv4_and_is_counted(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, black_hole: Callable[..., int]
) -> None:
    table = {"dual.test": [("::1", black_hole("::1")), ("127.0.0.1", origin.port)]}
    proxy = make_proxy(resolver=offline_resolver(table), attempt_delay=DELAY)
    started = time.monotonic()
    assert get(proxy.address, "http://dual.test/bytes/3").body == pattern_bytes(3)
    assert time.monotonic() - started < 1.0
    assert proxy.stats.counter("connect_fallbacks") == 1
    metrics = get(proxy.address, "http://tinyproxy-py.stats/metrics").body.decode()
    assert "tinyproxy_py_connect_fallbacks_total 1" in metrics


def test_every_address_black_holed_is_504_at_the_connect_timeout(
    make_proxy: Callable[..., ProxyServer], black_hole: Callable[..., int]
) -> None:
    table = {"dual.test": [("127.0.0.1", black_hole()), ("127.0.0.1", black_hole())]}
    proxy = make_proxy(resolver=offline_resolver(table), attempt_delay=DELAY, connect_timeout=0.8)
    started = time.monotonic()
    response = get(proxy.address, "http://dual.test/")
    assert (response.status, response.header("X-Tinyproxy-Py-Cause")) == (504, "connect-timeout")
    assert 0.8 <= time.monotonic() - started < 0.8 + 1.0


# --- the destination policy --------------------------------------------------------------------

REFUSED_FROM_AFAR = ["127.0.0.1", "localhost", "local.test", "meta.test", "[::ffff:127.0.0.1]"]


@pytest.mark.parametrize("host", REFUSED_FROM_AFAR)
def test_a_client_from_another_machine_cannot_reach_loopback_or_metadata(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, host: str
) -> None:
    table = {"local.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"]}
    proxy = make_proxy(resolver=offline_resolver(table), local_clients=("127.0.0.1/32",))
    target = f"{host}:{origin.port}"
    assert connect_status(proxy.address, target, source="127.0.0.2") == 403
    with client_from("127.0.0.2", proxy.address) as sock:
        sock.sendall(f"GET http://{target}/bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        refused = Response(sock)
    assert (refused.status, refused.header("X-Tinyproxy-Py-Cause")) == (403, "destination")
    assert connect_status(proxy.address, f"127.0.0.1:{origin.port}") == 200  # a local client may
    assert origin.requests == []
    assert proxy.stats.counter("errors.destination") == 2


def test_allow_destination_opens_what_the_default_refuses(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(local_clients=("127.0.0.1/32",), allow_destinations=("127.0.0.0/8",))
    assert connect_status(proxy.address, f"127.0.0.1:{origin.port}", source="127.0.0.2") == 200


def test_deny_destination_applies_to_every_client(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(deny_destinations=("127.0.0.1/32",))
    assert connect_status(proxy.address, f"127.0.0.1:{origin.port}") == 403


def test_a_pooled_connection_is_judged_again_for_the_next_client(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """A local client's idle connection to a loopback origin is no way in for another."""
    proxy = make_proxy(local_clients=("127.0.0.1/32",))
    assert get(proxy.address, origin.url("/bytes/3")).status == 200  # pooled now
    with client_from("127.0.0.2", proxy.address) as sock:
        sock.sendall(f"GET {origin.url('/bytes/3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert Response(sock).status == 403
    assert len(origin.requests) == 1


# --- loops in any spelling, malformed names -------------------------------------------------------

LOOP_SPELLINGS = [
    "127.0.0.1",
    "localhost",
    "2130706433",
    "127.1",
    "0x7f000001",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
]


@pytest.mark.parametrize("spelling", LOOP_SPELLINGS)
def test_every_spelling_of_the_proxy_itself_is_508(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, spelling: str
) -> None:
    proxy = make_proxy()
    assert connect_status(proxy.address, f"{spelling}:{proxy.address[1]}") == 508
    assert get(proxy.address, f"http://{spelling}:{proxy.address[1]}/").status == 508
    assert get(proxy.address, origin.url("/bytes/3")).body == pattern_bytes(3)  # still serving


@pytest.mark.parametrize("host", ["a..b", ".a", "a" * 64 + ".test", "a." * 127 + "test"])
def test_a_malformed_name_is_400_for_connect_and_plain_http(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, host: str
) -> None:
    proxy = make_proxy()
    assert connect_status(proxy.address, f"{host}:443") == 400
    assert get(proxy.address, f"http://{host}/").status == 400
    assert get(proxy.address, origin.url("/bytes/3")).body == pattern_bytes(3)  # still serving


# --- host overrides ----------------------------------------------------------------------------


def test_resolve_and_connect_to_point_a_name_at_a_local_server_on_every_path(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(
        resolve=(f"api.test:{origin.port}:127.0.0.1",),
        connect_to=(f"web.test:80:127.0.0.1:{origin.port}",),
    )
    assert get(proxy.address, f"http://api.test:{origin.port}/bytes/4").body == pattern_bytes(4)
    response = get(proxy.address, "http://web.test/headers")
    assert dict(json.loads(response.body)["headers"])["Host"] == "web.test"  # the name is kept
    assert connect_status(proxy.address, f"api.test:{origin.port}") == 200
    assert connect_status(proxy.address, "web.test:80") == 200


def test_the_policy_judges_the_address_an_override_dials(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(connect_to=(f"web.test:80:127.0.0.1:{origin.port}",), local_clients=("127.0.0.1/32",))
    assert connect_status(proxy.address, "web.test:80", source="127.0.0.2") == 403


# --- failures on the way out --------------------------------------------------------------------


def test_a_family_the_kernel_lacks_is_skipped_and_the_next_address_is_tried(
    monkeypatch: pytest.MonkeyPatch, origin: OriginServer
) -> None:
    """A kernel without IPv6 still returns AAAA answers: socket() fails (EAFNOSUPPORT)."""
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)  # type: ignore[arg-type]

    dialer = Dialer(resolver=offline_resolver({"dual.test": ["::1", "127.0.0.1"]}))
    monkeypatch.setattr(socket, "socket", no_ipv6)
    sock = dialer.dial(("dual.test", origin.port), MUST_NOT_EXPIRE)
    monkeypatch.undo()
    with sock:
        assert sock.getpeername()[:2] == ("127.0.0.1", origin.port)


def test_no_socket_at_all_is_a_503_not_the_origins_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socket", exhausted)
    for addresses in (["127.0.0.1"], ["::1", "127.0.0.1"]):  # one address, and a race
        dialer = Dialer(resolver=offline_resolver({"web.test": addresses}))
        with pytest.raises(Overloaded) as caught:
            dialer.dial(("web.test", 9), MUST_NOT_EXPIRE)
        assert caught.value.cause == "overloaded"


def test_a_parent_on_this_host_does_not_open_its_loopback_to_others(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    parent = make_proxy()  # say cntlm or ssh -D on the proxy's host
    proxy = make_proxy(
        upstream=(parent.url,),
        local_clients=("127.0.0.1/32",),
        resolve=(f"pinned.test:{origin.port}:127.0.0.1",),
        connect_to=(f"moved.test:{origin.port}:localhost:{origin.port}",),
    )
    names = ("localhost", "LocalHost", "localhost.", "app.localhost", socket.gethostname())
    for spelling in ("127.0.0.1", "127.1", *names, "pinned.test", "moved.test"):
        assert connect_status(proxy.address, f"{spelling}:{origin.port}", source="127.0.0.2") == 403
        with client_from("127.0.0.2", proxy.address) as sock:
            sock.sendall(f"GET http://{spelling}:{origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert Response(sock).status == 403
    assert origin.requests == []


def test_a_refusal_names_the_target_asked_for_not_the_address_it_resolved_to(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(resolve=(f"intranet.test:{origin.port}:127.0.0.1",), local_clients=("127.0.0.1/32",))
    with client_from("127.0.0.2", proxy.address) as sock:
        sock.sendall(f"GET http://intranet.test:{origin.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = Response(sock)
    assert response.status == 403
    assert f"connecting to intranet.test:{origin.port} is not allowed".encode() in response.body
    assert b"127.0.0.1" not in response.body


def test_overrides_match_a_name_with_its_trailing_dot(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(resolve=(f"api.test:{origin.port}:127.0.0.1",))
    assert get(proxy.address, f"http://api.test.:{origin.port}/bytes/2").body == pattern_bytes(2)


def test_a_reload_that_moves_a_name_closes_the_idle_connections_to_its_old_address(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    other = OriginServer()
    try:
        proxy = make_proxy(connect_to=(f"web.test:80:127.0.0.1:{origin.port}",))
        assert get(proxy.address, "http://web.test/bytes/2").status == 200  # pooled now
        proxy.reload(proxy.config.replace(connect_to=(f"web.test:80:127.0.0.1:{other.port}",)))
        assert get(proxy.address, "http://web.test/bytes/2").status == 200
        assert (len(origin.requests), len(other.requests)) == (1, 1)
    finally:
        other.stop()


# --- name lookups ------------------------------------------------------------------------------


@pytest.fixture
def hanging_resolver() -> Iterator[Callable[[str, int], Resolved]]:
    """The test resolver, except that `hang.test` is answered only when the test ends (a
    name server that drops the query: getaddrinfo would wait out resolv.conf's limits)."""
    answered, fallback = threading.Event(), offline_resolver()

    def resolve(host: str, port: int) -> Resolved:
        if host == "hang.test":
            answered.wait(MUST_NOT_EXPIRE)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return fallback(host, port)

    yield resolve
    answered.set()


def test_a_lookup_that_hangs_is_504_at_the_connect_timeout(
    make_proxy: Callable[..., ProxyServer],
    origin: OriginServer,
    hanging_resolver: Callable[[str, int], Resolved],
) -> None:
    proxy = make_proxy(resolver=hanging_resolver, connect_timeout=0.6)

    def tunnel() -> Response:
        with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
            sock.sendall(connect_request("hang.test:443"))
            return Response(sock, method="CONNECT")

    for ask in (lambda: get(proxy.address, "http://hang.test/"), tunnel):
        started = time.monotonic()
        response = ask()
        assert (response.status, response.header("X-Tinyproxy-Py-Cause")) == (504, "dns")
        assert 0.6 <= time.monotonic() - started < 0.6 + 1.0
    assert proxy.stats.gauge("lookups") == 2  # given up on, still running: the resolver has them
    # Meanwhile names that answer, and addresses, are served as ever.
    assert get(proxy.address, f"http://localhost:{origin.port}/bytes/2").body == pattern_bytes(2)
    assert get(proxy.address, f"http://127.0.0.1:{origin.port}/bytes/2").body == pattern_bytes(2)


def test_lookups_are_bounded_and_beyond_the_bound_a_request_is_503_at_once(
    make_proxy: Callable[..., ProxyServer],
    origin: OriginServer,
    hanging_resolver: Callable[[str, int], Resolved],
) -> None:
    proxy = make_proxy(resolver=hanging_resolver, connect_timeout=0.3, max_clients=2)
    for _ in range(2):  # each is given up on, and holds a lookup thread until answered
        assert get(proxy.address, "http://hang.test/").status == 504
    started = time.monotonic()
    busy = get(proxy.address, "http://localhost/")
    assert (busy.status, busy.header("X-Tinyproxy-Py-Cause")) == (503, "overloaded")
    assert b"lookups in progress" in busy.body
    assert time.monotonic() - started < 0.3  # at once, not at the connect timeout
    # An address needs no lookup: still served.
    assert get(proxy.address, f"http://127.0.0.1:{origin.port}/bytes/2").status == 200


def test_an_address_needs_no_lookup_thread_and_a_name_reuses_one(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy()
    for host in ("127.0.0.1", "[::ffff:127.0.0.1]"):
        assert get(proxy.address, f"http://{host}:{origin.port}/bytes/1").status == 200
    assert connect_head(proxy, f"127.0.0.1:{origin.port}").startswith(b"HTTP/1.1 200 ")
    assert proxy.stats.counter("lookup_threads_started") == 0
    for _ in range(3):
        assert connect_head(proxy, f"localhost:{origin.port}").startswith(b"HTTP/1.1 200 ")
    assert proxy.stats.counter("lookup_threads_started") == 1
    assert wait_until(lambda: proxy.stats.gauge("lookups") == 0)


def connect_head(proxy: ProxyServer, target: str) -> bytes:
    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(connect_request(target))
        return recv_head(sock)
