"""Out of file descriptors: the proxy pauses accepting instead of spinning, answers the
clients it holds with 503, logs the episode, and serves again once descriptors free up.

The proxy runs in a child under a small open-files limit (as `prlimit --nofile` sets it),
filled with idle connections until accept() fails with EMFILE.
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack

from ..kit.origins import OriginServer, pattern_bytes
from ..kit.procfs import cpu_seconds, open_fds
from ..kit.responses import get, request_over
from ..kit.servers import end_process
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import address_of, proxy_process

LIMIT = 64


def test_out_of_descriptors_accepts_pause_clients_get_503_and_serving_resumes(origin: OriginServer) -> None:
    raw = f"GET {origin.url('/bytes/10')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with proxy_process("--max-clients", "1000", open_files=LIMIT) as (proc, url), ExitStack() as stack:
        address = address_of(url)
        held: list[socket.socket] = []
        while open_fds(proc.pid) < LIMIT and len(held) < 2 * LIMIT:
            held.append(stack.enter_context(socket.create_connection(address, timeout=MUST_NOT_EXPIRE)))
            wait_until(lambda: open_fds(proc.pid) >= min(LIMIT, 6 + len(held)), 2.0)
        assert open_fds(proc.pid) == LIMIT, "the proxy never ran out of descriptors"
        waiting = stack.enter_context(socket.create_connection(address, timeout=MUST_NOT_EXPIRE))
        waiting.sendall(raw)  # in the accept queue: no descriptor for it

        # Paused, not spinning: a busy accept loop burns a whole second of CPU per second.
        before = cpu_seconds(proc.pid)
        time.sleep(1.0)
        assert cpu_seconds(proc.pid) - before < 0.3

        # A client it holds asks: the proxy cannot dial (nor load what a first request
        # needs) and says so, 503, instead of a traceback and a closed connection.
        refused = request_over(held[0], raw)
        assert (refused.status, refused.header("X-Tinyproxy-Py-Cause")) == (503, "overloaded")
        assert b"out of resources" in refused.body

        for sock in held:
            sock.close()
        assert wait_until(lambda: get(address, origin.url("/bytes/10")).status == 200)
        assert get(address, origin.url("/bytes/10")).body == pattern_bytes(10)
        end_process(proc)
        assert proc.stderr is not None
        log = proc.stderr.read()
    assert "Too many open files; pausing accepts" in log
    assert "accepting again after" in log
    assert "Traceback" not in log
