"""A pytest plugin (entry point `pytest11`): the `tinyproxy` fixture, a running proxy per test.

    def test_my_client_uses_the_proxy(tinyproxy):
        fetch("http://127.0.0.1:8000/", proxy=tinyproxy.url)
        assert [r.status for r in tinyproxy.wait_for_requests(1)] == [200]

The fixture's proxy listens on a free loopback port, allows CONNECT and requests to any port
(test servers use ephemeral ones), records every exchange but health probes in `.requests`
(a CONNECT as soon as its tunnel opens, completed when it closes; `.wait_for_requests(n)`
waits for them), exposes its counters and gauges in `.stats`, and is stopped after the
test, leaving no thread and no socket behind. Override the `tinyproxy_config` fixture to change its settings.

`tinyproxy_faults` is that proxy's fault rules (docs/faults.md), for a test of how a client
copes when a destination misbehaves:

    def test_my_client_retries(tinyproxy, tinyproxy_faults):
        with tinyproxy_faults.add(host="127.0.0.1", kind="fail_first", n=2) as fault:
            assert fetch(URL, proxy=tinyproxy.url).status == 200
        assert fault.applied == 2
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from ..observe.accesslog import AccessRecord
from ..server.proxy import ProxyServer
from ..settings.config import Config
from ..settings.faults import Faults


class RecordingProxy(ProxyServer):
    """A ProxyServer that keeps the AccessRecord of everything it handled."""

    def __init__(self, config: Config) -> None:
        self.requests: list[AccessRecord] = []
        self._known: set[int] = set()  # ids of the records in `requests` (kept alive there)
        self._requests_changed = threading.Condition()
        super().__init__(config, on_access=self._remember)

    def _remember(self, record: AccessRecord) -> None:
        with self._requests_changed:
            if id(record) not in self._known:  # a tunnel's record comes twice: open, closed
                self._known.add(id(record))
                self.requests.append(record)
            self._requests_changed.notify_all()

    def wait_for_requests(
        self, count: int, timeout: float = 10.0, *, done: bool = False
    ) -> list[AccessRecord]:
        """The records once `count` exchanges are recorded (a client can have its whole
        response a moment before the proxy has logged it; a tunnel counts once it is
        open). With `done`, also wait until every tunnel among them has closed (its bytes
        and cause are in). Raises TimeoutError."""

        def ready() -> bool:
            return len(self.requests) >= count and not (done and any(r.ongoing for r in self.requests))

        with self._requests_changed:
            if not self._requests_changed.wait_for(ready, timeout):
                raise TimeoutError(f"{len(self.requests)} of {count} requests recorded in {timeout} s")
            return list(self.requests)


@pytest.fixture
def tinyproxy_config() -> Config:
    return Config(port=0, http_ports=("any",))  # CONNECT: 'auto', every port for local clients


@pytest.fixture
def tinyproxy(tinyproxy_config: Config) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(tinyproxy_config)
    with proxy:
        yield proxy


@pytest.fixture
def tinyproxy_faults(tinyproxy: RecordingProxy) -> Iterator[Faults]:
    """The `tinyproxy` fixture's fault rules: `.add(...)` one; none outlives the test."""
    yield tinyproxy.faults
    tinyproxy.faults.clear()
