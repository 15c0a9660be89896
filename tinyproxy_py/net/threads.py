"""Threads that are reused: a connection (or a name lookup) costs a hand-off, not a Thread.start.

At most `limit` threads, started as they are needed. A job goes to the thread that went
idle last (a warm stack, and the cold ones are the ones that retire); when none is idle,
a new thread takes it. Nothing queues: a job is handed to one waiting thread or to a
new one, so it never waits while an idle thread could take it. A thread idle for
`idle_timeout` seconds ends. After stop() no thread waits any more, a job handed over
but not yet begun is cancelled instead of run, and stop() joins the threads with a
deadline.

A new thread is started from a throwaway low-level thread (`_thread`), not by the
submitting one: Thread.start waits until the new thread runs, and under load that takes
milliseconds (it has to win the GIL, and then so does the starter). On the accepting
thread those waits added up in a burst of new connections: 42 at once made the last
one wait about 250 ms for its thread. Now each connection waits for its own thread only.

Rule: a thread counts itself idle *before* it calls `done` for the job it finished.
`done` frees the caller's admission slot, so every started thread holds a slot or is
idle, and there are never more threads than slots (`limit`).
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..observe.stats import Stats

log = logging.getLogger(__name__)


class Job(Protocol):
    def run(self) -> None:
        """On a thread of the set. An exception is logged; the thread carries on."""

    def cancel(self, stopping: bool) -> None:
        """Instead of run(): the set stopped (`stopping`), or no thread could be
        started, before a thread began the job."""


class _Waiter:
    """One thread's place on the idle stack: the job handed to it, and its wake-up."""

    __slots__ = ("idle", "job", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # released once, by whoever takes this waiter off the stack
        self.idle = False
        self.job: Job | None = None


class HandlerThreads:
    """Runs each submitted job on an idle thread, or on a new one (up to `limit`)."""

    idle_timeout = 5.0  # seconds a thread waits for its next job before it ends; tests lower it

    def __init__(
        self, limit: int, name: str, stats: Stats, done: Callable[[], None], kind: str = "handler"
    ) -> None:
        """`done` is called once per job, after its thread is idle again (or ended).
        `kind` names the stats: `{kind}_threads_started` and `idle_{kind}_threads`."""
        self.limit, self.name, self.stats, self._done = limit, name, stats, done
        self._started, self._idle_gauge = f"{kind}_threads_started", f"idle_{kind}_threads"
        self._start_failures = f"{kind}_thread_start_failures"
        self._lock = threading.Lock()
        self._idle: list[_Waiter] = []  # a stack: the last one to go idle is handed the next job
        self._threads: set[threading.Thread] = set()  # each adds itself once it runs
        self._launching = 0  # threads asked for that do not run yet
        self._start_failure = ""  # why a thread could not start, until logged
        self._stopped = False

    def __repr__(self) -> str:
        return f"<HandlerThreads {self.name} threads={len(self._threads)} idle={len(self._idle)}>"

    @property
    def count(self) -> int:
        """Threads of the set alive now, busy or idle, and those still starting."""
        with self._lock:
            return len(self._threads) + self._launching

    def submit(self, job: Job) -> None:
        """Hand `job` to a thread. Raises RuntimeError once stopped or at the limit
        (the caller's slots prevent that), or if no thread can be started; the job is
        then still the caller's. A thread that fails to start later cancels the job."""
        if self._start_failure:
            self._log_start_failure()
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"{self.name}: stopped")
            if self._idle:
                self._hand(self._idle.pop(), job)
                return
            if len(self._threads) + self._launching >= self.limit:
                raise RuntimeError(f"{self.name}: all {self.limit} threads busy")
            self._launching += 1
        try:
            thread = threading.Thread(target=self._work, args=(job,), name=self.name, daemon=True)
            _thread.start_new_thread(self._launch, (thread, job))
        except BaseException:
            with self._lock:
                self._launching -= 1
            raise

    def _launch(self, thread: threading.Thread, job: Job) -> None:
        """On a low-level thread of its own, which ends right after: start `thread`.

        Nothing here logs: a log record names the current thread, and on a thread that
        `threading` did not start that registers a stand-in Thread which outlives it
        (before Python 3.13). A failure is logged by the next submit() or stop().
        """
        try:
            thread.start()
            return
        except BaseException as exc:
            failure = str(exc) or type(exc).__name__
        try:
            job.cancel(stopping=False)
        finally:
            with self._lock:
                self._launching -= 1  # before `done`: the freed slot finds room (the Rule)
                self._start_failure = failure
            self.stats.count(self._start_failures)
            self._done()

    def _log_start_failure(self) -> None:
        with self._lock:
            failure, self._start_failure = self._start_failure, ""
        if failure:
            log.error("%s: cannot start a thread (its job was cancelled): %s", self.name, failure)

    def stop(self, timeout: float) -> bool:
        """Wake and end the idle threads, and join every thread, those still starting
        included, for up to `timeout` seconds (a busy one ends when its job does);
        whether none is left."""
        with self._lock:
            self._stopped = True
            while self._idle:
                self._hand(self._idle.pop(), None)
        deadline = time.monotonic() + timeout
        while self._launching > 0 and time.monotonic() < deadline:  # each joins _threads when it runs
            time.sleep(0.01)
        with self._lock:
            threads = self._threads - {threading.current_thread()}
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._log_start_failure()
        return self._launching <= 0 and not any(thread.is_alive() for thread in threads)

    def _hand(self, waiter: _Waiter, job: Job | None) -> None:
        """Give `waiter` (just taken off the stack) its job, None: end. Under the lock."""
        waiter.idle, waiter.job = False, job
        self.stats.adjust(self._idle_gauge, -1)
        waiter.wake.release()

    def _work(self, job: Job | None) -> None:
        with self._lock:
            self._launching -= 1
            self._threads.add(threading.current_thread())
        self.stats.count(self._started)  # here: before the job can be done
        waiter = _Waiter()
        try:
            while job is not None:
                try:
                    self._run(job)
                except BaseException:
                    self._done()  # its slot, as _next would have freed it
                    raise
                job = self._next(waiter)
        finally:
            self._leave(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        """This thread ends: off the stack if it still is, and a job handed to it but not
        taken (only if something raised in between) is cancelled, not lost."""
        with self._lock:
            self._threads.discard(threading.current_thread())
            if waiter.idle:
                waiter.idle = False
                self._idle.remove(waiter)
                self.stats.adjust(self._idle_gauge, -1)
            stranded, waiter.job = waiter.job, None
        if stranded is not None:
            stranded.cancel(stopping=self._stopped)
            self._done()

    def _run(self, job: Job) -> None:
        try:
            if self._stopped:  # handed over just before stop(): nobody serves it now
                job.cancel(stopping=True)
            else:
                job.run()
        except Exception:
            log.exception("%s: a job failed", self.name)

    def _next(self, waiter: _Waiter) -> Job | None:
        """Go idle (then call `done` for the job just finished) and wait for the next job;
        None once the idle timeout passes with none, or the set stops."""
        with self._lock:
            stopped = self._stopped
            if not stopped:
                waiter.idle = True
                self._idle.append(waiter)
                self.stats.adjust(self._idle_gauge, 1)
        self._done()
        if stopped:
            return None
        if not waiter.wake.acquire(timeout=self.idle_timeout):
            with self._lock:
                if waiter.idle:  # nobody took it off the stack: retire
                    waiter.idle = False
                    self._idle.remove(waiter)
                    self.stats.adjust(self._idle_gauge, -1)
                    # Out of the count at once: it holds no slot, and a job it no longer
                    # waits for must find room for a new thread.
                    self._threads.discard(threading.current_thread())
                    return None
            # Taken off the stack as the wait ended: the wake-up was released with the job.
            waiter.wake.acquire()
        job, waiter.job = waiter.job, None
        return job
