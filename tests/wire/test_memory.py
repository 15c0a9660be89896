"""A large streamed download must not grow the proxy's memory: bodies are never held whole."""

from __future__ import annotations

import socket

from ..kit.origins import OriginServer
from ..kit.procfs import status_field
from ..kit.waits import MUST_NOT_EXPIRE
from ..support import address_of, proxy_process

MiB = 1024 * 1024
DOWNLOAD = 256 * MiB
ALLOWED_GROWTH_KIB = 16 * 1024


def download(proxy_url: str, url: str) -> int:
    received = 0
    with socket.create_connection(address_of(proxy_url), timeout=MUST_NOT_EXPIRE) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        buffer = bytearray(1024 * 1024)
        while n := sock.recv_into(buffer):
            received += n
    return received


def test_large_download_keeps_peak_rss_flat(origin: OriginServer) -> None:
    with proxy_process("--log-level", "warning") as (proc, url):
        download(url, origin.url("/bytes/1000000"))  # warm up: pool, buffers, imports
        before = status_field(proc.pid, "VmHWM")
        received = download(url, origin.url(f"/bytes/{DOWNLOAD}"))
        growth = status_field(proc.pid, "VmHWM") - before
    assert received > DOWNLOAD  # the body plus the response head
    assert growth < ALLOWED_GROWTH_KIB, f"peak RSS grew by {growth} KiB"
