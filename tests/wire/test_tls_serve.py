"""The TLS listener as `tinyproxy-py serve` runs it: beside the clear one, in every
worker, and with its certificate reread on SIGHUP without dropping a connection."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

import trustme

from tinyproxy_py.app.workers import RESTART_AFTER

from ..kit.responses import request_over
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import proxy_process

HEALTH = b"GET http://tinyproxy-py.stats/healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def issue(ca: trustme.CA, folder: Path) -> tuple[str, str]:
    issued = ca.issue_cert("127.0.0.1")
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def listening(urls: str) -> dict[str, tuple[str, int]]:
    """scheme → address, from the 'listening on URL and URL' line."""
    found = {}
    for url in urls.split(" and "):
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        found[parts.scheme] = (parts.hostname, parts.port)
    return found


def connect_tls(address: tuple[str, int], ca: trustme.CA) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    sock = socket.create_connection(address, timeout=MUST_NOT_EXPIRE)
    try:
        return context.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def handshakes_with(address: tuple[str, int], ca: trustme.CA) -> bool:
    try:
        connect_tls(address, ca).close()
    except ssl.SSLCertVerificationError:
        return False
    return True


def test_sighup_rereads_the_certificate_and_keeps_open_connections(tmp_path: Path) -> None:
    first_ca, second_ca = trustme.CA(), trustme.CA()
    cert, key = issue(first_ca, tmp_path)
    with proxy_process("--tls-port", "0", "--tls-cert", cert, "--tls-key", key) as (proc, urls):
        address = listening(urls)["https"]
        with connect_tls(address, first_ca) as before:
            assert request_over(before, HEALTH).status == 200
            issue(second_ca, tmp_path)  # as certbot renews: the same paths, new contents
            proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: handshakes_with(address, second_ca), MUST_NOT_EXPIRE)
            assert not handshakes_with(address, first_ca)
            assert request_over(before, HEALTH).status == 200  # the open connection goes on


def test_every_worker_serves_the_clear_and_the_tls_listener(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = issue(ca, tmp_path)
    with proxy_process("--workers", "2", "--tls-port", "0", "--tls-cert", cert, "--tls-key", key) as (
        _,
        urls,
    ):
        found = listening(urls)
        assert set(found) == {"http", "https"}
        workers: set[int] = set()

        def both_seen() -> bool:
            with connect_tls(found["https"], ca) as sock:  # new connections: spread over workers
                raw = b"GET http://tinyproxy-py.stats/json HTTP/1.1\r\nHost: x\r\n\r\n"
                answer = request_over(sock, raw)
                assert answer.status == 200
                stats = json.loads(answer.body)
            workers.update(stats["workers"])
            return len(workers) == 2 and stats["counters"].get("tls_handshakes.ok", 0) >= 2

        assert wait_until(both_seen, MUST_NOT_EXPIRE)
        with socket.create_connection(found["http"], timeout=MUST_NOT_EXPIRE) as clear:
            assert request_over(clear, HEALTH).status == 200


def test_a_replacement_worker_starts_with_the_pair_that_loaded_not_a_broken_file(tmp_path: Path) -> None:
    """A renewal gone wrong (the key no longer matches) must not keep a worker from
    starting after another died: it starts with the pair the parent last loaded."""
    ca = trustme.CA()
    cert, key = issue(ca, tmp_path)
    args = (
        "--workers",
        "2",
        "--tls-port",
        "0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--log-level",
        "warning",
    )
    with proxy_process(*args) as (proc, urls):
        clear = listening(urls)["http"]

        def workers() -> list[int]:
            try:
                with socket.create_connection(clear, timeout=MUST_NOT_EXPIRE) as sock:
                    raw = b"GET http://tinyproxy-py.stats/json HTTP/1.1\r\nHost: x\r\n\r\n"
                    return sorted(json.loads(request_over(sock, raw).body)["workers"])
            except ConnectionResetError:  # queued for the killed worker: the kernel resets those
                return []

        assert wait_until(lambda: len(workers()) == 2)
        first = workers()
        Path(key).write_text(trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes().decode())
        proc.send_signal(signal.SIGHUP)  # every process keeps the pair it has
        time.sleep(RESTART_AFTER)  # one that dies sooner is a broken start: all would stop
        os.kill(first[0], signal.SIGKILL)
        assert wait_until(lambda: len(set(workers()) - set(first)) == 1)
        for _ in range(10):  # new connections reach both workers
            assert handshakes_with(listening(urls)["https"], ca)
        assert proc.poll() is None
