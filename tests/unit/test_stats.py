"""Stats: each thread counts on its own (no lock per count), a read sums, and a thread
that ends leaves its counts behind without leaving its shard."""

from __future__ import annotations

import sys
import threading

from tinyproxy_py.observe.stats import Stats


def test_counts_from_many_threads_add_up_and_outlive_their_threads() -> None:
    stats = Stats()

    def work() -> None:
        for _ in range(1000):
            stats.count("requests")
        stats.adjust("open", 1)  # up on this thread ...

    threads = [threading.Thread(target=work) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.adjust("open", -50)  # ... down on another
    assert stats.counter("requests") == 50_000
    assert stats.gauge("open") == 0
    assert stats.snapshot()["counters"] == {"requests": 50_000}
    assert stats._shards == []  # the ended threads' counts were folded into the totals


def test_a_read_while_threads_count_sees_a_consistent_total() -> None:
    stats, stop = Stats(), threading.Event()

    def work() -> None:
        while not stop.is_set():
            stats.count("a")
            stats.count(f"b{threading.get_ident() % 7}")  # new names appear while reading

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        seen = [stats.counter("a") for _ in range(200)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert seen == sorted(seen)  # counters only grow
    assert stats.counter("a") >= seen[-1]


def test_threads_ending_while_others_read_lose_nothing_and_block_nobody() -> None:
    """Threads come and go (handler threads retire when idle) while the stats page reads:
    no count is lost, and no read waits on a thread's end (a shard finalised on the
    reader's own thread once took the lock the reader held)."""
    stats, ended, switch = Stats(), threading.Event(), sys.getswitchinterval()

    def work() -> None:
        for _ in range(100):
            stats.count("requests")

    def churn() -> None:
        for _ in range(40):
            threads = [threading.Thread(target=work) for _ in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        ended.set()

    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        churner = threading.Thread(target=churn)
        churner.start()
        while not ended.is_set():
            stats.snapshot()
            stats.counter("requests")
        churner.join()
    finally:
        sys.setswitchinterval(switch)
    assert stats.counter("requests") == 40 * 10 * 100
