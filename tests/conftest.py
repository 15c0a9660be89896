"""Fixtures: origins (plain and TLS), a proxy with short limits, and the leak check.

Wire tests run under `no_leaks`: the process's open fds and threads must be back at
their baseline once the test's proxy and origins are torn down, and the proxy's gauges
must be back at zero before it is stopped.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tinyproxy_py import Config, ProxyServer
from tinyproxy_py.net.dialer import Resolver

from .kit.origins import OriginServer
from .kit.procfs import open_fds, thread_count
from .kit.resolver import offline_resolver
from .kit.waits import MUST_NOT_EXPIRE, wait_until

SHORT_LIMITS = {
    "port": 0,
    "connect_timeout": 2.0,
    "read_timeout": 2.0,
    "response_header_timeout": 2.0,
    "header_timeout": 2.0,
    "client_idle_timeout": 2.0,
    "tunnel_idle_timeout": 5.0,
    "tunnel_linger": 2.0,
    "pool_idle_timeout": 5.0,
    "shutdown_grace": 2.0,
    "connect_ports": (0,),  # test origins listen on ephemeral ports
}


@pytest.fixture
def no_leaks() -> Iterator[None]:
    fds, threads = open_fds(), thread_count()
    yield
    assert wait_until(lambda: open_fds() <= fds, MUST_NOT_EXPIRE), f"fds {open_fds()} > baseline {fds}"
    assert wait_until(lambda: thread_count() <= threads, MUST_NOT_EXPIRE), (
        f"threads {thread_count()} > baseline {threads}"
    )


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def origin(no_leaks: None) -> Iterator[OriginServer]:
    server = OriginServer()
    yield server
    server.stop()


@pytest.fixture
def tls_origin(no_leaks: None, ca: trustme.CA) -> Iterator[OriginServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
    server = OriginServer(ssl_context=context)
    yield server
    server.stop()


def assert_idle(proxy: ProxyServer) -> None:
    """Every gauge of live client-side objects is back at zero."""
    for gauge in ("clients", "tunnels", "requests_in_flight"):
        assert wait_until(lambda g=gauge: proxy.stats.gauge(g) == 0, MUST_NOT_EXPIRE), (
            f"gauge {gauge} stuck at {proxy.stats.gauge(gauge)}"
        )


@pytest.fixture
def make_proxy(no_leaks: None) -> Iterator[Callable[..., ProxyServer]]:
    """Start proxies with SHORT_LIMITS plus overrides; each is checked idle, then stopped."""
    started: list[ProxyServer] = []

    def make(resolver: Resolver | None = None, **overrides: object) -> ProxyServer:
        config = Config(**{**SHORT_LIMITS, **overrides})  # type: ignore[arg-type]
        proxy = ProxyServer(config, resolver=resolver or offline_resolver())  # never DNS
        proxy.start()
        started.append(proxy)
        return proxy

    yield make
    try:
        for proxy in started:
            assert_idle(proxy)
    finally:
        for proxy in started:
            proxy.stop()


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyServer]) -> ProxyServer:
    return make_proxy()
