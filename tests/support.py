"""Helpers for the wire tests alone: a proxy in a child process, a clean environment for
the clients a test spawns, a name that cannot resolve. The traffic kit (tests/kit) has
the rest, shared with scripts/.
"""

from __future__ import annotations

import os
import resource
import selectors
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .kit.servers import end_process
from .kit.waits import MUST_NOT_EXPIRE

# A name the proxies make_proxy starts cannot resolve: their resolver never asks DNS.
UNRESOLVABLE = "unresolvable.invalid"


def client_env(**extra: str) -> dict[str, str]:
    """The environment for a spawned client: no inherited proxies or CA bundles."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    drop_ca = {"CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop and k not in drop_ca}
    env.update(extra)
    return env


def address_of(url: str) -> tuple[str, int]:
    """The (host, port) of a proxy_process URL."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextmanager
def proxy_process(*args: str, open_files: int = 0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m tinyproxy_py serve --port 0 ARGS` in a child; yields (process, proxy URL).

    `open_files`: its RLIMIT_NOFILE, as `prlimit --nofile=N:N` sets it (0: inherited).
    Stopped with SIGTERM on exit (killed if it does not exit in time).
    """

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    command = [sys.executable, "-m", "tinyproxy_py", "serve", "--port", "0", *args]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=client_env(),
        preexec_fn=limit if open_files else None,
    )
    try:
        line = _read_line(proc, MUST_NOT_EXPIRE)
        url = line.split("listening on ", 1)[1].split(";", 1)[0]
        yield proc, url
    finally:
        end_process(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError("the proxy printed nothing")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the proxy exited: {proc.stderr.read() if proc.stderr else ''}")
    return line
