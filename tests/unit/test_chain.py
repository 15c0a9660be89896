"""The parent-proxy handshakes as tables: bytes in, a step, "need more", or an error.

Every case runs twice: the parent's answer given at once, and one byte at a time (what a
slow parent or a small TCP segment does). The driver's own part (deadlines, a parent that
closes, the socket handed over) is tested on real sockets in tests/wire/test_chain_wire.py.
"""

from __future__ import annotations

import base64

import pytest

from tinyproxy_py.errors import BadGateway, BadRequest, Cause, GatewayTimeout, LoopDetected, ProxyError
from tinyproxy_py.net.chain import (
    MAX_INTERIM,
    ConnectHandshake,
    Handshake,
    Socks5Handshake,
    auth_request,
    connect_request,
    greeting,
)
from tinyproxy_py.settings.routes import Parent

LABEL = "parent proxy P"
SPLITS = pytest.mark.parametrize("piecewise", [False, True], ids=["whole", "bytewise"])


def converse(handshake: Handshake, answer: bytes, piecewise: bool) -> tuple[list[bytes], bytes | None]:
    """Run `handshake` against a parent that answers `answer`, as the driver does:
    (everything sent, the bytes after the handshake or None if it still needs more)."""
    sent, received = [handshake.start()], b""
    pieces = iter([answer[i : i + 1] for i in range(len(answer))] if piecewise else [answer])
    while True:
        step = handshake.advance(received)
        if step is None:
            piece = next(pieces, None)
            if piece is None:
                return sent, None
            received += piece
            continue
        received = received[step.consumed :]
        if step.send:
            sent.append(step.send)
        if step.done:
            return sent, received


def refused(handshake: Handshake, answer: bytes, piecewise: bool) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        converse(handshake, answer, piecewise)
    return caught.value


# --- SOCKS5 -----------------------------------------------------------------------------------

IPV4_REPLY = b"\x05\x00\x00\x01" + bytes([127, 0, 0, 1]) + b"\x1f\x90"
IPV6_REPLY = b"\x05\x00\x00\x04" + bytes(16) + b"\x1f\x90"
NAME_REPLY = b"\x05\x00\x00\x03\x0dbound.example\x01\xbb"


def socks(
    host: str = "127.0.0.1", port: int = 443, user: str | None = None, password: str | None = None
) -> Socks5Handshake:
    return Socks5Handshake(LABEL, host, port, user, password)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", b"\x01\x7f\x00\x00\x01"),
        ("::1", b"\x04" + bytes(15) + b"\x01"),
        ("[::1]", b"\x04" + bytes(15) + b"\x01"),
        ("origin.example", b"\x03\x0eorigin.example"),  # a name goes as a name: the parent resolves it
        ("bücher.example", b"\x03\x15xn--bcher-kva.example"),
    ],
)
def test_the_connect_request_carries_literals_as_addresses_and_names_as_names(
    host: str, address: bytes
) -> None:
    assert connect_request(host, 443) == b"\x05\x01\x00" + address + b"\x01\xbb"


@SPLITS
@pytest.mark.parametrize("reply", [IPV4_REPLY, IPV6_REPLY, NAME_REPLY], ids=["ipv4", "ipv6", "name"])
def test_no_auth_then_connect_and_the_bytes_after_the_reply_are_the_targets(
    reply: bytes, piecewise: bool
) -> None:
    sent, rest = converse(socks(), b"\x05\x00" + reply + b"220 ready\r\n", piecewise)
    assert sent == [greeting(False), connect_request("127.0.0.1", 443)]
    assert rest == (b"" if piecewise else b"220 ready\r\n")  # bytewise: the reply ends exactly


@SPLITS
def test_user_and_password_are_offered_and_sent_when_asked(piecewise: bool) -> None:
    sent, rest = converse(socks(user="alice", password="s3cret"), b"\x05\x02\x01\x00" + IPV4_REPLY, piecewise)
    assert sent == [b"\x05\x02\x00\x02", auth_request("alice", "s3cret"), connect_request("127.0.0.1", 443)]
    assert rest == b""


@SPLITS
def test_credentials_are_not_sent_when_the_parent_wants_none(piecewise: bool) -> None:
    sent, _ = converse(socks(user="alice", password="s3cret"), b"\x05\x00" + IPV4_REPLY, piecewise)
    assert sent == [b"\x05\x02\x00\x02", connect_request("127.0.0.1", 443)]


@SPLITS
@pytest.mark.parametrize("status_version", [1, 5])  # some servers answer VER 5: only STATUS counts
def test_an_auth_status_of_zero_is_success_whatever_its_version(status_version: int, piecewise: bool) -> None:
    answer = b"\x05\x02" + bytes([status_version, 0]) + IPV4_REPLY
    assert converse(socks(user="a", password="b"), answer, piecewise)[1] == b""


@SPLITS
@pytest.mark.parametrize(
    ("user", "answer", "fragment"),
    [
        ("alice", b"\x05\x02\x01\x01", "refused the user name or password"),
        (None, b"\x05\x02", "wants a user name and password; none is configured"),
        (None, b"\x05\xff", "accepts none of the offered authentication methods"),
        ("alice", b"\x05\xff", "accepts none of the offered authentication methods"),
    ],
)
def test_auth_failures_are_parent_auth_and_never_show_the_password(
    user: str | None, answer: bytes, fragment: str, piecewise: bool
) -> None:
    error = refused(socks(user=user, password="s3cret" if user else None), answer, piecewise)
    assert (type(error), error.cause, error.message) == (BadGateway, Cause.PARENT_AUTH, f"{LABEL} {fragment}")
    assert "s3cret" not in error.message


@SPLITS
@pytest.mark.parametrize(
    ("reply", "error_type", "cause", "text"),
    [
        (1, BadGateway, Cause.PARENT_ERROR, "general SOCKS server failure"),
        (2, BadGateway, Cause.PARENT_FORBIDDEN, "connection not allowed by ruleset"),
        (3, BadGateway, Cause.PARENT_UNREACHABLE, "network unreachable"),
        (4, BadGateway, Cause.PARENT_UNREACHABLE, "host unreachable"),
        (5, BadGateway, Cause.PARENT_REFUSED, "connection refused"),
        (6, GatewayTimeout, Cause.PARENT_TIMEOUT, "TTL expired"),
        (7, BadGateway, Cause.PARENT_PROTOCOL, "command not supported"),
        (8, BadGateway, Cause.PARENT_PROTOCOL, "address type not supported"),
        (99, BadGateway, Cause.PARENT_ERROR, "unknown reply"),
    ],
)
def test_each_failure_reply_has_its_cause_and_names_parent_and_target(
    reply: int, error_type: type[ProxyError], cause: Cause, text: str, piecewise: bool
) -> None:
    # The reply's first four bytes are enough to judge it: a parent may close right after.
    error = refused(socks(port=9), b"\x05\x00" + bytes([5, reply, 0, 1]), piecewise)
    assert (type(error), error.cause) == (error_type, cause)
    assert error.message == f"{LABEL} could not connect to 127.0.0.1:9: {text} (SOCKS5 reply {reply})"


@SPLITS
@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "is not a SOCKS5 server"),
        (b"\x05\x07", "chose authentication method 7, which was not offered"),
        (b"\x05\x02", "wants a user name and password"),  # not offered either: said plainly
        (b"\x05\x00\x05\x00\x00\x09", "sent an unknown address type 9"),
        (b"\x05\x00\x04\x00\x00\x01", "sent a reply that is not SOCKS5"),
    ],
)
def test_garbage_is_a_protocol_error_that_does_not_echo_it(
    answer: bytes, fragment: str, piecewise: bool
) -> None:
    error = refused(socks(), answer, piecewise)
    assert fragment in error.message
    assert "Bad Request" not in error.message
    assert error.status == 502


@SPLITS
@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"\x05",
        b"\x05\x00",
        b"\x05\x00\x05\x00\x00",
        b"\x05\x00\x05\x00\x00\x03",
        b"\x05\x00" + NAME_REPLY[:-1],
    ],
)
def test_an_unfinished_answer_needs_more(answer: bytes, piecewise: bool) -> None:
    assert converse(socks(), answer, piecewise)[1] is None


def test_a_name_too_long_for_socks_fails_before_any_byte_is_sent() -> None:
    with pytest.raises(BadGateway) as caught:
        socks(host="a" * 256 + ".invalid")
    assert caught.value.cause == Cause.DNS


# --- HTTP CONNECT ---------------------------------------------------------------------------


def connect(host: str = "origin.example", credentials: str | None = None, via: str = "") -> ConnectHandshake:
    return ConnectHandshake(LABEL, host, 443, credentials, via)


@pytest.mark.parametrize(
    ("handshake", "request_head"),
    [
        (connect(), b"CONNECT origin.example:443 HTTP/1.1\r\nHost: origin.example:443\r\n\r\n"),
        (connect("[::1]"), b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"),
        (connect("::1"), b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"),
        (
            connect(credentials="Basic YTpi", via="1.1 tp (ab12)"),
            b"CONNECT origin.example:443 HTTP/1.1\r\nHost: origin.example:443\r\n"
            b"Via: 1.1 tp (ab12)\r\nProxy-Authorization: Basic YTpi\r\n\r\n",
        ),
    ],
)
def test_the_connect_request(handshake: ConnectHandshake, request_head: bytes) -> None:
    assert handshake.start() == request_head


def test_credentials_go_as_the_parent_url_gave_them() -> None:
    parent = Parent("http", "127.0.0.1", 1, "alice", "pä:ss")
    head = connect(credentials=parent.proxy_authorization()).start()
    line = next(line for line in head.split(b"\r\n") if line.startswith(b"Proxy-Authorization"))
    assert base64.b64decode(line.split(b" ")[-1]) == "alice:pä:ss".encode()


@pytest.mark.parametrize("host", ["evil\r\nX-Injected: 1", "a b", "a/b"])
def test_targets_that_would_break_the_request_head_are_refused_before_sending(host: str) -> None:
    with pytest.raises(BadRequest):
        connect(host)


@SPLITS
@pytest.mark.parametrize(
    ("answer", "rest"),
    [
        (b"HTTP/1.1 200 Connection established\r\nX-Note: hi\r\n\r\nearly bytes", b"early bytes"),
        (b"HTTP/1.0 200 OK\r\n\r\n", b""),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nhello", b"hello"),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * MAX_INTERIM + b"HTTP/1.1 200 OK\r\n\r\n", b""),
    ],
)
def test_a_2xx_opens_the_tunnel_after_any_interim_answers(
    answer: bytes, rest: bytes, piecewise: bool
) -> None:
    sent, after = converse(connect(), answer, piecewise)
    assert len(sent) == 1
    assert after == (b"" if piecewise else rest)  # bytewise: the head ends exactly


@SPLITS
@pytest.mark.parametrize(
    ("credentials", "why"),
    [("Basic YTpi", "refused the configured credentials"), (None, "wants credentials; none are configured")],
)
def test_407_is_parent_auth_saying_whether_credentials_were_sent(
    credentials: str | None, why: str, piecewise: bool
) -> None:
    answer = b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"\r\n\r\n'
    error = refused(connect(credentials=credentials), answer, piecewise)
    assert (error.cause, error.message) == (Cause.PARENT_AUTH, f"{LABEL} {why} (407)")


@SPLITS
@pytest.mark.parametrize(
    ("status", "shown"),
    [(b"502 <script>evil</script>", "502 Bad Gateway"), (b"403 Nope", "403 Forbidden"), (b"599 x", "599")],
)
def test_other_statuses_name_the_status_but_never_the_reason_sent(
    status: bytes, shown: str, piecewise: bool
) -> None:
    error = refused(connect(), b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n", piecewise)
    assert (error.cause, error.message) == (
        Cause.PARENT_STATUS,
        f"{LABEL} refused CONNECT to origin.example:443: {shown}",
    )


@SPLITS
def test_508_from_the_parent_is_a_loop(piecewise: bool) -> None:
    error = refused(connect(), b"HTTP/1.1 508 Loop Detected\r\n\r\n", piecewise)
    assert isinstance(error, LoopDetected)


@SPLITS
@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "status line"),
        (b"HTTP/2 200\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101 Switching Protocols"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM + 1), f"more than {MAX_INTERIM} interim"),
    ],
)
def test_broken_answers_are_protocol_errors(answer: bytes, fragment: str, piecewise: bool) -> None:
    error = refused(connect(), answer, piecewise)
    assert fragment in error.message
    assert error.status == 502


@SPLITS
@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nX: y\r\n\r"])
def test_an_unfinished_head_needs_more(answer: bytes, piecewise: bool) -> None:
    assert converse(connect(), answer, piecewise)[1] is None
