"""Handler threads are reused: bounded by max_clients, retired when idle, ended by stop().

The proxy's own threads are counted by name (the origins run threads of their own), and
the proxy counts the threads it started (`handler_threads_started`) and the idle ones
(the `idle_handler_threads` gauge). The thread set alone is tested last, with jobs that
are events: the one race a socket cannot provoke on demand (a job handed over just
before stop()).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest

from tinyproxy_py import ProxyServer
from tinyproxy_py.errors import Cause, Overloaded
from tinyproxy_py.net.lookups import Lookups
from tinyproxy_py.net.threads import HandlerThreads
from tinyproxy_py.observe.stats import Stats

from ..kit.origins import OriginServer, pattern_bytes
from ..kit.procfs import handler_threads
from ..kit.responses import Response, get, request_over
from ..kit.waits import EXPIRE_SOON, MUST_NOT_EXPIRE, wait_until


def started(proxy: ProxyServer) -> int:
    return proxy.stats.counter("handler_threads_started")


def idle(proxy: ProxyServer) -> int:
    return proxy.stats.gauge("idle_handler_threads")


def request(origin: OriginServer, n: int = 10) -> bytes:
    return f"GET {origin.url(f'/bytes/{n}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@contextmanager
def held(proxy: ProxyServer, count: int) -> Iterator[list[socket.socket]]:
    """`count` client connections, each holding a slot (and a thread) until the block ends."""
    with ExitStack() as stack:
        socks = [
            stack.enter_context(socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE))
            for _ in range(count)
        ]
        assert wait_until(lambda: proxy.stats.gauge("clients") == count)
        yield socks


def test_sequential_new_connections_are_served_by_a_few_threads(
    proxy: ProxyServer, origin: OriginServer
) -> None:
    for _ in range(200):
        assert get(proxy.address, origin.url("/bytes/10")).body == pattern_bytes(10)
    # A connection may arrive before the last one's thread has seen its EOF: two or
    # three threads take turns, not one per connection.
    assert started(proxy) <= 4, started(proxy)
    assert handler_threads() <= 4


def test_threads_are_reused_across_rounds_and_bounded_by_max_clients(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    proxy = make_proxy(max_clients=4)
    raw = request(origin)
    for _ in range(3):
        with held(proxy, 4) as socks:
            for sock in socks:
                sock.sendall(raw[:10])  # a head under way: busy, so none is closed to make room
            assert handler_threads() == 4
            time.sleep(0.1)  # the first bytes are read
            with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as extra:
                assert Response(extra).status == 503  # over capacity: at once, on the accepting thread
            for sock in socks:
                assert request_over(sock, raw[10:]).body == pattern_bytes(10)
        assert wait_until(lambda: idle(proxy) == 4)
    assert started(proxy) == 4  # the first round's threads served the next rounds
    assert proxy.stats.counter("errors.overloaded") == 3


def test_churn_over_max_clients_never_starts_more_threads_than_slots(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer
) -> None:
    """A thread frees its slot only once it is idle again, so a new connection taking
    that slot finds it idle instead of starting one more thread."""
    proxy = make_proxy(max_clients=3)
    served, refused = [0] * 5, [0] * 5
    peak = [0]
    stop = threading.Event()

    def client(index: int) -> None:
        deadline = time.monotonic() + MUST_NOT_EXPIRE
        while served[index] < 20 and time.monotonic() < deadline:  # at most 20 s of churn
            status = get(proxy.address, origin.url("/bytes/10"), "Connection: close\r\n").status
            assert status in (200, 503), status
            if status == 200:
                served[index] += 1
            else:
                refused[index] += 1

    def watch() -> None:
        while not stop.wait(0.002):
            peak[0] = max(peak[0], handler_threads())

    watcher = threading.Thread(target=watch)
    clients = [threading.Thread(target=client, args=(i,)) for i in range(5)]
    watcher.start()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(MUST_NOT_EXPIRE + 5.0)
    stop.set()
    watcher.join(MUST_NOT_EXPIRE)
    assert not any(thread.is_alive() for thread in clients)
    assert served == [20] * 5, (served, refused)
    assert started(proxy) <= 3 and peak[0] <= 3, (started(proxy), peak[0])


def test_idle_threads_retire_and_the_count_returns_to_its_baseline(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HandlerThreads, "idle_timeout", 0.3)
    proxy = make_proxy()
    assert handler_threads() == 0  # none before the first connection
    with held(proxy, 5) as socks:
        for sock in socks:
            assert request_over(sock, request(origin)).status == 200
        assert handler_threads() == 5
    assert wait_until(lambda: idle(proxy) == 5)
    went_idle = time.monotonic()
    assert wait_until(lambda: handler_threads() == 0, EXPIRE_SOON + HandlerThreads.idle_timeout)
    assert time.monotonic() - went_idle >= HandlerThreads.idle_timeout / 2  # retired, not killed
    assert idle(proxy) == 0
    # Still serving: the next connection starts a thread again.
    assert get(proxy.address, origin.url("/bytes/10")).status == 200
    assert started(proxy) == 6


def test_stop_with_idle_threads_returns_promptly_and_leaves_none(
    make_proxy: Callable[..., ProxyServer], origin: OriginServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HandlerThreads, "idle_timeout", 60.0)  # stop() must not wait for retirement
    proxy = make_proxy()
    with held(proxy, 4) as socks:
        for sock in socks:
            assert request_over(sock, request(origin)).status == 200
    assert wait_until(lambda: idle(proxy) == 4)
    begun = time.monotonic()
    proxy.stop()
    assert time.monotonic() - begun < 2.0  # the accept loop's poll, the hub: not 60 s
    assert handler_threads() == 0  # joined by stop(), not left to end later
    assert idle(proxy) == 0


def test_stop_ends_busy_threads_too(make_proxy: Callable[..., ProxyServer]) -> None:
    """A client idling between requests holds a thread; stop() cuts it and joins it."""
    proxy = make_proxy(client_idle_timeout=30.0, header_timeout=30.0)
    with held(proxy, 2):
        assert handler_threads() == 2
        begun = time.monotonic()
        proxy.stop()
        assert time.monotonic() - begun < proxy.config.shutdown_grace + 2.0
        assert handler_threads() == 0


# --- the thread set alone ---


class Job:
    def __init__(self, hold: threading.Event | None = None) -> None:
        self.hold = hold
        self.ran = threading.Event()
        self.cancelled = threading.Event()
        self.thread = 0
        self.stopping: bool | None = None

    def run(self) -> None:
        self.thread = threading.get_ident()
        self.ran.set()
        if self.hold is not None:
            self.hold.wait(MUST_NOT_EXPIRE)

    def cancel(self, stopping: bool) -> None:
        self.stopping = stopping
        self.cancelled.set()


class Failing(Job):
    def run(self) -> None:
        super().run()
        raise ValueError("a bug in a job")


@contextmanager
def thread_set(limit: int, done: Callable[[], None] | None = None) -> Iterator[HandlerThreads]:
    threads = HandlerThreads(limit, "test-threads", Stats(), done or (lambda: None))
    try:
        yield threads
    finally:
        assert threads.stop(MUST_NOT_EXPIRE)


def test_a_job_handed_over_just_before_stop_is_cancelled_not_run() -> None:
    release_done = threading.Event()
    dones: list[int] = []

    def done() -> None:  # the first job's: its thread is already idle when this runs
        dones.append(1)
        if len(dones) == 1:
            release_done.wait(MUST_NOT_EXPIRE)

    with thread_set(2, done) as threads:
        first = Job()
        threads.submit(first)
        assert first.ran.wait(MUST_NOT_EXPIRE)
        assert wait_until(lambda: len(dones) == 1)
        second = Job()
        threads.submit(second)  # to the idle thread, still busy calling done
        assert threads.count == 1
        assert not threads.stop(0.0)  # stopped; that thread has not woken up yet
        release_done.set()
        assert threads.stop(MUST_NOT_EXPIRE)
        assert second.cancelled.is_set() and not second.ran.is_set()
        assert dones == [1, 1]  # one per job, cancelled or run
        with pytest.raises(RuntimeError):
            threads.submit(Job())


def test_a_failing_job_is_logged_and_its_thread_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    dones: list[int] = []
    with thread_set(1, lambda: dones.append(1)) as threads:
        threads.submit(Failing())
        assert wait_until(lambda: len(dones) == 1)
        after = Job()
        threads.submit(after)
        assert after.ran.wait(MUST_NOT_EXPIRE)
        assert threads.count == 1
    assert "a job failed" in caplog.text


def test_the_last_thread_to_go_idle_takes_the_next_job() -> None:
    """A stack, not a queue: under light load the same warm thread serves, and the
    others stay idle long enough to retire."""
    with thread_set(3) as threads:
        holds = [threading.Event() for _ in range(3)]
        jobs = [Job(hold) for hold in holds]
        for job in jobs:
            threads.submit(job)
        assert all(job.ran.wait(MUST_NOT_EXPIRE) for job in jobs)
        assert threads.count == 3
        for hold in holds:
            hold.set()
        assert wait_until(lambda: threads.stats.gauge("idle_handler_threads") == 3)
        served_by = set()
        for _ in range(5):
            job = Job()
            threads.submit(job)
            assert job.ran.wait(MUST_NOT_EXPIRE)
            assert wait_until(lambda: threads.stats.gauge("idle_handler_threads") == 3)
            served_by.add(job.thread)
        assert len(served_by) == 1 and threads.count == 3


def test_a_thread_is_idle_before_it_frees_its_slot() -> None:
    """The bound's rule: a connection taking the slot that `done` frees finds the thread
    idle, even at the limit (one thread here): no new thread, no refusal."""
    handed: list[Job] = []
    threads_box: list[HandlerThreads] = []

    def done() -> None:  # the slot is free from here on: a new connection may take it
        if not handed:
            handed.append(Job())
            threads_box[0].submit(handed[0])  # raises at the limit if the thread is not idle yet

    with thread_set(1, done) as threads:
        threads_box.append(threads)
        first = Job()
        threads.submit(first)
        assert wait_until(lambda: bool(handed) and handed[0].ran.is_set())
        assert first.thread == handed[0].thread and threads.count == 1
        assert threads.stats.counter("handler_threads_started") == 1


@contextmanager
def slow_starts(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[list[float]]:
    """Thread.start takes `seconds` (as it does under load, when the new thread and then
    its starter must each win the GIL); yields when each start began."""
    begun: list[float] = []
    start = threading.Thread.start

    def slow_start(thread: threading.Thread) -> None:
        begun.append(time.monotonic())
        time.sleep(seconds)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", slow_start)
    yield begun


def test_a_burst_of_jobs_does_not_wait_for_each_thread_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """submit() returns before the new thread runs, so the n-th job of a burst waits for
    its own thread's start, not for the n - 1 before it (on the accepting thread)."""
    with slow_starts(monkeypatch, 2 * EXPIRE_SOON) as begun, thread_set(5) as threads:
        hold = threading.Event()
        submitted = time.monotonic()
        jobs = [Job(hold) for _ in range(5)]  # each holds its thread
        for job in jobs:
            threads.submit(job)
        assert time.monotonic() - submitted < EXPIRE_SOON  # serial starts: 10 s
        assert threads.count == 5  # counted while they start: the limit holds
        with pytest.raises(RuntimeError):
            threads.submit(Job())
        assert all(job.ran.wait(MUST_NOT_EXPIRE) for job in jobs)
        assert max(begun) - min(begun) < EXPIRE_SOON  # the starts overlapped
        hold.set()


def refuse_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)


def test_a_thread_that_cannot_start_cancels_its_job_and_frees_its_place(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dones: list[int] = []
    baseline = threading.active_count()
    with thread_set(1, lambda: dones.append(1)) as threads:
        refuse_starts(monkeypatch)
        job = Job()
        threads.submit(job)
        assert job.cancelled.wait(MUST_NOT_EXPIRE) and not job.ran.is_set()
        assert job.stopping is False
        assert wait_until(lambda: dones == [1] and threads.count == 0)
        assert threads.stats.counter("handler_thread_start_failures") == 1
        # Nothing was logged from the low-level thread: that would leave a stand-in
        # Thread registered for it (Python < 3.13), one more in every later count.
        assert threading.active_count() == baseline
        monkeypatch.undo()
        after = Job()
        threads.submit(after)  # its place is free again; the failure is logged now
        assert after.ran.wait(MUST_NOT_EXPIRE)
    assert "cannot start a thread (its job was cancelled): can't start new thread" in caplog.text


def test_stop_waits_until_a_job_whose_thread_failed_is_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    dones: list[int] = []
    release = threading.Event()

    class SlowCancel(Job):
        def cancel(self, stopping: bool) -> None:
            super().cancel(stopping)
            release.wait(MUST_NOT_EXPIRE)

    threads = HandlerThreads(1, "test-threads", Stats(), lambda: dones.append(1))
    refuse_starts(monkeypatch)
    job = SlowCancel()
    threads.submit(job)
    assert job.cancelled.wait(MUST_NOT_EXPIRE)
    assert not threads.stop(0.2)  # still cancelling: not stopped yet
    release.set()
    assert threads.stop(MUST_NOT_EXPIRE)
    assert wait_until(lambda: dones == [1])  # `done` comes last, after the thread is uncounted


def test_a_lookup_whose_thread_cannot_start_is_refused_as_overloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = Lookups(2, Stats())
    refuse_starts(monkeypatch)
    with pytest.raises(Overloaded) as refused:
        lookups.run(lambda host, port: [], "example.test", 80, time.monotonic() + MUST_NOT_EXPIRE)
    assert refused.value.cause == Cause.OVERLOADED and "no thread could be started" in str(refused.value)
    assert lookups.stats.gauge("lookups") == 0
    assert lookups.stop(MUST_NOT_EXPIRE)


def test_stop_waits_for_a_thread_still_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    with slow_starts(monkeypatch, 0.3) as begun:
        threads = HandlerThreads(2, "test-threads", Stats(), lambda: None)
        job = Job()
        threads.submit(job)
        assert wait_until(lambda: bool(begun))
        assert threads.stop(MUST_NOT_EXPIRE)  # started, saw the stop, cancelled its job, ended
        assert threads.count == 0
        assert job.cancelled.is_set() and not job.ran.is_set()
