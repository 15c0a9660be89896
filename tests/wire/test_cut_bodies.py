"""A body the proxy knows was cut reaches the client as cut, never as complete.

A client reading up to the close (an HTTP/1.0 client, any client of a close-delimited
body) cannot tell a truncated body from a whole one by a FIN: the proxy resets the
connection instead. Over TLS, an origin's close without close_notify is a truncation
too (RFC 9112 §9.8), not the end of a close-delimited body.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

import trustme

from tinyproxy_py import ProxyServer

from ..kit.clients import recv_head
from ..kit.servers import scripted_server
from ..kit.waits import MUST_NOT_EXPIRE

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
CLOSE_HEAD = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"


def connected(proxy: ProxyServer) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=MUST_NOT_EXPIRE)


def read_until_closed(sock: socket.socket) -> tuple[bytes, str]:
    """What arrived, and how it ended: "eof" (a FIN, which says the body is whole) or "reset"."""
    sock.settimeout(MUST_NOT_EXPIRE)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        return b"".join(chunks), "reset"
    return b"".join(chunks), "eof"


def test_a_chunked_body_cut_by_the_origin_resets_an_http10_client(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    """The HTTP/1.0 client gets the body delimited by the close: a FIN would say "whole"."""

    def script(sock: socket.socket) -> None:
        recv_head(sock)
        sock.sendall(CHUNKED_HEAD + b"5\r\nhello\r\n")  # no last chunk: then the close

    proxy = make_proxy()
    with scripted_server(script) as server, connected(proxy) as sock:
        sock.sendall(f"GET http://127.0.0.1:{server.port}/ HTTP/1.0\r\n\r\n".encode())
        data, ending = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200") or data == b""
    assert ending == "reset"
    assert proxy.stats.counter("errors.origin-abort") == 1


def test_an_http10_client_of_a_whole_close_delimited_body_gets_a_fin(
    make_proxy: Callable[..., ProxyServer],
) -> None:
    def script(sock: socket.socket) -> None:
        recv_head(sock)
        sock.sendall(CLOSE_HEAD + b"all of it")

    proxy = make_proxy()
    with scripted_server(script) as server, connected(proxy) as sock:
        sock.sendall(f"GET http://127.0.0.1:{server.port}/ HTTP/1.0\r\n\r\n".encode())
        data, ending = read_until_closed(sock)
    assert (data.endswith(b"\r\n\r\nall of it"), ending) == (True, "eof")


def tls_close_delimited(ca: trustme.CA, close_notify: bool) -> Callable[[socket.socket], None]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    def script(raw: socket.socket) -> None:
        with context.wrap_socket(raw, server_side=True) as sock:  # close(): no close_notify
            recv_head(sock)
            sock.sendall(CLOSE_HEAD + b"partial")
            if close_notify:
                sock.unwrap()  # the TLS close: the body ends here

    return script


def test_a_tls_close_without_close_notify_is_a_cut_not_the_end_of_the_body(
    make_proxy: Callable[..., ProxyServer], ca: trustme.CA, ca_file: object
) -> None:
    proxy = make_proxy(ca_bundle=str(ca_file))
    for close_notify in (True, False):
        with scripted_server(tls_close_delimited(ca, close_notify)) as server, connected(proxy) as sock:
            sock.sendall(f"GET https://127.0.0.1:{server.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data, ending = read_until_closed(sock)
        # To an HTTP/1.1 client the body goes chunked: whole, it ends with the last chunk.
        whole = data.endswith(b"7\r\npartial\r\n0\r\n\r\n")
        if close_notify:
            assert (whole, ending) == (True, "eof")
        else:
            assert not whole and ending == "reset", data
    assert proxy.stats.counter("errors.origin-abort") == 1
