"""A bounded soak: mixed traffic and faults from several clients at once, then back to baseline.

Five client threads run a fixed rotation of exchanges for TRAFFIC_SECONDS against one
in-process proxy with short limits: keep-alive requests, CONNECT tunnels carrying data,
client aborts mid-download, mid-upload and mid-tunnel (half of them resets), a client
that stops reading, upstream resets before and during a response and in a tunnel,
upstream stalls past the read timeout, connect failures, malformed and incomplete
requests, idle keep-alive connections and idle tunnels. Afterwards the proxy's gauges
must be back at zero, its pooled connections reaped, the process's open fds and threads
back at the baseline taken after a warm-up, and the proxy still serving.

The mix, its origin and fault targets, and the worker threads come from the traffic kit
(tests/kit/traffic.py), which scripts/soak.py, the long version (docs/reliability.md),
runs too. Every loop is bounded in count and in time, every socket has a timeout, and
every address is loopback (no DNS).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.net.threads import HandlerThreads

from ..kit.procfs import open_fds, thread_count
from ..kit.traffic import Traffic, mix_against
from ..kit.waits import MUST_NOT_EXPIRE, steady, wait_until

LIMITS = {
    "connect_timeout": 1.0,
    "read_timeout": 0.5,
    "response_header_timeout": 0.5,
    "header_timeout": 1.0,
    "client_idle_timeout": 1.0,
    "tunnel_idle_timeout": 2.0,
    "tunnel_linger": 1.0,
    "pool_idle_timeout": 2.0,
}
IDLE_THREADS = 1.0  # seconds an idle handler thread waits for a connection before it ends
STALL = 1.5  # how long the origin stalls and a client stops reading: past the 0.5 s timeouts
TRAFFIC_SECONDS = 20.0
WORKERS = 5
MAX_ROUNDS = 2000  # per worker: the count bound; TRAFFIC_SECONDS is the time bound
PAUSE = 0.005  # between one worker's exchanges: moderate load on a shared 2-core machine
CLIENT_TIMEOUT = 10.0  # any single client wait; the proxy's limits are far shorter
SLACK = 3.0  # how late a proxy deadline may fire on a loaded machine
BOUNDS = {  # the exchanges that wait for a proxy deadline end soon after it
    "tunnel_idle": LIMITS["tunnel_idle_timeout"] + SLACK,
    "stall_head": LIMITS["response_header_timeout"] + SLACK,
    "idle_keep_alive": LIMITS["client_idle_timeout"] + SLACK,
}


def quiet(proxy: ProxyServer) -> bool:
    """No live object left: gauges at zero, the pooled connections reaped and the idle
    handler threads ended (IDLE_THREADS after their last connection)."""
    resources = proxy.resources()
    live = (
        "clients",
        "handler_threads",
        "idle_handler_threads",
        "requests_in_flight",
        "tunnels",
        "pool_open",
    )
    # resources()["tunnels"] is the hub's own count; the gauge is kept separately.
    return all(resources[name] == 0 for name in live) and proxy.stats.gauge("tunnels") == 0


@pytest.mark.timeout(90)
def test_mixed_traffic_and_faults_return_to_baseline(
    make_proxy: Callable[..., ProxyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HandlerThreads, "idle_timeout", IDLE_THREADS)
    proxy = make_proxy(**LIMITS)
    with mix_against(proxy.address, stall=STALL, timeout=CLIENT_TIMEOUT, bounds=BOUNDS) as mix:
        # Warm up (pool manager, host pool, hub, imports), then let the reaper empty the pool.
        mix.keep_alive(0)
        mix.tunnel(0)
        mix.stats(0)
        assert wait_until(lambda: quiet(proxy), MUST_NOT_EXPIRE), proxy.resources()
        assert steady(thread_count, MUST_NOT_EXPIRE)[0]
        fds, threads = open_fds(), thread_count()
        gap = fds - proxy.resources()["fds_accounted"]

        started = time.monotonic()
        traffic = Traffic(mix, WORKERS, PAUSE, MAX_ROUNDS)
        traffic.start()
        time.sleep(TRAFFIC_SECONDS)
        assert traffic.stop(2 * CLIENT_TIMEOUT), "a client thread is stuck"
        done, traffic_time = traffic.done, time.monotonic() - started

        assert not traffic.unexpected, f"{sum(traffic.unexpected.values())} failed: {traffic.samples}"
        assert set(done) == {exchange.__name__ for exchange in mix.schedule()}, done
        assert sum(done.values()) > 100, done
        # The faults really happened, and the proxy saw them as such.
        counters = proxy.stats.snapshot()["counters"]
        assert isinstance(counters, dict)
        for name in (
            "errors.read-timeout",
            "errors.response-timeout",
            "errors.refused",
            "errors.no-response",
            "errors.origin-abort",
            "errors.header-timeout",
            "errors.bad-request",
            "errors.line-too-long",
            "errors.head-too-large",
            "errors.client-abort",
            "tunnels_closed.reset",
            "tunnels_closed.idle",
            "tunnels_closed.eof",
        ):
            assert counters.get(name, 0) > 0, (name, counters)

        settle = time.monotonic()
        assert wait_until(lambda: quiet(proxy), MUST_NOT_EXPIRE), proxy.resources()
        resources = proxy.resources()
        assert resources["pool_in_use"] == 0 and resources["pool_idle"] == 0, resources
        assert proxy.hub.buffered == 0
        assert wait_until(lambda: open_fds() <= fds, MUST_NOT_EXPIRE), f"fds {open_fds()} > baseline {fds}"
        assert wait_until(lambda: thread_count() <= threads, MUST_NOT_EXPIRE), (
            f"threads {thread_count()} > baseline {threads}"
        )
        assert open_fds() - proxy.resources()["fds_accounted"] <= gap
        settled = time.monotonic() - settle

        # Still serving, both ways.
        mix.keep_alive(1)
        mix.tunnel(1)
        print(f"soak: {sum(done.values())} exchanges in {traffic_time:.1f} s, settled in {settled:.1f} s")
