"""Bytes an origin sends after a bodiless answer never reach another request.

After a HEAD, 204 or 304 head nothing tells where the exchange ends: an origin that sends
a body anyway (Python's http.server with `do_HEAD = do_GET` does, in a second write) or
a stray response a second later would have it read as the next request's answer if the
connection went back to the pool. The proxy closes such a connection instead.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tinyproxy_py import ProxyServer

from ..kit.clients import recv_head
from ..kit.responses import get, request_over
from ..kit.servers import scripted_server
from ..kit.waits import MUST_NOT_EXPIRE

MakeProxy = Callable[..., ProxyServer]

# What an attacker makes the origin send as the body of its HEAD answer: read as a
# response by the proxy, it would be the next client's answer.
POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED"


class _BuggyHead(BaseHTTPRequestHandler):
    """`do_HEAD = do_GET`: the head, then the body in a write of its own."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = POISON if self.path == "/attacker" else b"victim-ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(0.002)  # a separate segment: it arrives after the proxy read the head
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def buggy_origin() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BuggyHead)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(MUST_NOT_EXPIRE)


def test_a_body_sent_after_a_head_answer_never_reaches_another_client(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    with buggy_origin() as port:
        stop = threading.Event()
        attacks = [0]

        def attacker() -> None:
            raw = f"HEAD http://127.0.0.1:{port}/attacker HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            while not stop.is_set():
                try:
                    with socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE) as sock:
                        while not stop.is_set():
                            request_over(sock, raw, method="HEAD")
                            attacks[0] += 1
                except (OSError, http.client.HTTPException):
                    continue  # its own answers may be the ones that went wrong

        threads = [threading.Thread(target=attacker) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            answers = [get(proxy.address, f"http://127.0.0.1:{port}/victim") for _ in range(300)]
        finally:
            stop.set()
            for thread in threads:
                thread.join(MUST_NOT_EXPIRE)
    assert attacks[0] > 100, f"only {attacks[0]} HEAD requests ran beside the victim's"
    wrong = [(a.status, a.body) for a in answers if (a.status, a.body) != (200, b"victim-ok")]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers were not the victim's own: {wrong[:3]}"


def test_a_stray_response_a_second_after_a_204_reaches_nobody(make_proxy: MakeProxy) -> None:
    """The origin answers its first request 204, then sends a whole response a second
    later; the next client asks at once, so only closing the connection keeps it out."""
    first = threading.Event()

    def origin(sock: socket.socket) -> None:
        recv_head(sock)
        if first.is_set():
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nmine")
            return
        first.set()
        sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        time.sleep(1.0)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")

    proxy = make_proxy()
    with scripted_server(origin) as server:
        url = f"http://127.0.0.1:{server.port}/"
        assert get(proxy.address, url).status == 204
        second = get(proxy.address, url)
        assert (second.status, second.body) == (200, b"mine")
        assert server.connections == 2
