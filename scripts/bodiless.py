#!/usr/bin/env python3
"""What closing the origin connection after a bodiless answer costs (issue 24).

An origin connection goes back to the pool only after a body whose framing says where it
ends; after a HEAD, 204 or 304 answer it is closed (an origin with `do_HEAD = do_GET`
sends a body anyway, which would reach the next client). This measures the price on the
friendliest origin: one keep-alive client sends REQUESTS HEADs, then REQUESTS GETs
answered 204, on one connection through `python -m tinyproxy_py serve` to a Python
HTTP/1.1 origin; best of three runs each, for this checkout and for --before DIR.

  python3 scripts/bodiless.py [--before DIR] [--requests 2000]

Loopback only; everything started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.kit, via bench_lib
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lib

from bench_lib import services


class _Origin(BaseHTTPRequestHandler):
    """HTTP/1.1, keep-alive, a well-behaved HEAD (no body) and a 204 at /204."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()


def rate(proxy_port: int, origin_port: int, method: str, requests: int) -> float:
    """Requests per second, one connection, each answer read before the next request."""
    path = "/" if method == "HEAD" else "/204"
    request = f"{method} http://127.0.0.1:{origin_port}{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as sock:
        reader = sock.makefile("rb")
        started = time.perf_counter()
        for _ in range(requests):
            sock.sendall(request)
            while reader.readline() not in (b"\r\n", b""):
                pass  # a bodiless answer: the head is all of it
        return requests / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", type=Path, help="another tinyproxy-py tree to measure too")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    trees = {"tinyproxy-py": services.REPO}
    if args.before:
        trees["tinyproxy-py (before)"] = args.before.resolve()
    origin = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    origin.daemon_threads = True
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    print("| tree | HEAD, req/s | GET answered 204, req/s |\n| --- | ---: | ---: |")
    try:
        with tempfile.TemporaryDirectory(prefix="tinyproxy-py-bodiless-") as workdir:
            for name, source in trees.items():
                with contextlib.ExitStack() as stack:
                    proxy = services.start_tinyproxy_py(
                        Path(workdir) / name, sys.executable, (), name, source
                    )
                    stack.callback(proxy.child.stop)
                    port = origin.server_address[1]
                    best = [
                        max(rate(proxy.port, port, m, args.requests) for _ in range(3))
                        for m in ("HEAD", "GET")
                    ]
                    print(f"| {name} | {best[0]:,.0f} | {best[1]:,.0f} |")
    finally:
        origin.shutdown()
        origin.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
