"""What an idle proxy has loaded: TLS (libssl, libcrypto) and urllib3 wait for the first
request that needs them, about 9 MiB of an idle process's RSS (docs/performance.md)."""

from __future__ import annotations

from pathlib import Path

from ..kit.origins import OriginServer
from ..kit.responses import get
from ..kit.waits import wait_until
from ..support import address_of, proxy_process

TLS = ("libssl", "libcrypto", "/_ssl.", "/_hashlib.")


def tls_mapped(pid: int) -> list[str]:
    """The TLS libraries mapped into the process, from /proc/PID/maps."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if any(name in line for name in TLS)})


def test_an_idle_proxy_loads_tls_only_when_a_request_needs_it(origin: OriginServer) -> None:
    with proxy_process() as (proc, url):
        assert tls_mapped(proc.pid) == []
        assert get(address_of(url), origin.url("/bytes/1")).status == 200  # urllib3 comes with ssl
        assert tls_mapped(proc.pid) != []


def test_credentials_load_hashlib_and_nothing_else_of_tls() -> None:
    with proxy_process("--basic-auth", "u:p") as (proc, _):
        assert [path for path in tls_mapped(proc.pid) if "ssl" in path] == []


def test_workers_have_what_the_first_request_needs_before_it_comes() -> None:
    """--workers: the parent loads it once before forking, so no worker's first client
    waits some 40 ms for imports, and the workers share those pages."""
    with proxy_process("--workers", "2") as (proc, _):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        assert wait_until(lambda: len(children.read_text().split()) == 2)
        workers = [int(pid) for pid in children.read_text().split()]
        assert all(tls_mapped(pid) != [] for pid in workers)  # urllib3 comes with ssl
