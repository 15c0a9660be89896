"""Stats: each thread counts on its own (no lock per count), a read sums, and a thread
that ends leaves its counts behind without leaving its shard."""

from __future__ import annotations

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
    assert len(stats._shards) == 1  # only this thread's: the ended ones were folded in


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
