"""The sans-IO response reader, pure: tables over every split point, body framing,
property tests on arbitrary bytes, and a differential test against h11.

`Exchange` does what the forwarder does with the bytes an origin sends for one request
(buffer, parse heads until a final one, frame the body, see EOF) without a socket, so
"the same bytes in other pieces give the same result" can be checked for any split.
The tables follow SPEC.md (issue 12); each invalid case names the RFC 9112 rule it enforces.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyproxy_py.errors import BadGateway, BadResponse
from tinyproxy_py.settings.config import Config
from tinyproxy_py.wire.response import BodyReader, ResponseHead, parse_response_head

from .test_http1 import CHUNK_FRAGMENTS, TCHARS, VCHARS, chunked_bodies, grammar

HEAD_LIMIT = 1024  # the least Config allows
FIELDS_LIMIT = 10
CONFIG = Config(port=0, max_response_head_bytes=HEAD_LIMIT, max_response_headers=FIELDS_LIMIT)
# A small field limit for the property tests, so that short inputs (and generated responses
# with up to 6 fields, some folded) reach it.
SMALL = Config(port=0, max_response_head_bytes=HEAD_LIMIT, max_response_headers=6)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(buf: bytes, method: str = "GET", config: Config = CONFIG) -> tuple[ResponseHead, int] | None:
    return parse_response_head(buf, config, method)


def head_of(raw: bytes, method: str = "GET") -> ResponseHead:
    parsed = parse(raw, method)
    assert parsed is not None and parsed[1] == len(raw), raw
    return parsed[0]


def test_bad_response_is_a_502_named_bad_response() -> None:
    error = BadResponse("x")
    assert isinstance(error, BadGateway)
    assert error.status == 502 and error.cause == "bad-response"


# --- valid heads: (name, head, bytes after it, request method, expected head) ------------------


@dataclass(frozen=True)
class Want:
    """What a parsed head must say. None for codings/connection_tokens: not checked;
    fields named in unchecked_fields may be in the headers or not."""

    status: int = 200
    reason: str = "OK"
    version: str = "HTTP/1.1"
    headers: tuple[tuple[str, str], ...] = ()
    framing: str = "close"
    length: int | None = None  # set only when framing == "length"
    keep_alive: bool = True
    codings: tuple[str, ...] | None = ()
    connection_tokens: frozenset[str] | None = None
    unchecked_fields: frozenset[str] = frozenset()  # lower-case names whose presence is not checked


def seen(head: ResponseHead, want: Want) -> Want:
    got = Want(
        head.status,
        head.reason,
        head.version,
        tuple((k, v) for k, v in head.headers if k.lower() not in want.unchecked_fields),
        head.framing,
        head.length,
        head.keep_alive,
        tuple(head.codings),
        head.connection_tokens,
        want.unchecked_fields,
    )
    if want.codings is None:
        got = dataclasses.replace(got, codings=None)
    if want.connection_tokens is None:
        got = dataclasses.replace(got, connection_tokens=None)
    return got


OK = b"HTTP/1.1 200 OK\r\n"
CL0 = ("Content-Length", "0")


def exact_size_head(size: int) -> bytes:
    prefix, suffix = OK + b"X-Fill: ", b"\r\n\r\n"
    return prefix + b"a" * (size - len(prefix) - len(suffix)) + suffix


def many_fields(count: int) -> bytes:
    return OK + b"".join(b"X-%d: v\r\n" % i for i in range(count)) + b"\r\n"


VALID: list[tuple[str, bytes, bytes, str, Want]] = [
    # Status line (RFC 9112 §4): HTTP-version SP 3DIGIT [SP reason-phrase].
    (
        "http-1.1-length",
        OK + b"Content-Length: 5\r\n\r\n",
        b"hello",
        "GET",
        Want(headers=(("Content-Length", "5"),), framing="length", length=5),
    ),
    (
        "http-1.0-length",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(version="HTTP/1.0", headers=(CL0,), framing="length", length=0, keep_alive=False),
    ),
    (
        "no-reason-no-space",
        b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(reason="", headers=(CL0,), framing="length", length=0),
    ),
    (
        "empty-reason-after-space",
        b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(status=404, reason="", headers=(CL0,), framing="length", length=0),
    ),
    (
        "reason-with-spaces-htab-obs-text",
        b"HTTP/1.1 404 Not\tFound caf\xe9 (x)\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(status=404, reason="Not\tFound caf\xe9 (x)", headers=(CL0,), framing="length", length=0),
    ),
    (
        "status-599-highest",
        b"HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(status=599, reason="Whatever", headers=(CL0,), framing="length", length=0),
    ),
    # §6.3 rule 1: 1xx has no content; what follows is the next response.
    (
        "status-100-lowest",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",
        "GET",
        Want(status=100, reason="Continue", framing="none"),
    ),
    (
        "103-early-hints",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "GET",
        Want(status=103, reason="Early Hints", headers=(("Link", "</s.css>; rel=preload"),), framing="none"),
    ),
    (
        "101-switching-protocols",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"\x81\x00",
        "GET",
        Want(
            status=101,
            reason="Switching Protocols",
            headers=(("Upgrade", "websocket"), ("Connection", "Upgrade")),
            framing="none",
            connection_tokens=frozenset({"upgrade"}),
        ),
    ),
    # §2.2: a bare LF is accepted as a line end (MAY), also in the blank line that ends the head.
    (
        "lf-only-line-ends",
        b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\n",
        b"ok",
        "GET",
        Want(headers=(("Content-Length", "2"), ("X-A", "b")), framing="length", length=2),
    ),
    (
        "crlf-then-lf-blank-line",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\n",
        b"\n",
        "GET",
        Want(headers=(("Content-Length", "1"),), framing="length", length=1),
    ),
    (
        "lf-then-crlf-blank-line",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\r\n",
        b"\r\n",
        "GET",
        Want(headers=(("Content-Length", "2"),), framing="length", length=2),
    ),
    (
        "lf-head-then-body-starting-with-crlf",
        b"HTTP/1.1 200 OK\nContent-Length: 4\n\n",
        b"\r\n\r\n",
        "GET",
        Want(headers=(("Content-Length", "4"),), framing="length", length=4),
    ),
    (
        "binary-body-after-head-is-not-looked-at",
        OK + b"Content-Length: 6\r\n\r\n",
        b"\x00\r\x01\n\x7f\r",
        "GET",
        Want(headers=(("Content-Length", "6"),), framing="length", length=6),
    ),
    # §5: fields; OWS around the value trimmed, empty values, names as sent, order kept.
    (
        "ows-trimmed-empty-value-colon-in-value",
        OK + b"X-A: \t spaced out \t\r\nX-Empty:\r\nX-Colon: a:b\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(
            headers=(("X-A", "spaced out"), ("X-Empty", ""), ("X-Colon", "a:b"), CL0),
            framing="length",
            length=0,
        ),
    ),
    (
        "obs-text-and-htab-in-values",
        OK + b"X-Text: caf\xe9\xff\r\nX-Tab: a\tb\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("X-Text", "caf\xe9\xff"), ("X-Tab", "a\tb"))),
    ),
    (
        "names-as-sent-and-repeats-in-order",
        OK + b"content-LENGTH: 0\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n",
        b"",
        "GET",
        Want(
            headers=(("content-LENGTH", "0"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")),
            framing="length",
            length=0,
        ),
    ),
    # §5.2: obs-fold (OWS CRLF RWS) is replaced by one SP.
    (
        "obs-fold",
        OK + b"X-A: one\r\n two\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("X-A", "one two"), CL0), framing="length", length=0),
    ),
    (
        "obs-fold-several-lines-tabs",
        OK + b"X-A: one\r\n\t two\r\n   three\r\nX-B: b\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("X-A", "one two three"), ("X-B", "b"))),
    ),
    (
        "obs-fold-ows-on-both-sides-of-the-break",
        OK + b"X-A: one \t\r\n \ttwo\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("X-A", "one two"),)),
    ),
    (
        "obs-fold-lf-only",
        b"HTTP/1.1 200 OK\nX-A: one\n two\n\n",
        b"",
        "GET",
        Want(headers=(("X-A", "one two"),)),
    ),
    (
        "obs-fold-whitespace-only-line-is-not-the-end",
        OK + b"X-A: one\r\n \r\nX-B: b\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("X-A", "one"), ("X-B", "b"))),
    ),
    (
        "obs-fold-of-an-empty-value",
        OK + b"X-A:\r\n two\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("X-A", "two"),)),
    ),
    # §5.1: whitespace between name and colon is removed (a proxy MUST), before framing is read.
    (
        "whitespace-before-colon-removed",
        OK + b"X-A : v\r\nX-B\t: w\r\nContent-Length \t: 3\r\n\r\n",
        b"abc",
        "GET",
        Want(
            headers=(("X-A", "v"), ("X-B", "w"), ("Content-Length", "3")),
            framing="length",
            length=3,
        ),
    ),
    # Limits: exactly max_response_head_bytes and max_response_headers are allowed; bytes
    # after the head do not count towards it.
    (
        "head-exactly-at-byte-limit-then-body",
        exact_size_head(HEAD_LIMIT),
        b"b" * 100,
        "GET",
        Want(headers=(("X-Fill", "a" * (HEAD_LIMIT - len(OK) - 12)),)),
    ),
    (
        "exactly-max-fields",
        many_fields(FIELDS_LIMIT),
        b"",
        "GET",
        Want(headers=tuple((f"X-{i}", "v") for i in range(FIELDS_LIMIT))),
    ),
    (
        # An obs-fold line continues a field: it is not one more field.
        "exactly-max-fields-with-folded-lines",
        many_fields(FIELDS_LIMIT)[:-2] + b" more\r\n\t\r\n\r\n",
        b"",
        "GET",
        Want(
            headers=tuple((f"X-{i}", "v more" if i == FIELDS_LIMIT - 1 else "v") for i in range(FIELDS_LIMIT))
        ),
    ),
    # §6.3 rule 1: HEAD, 204 and 304 have no content, whatever the framing fields say.
    (
        "head-request-with-length",
        OK + b"Content-Length: 10\r\n\r\n",
        b"",
        "HEAD",
        Want(headers=(("Content-Length", "10"),), framing="none"),
    ),
    (
        "head-request-with-chunked",
        OK + b"Transfer-Encoding: chunked\r\n\r\n",
        b"",
        "HEAD",
        Want(headers=(("Transfer-Encoding", "chunked"),), framing="none"),
    ),
    (
        "204-then-junk",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"junk",
        "GET",
        Want(status=204, reason="No Content", framing="none"),
    ),
    (
        "304-with-length",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        b"",
        "GET",
        Want(status=304, reason="Not Modified", headers=(("Content-Length", "10"),), framing="none"),
    ),
    # §6.3 rule 4 / §6.1: Transfer-Encoding.
    (
        "chunked",
        OK + b"Transfer-Encoding: chunked\r\n\r\n",
        b"0\r\n\r\n",
        "GET",
        Want(headers=(("Transfer-Encoding", "chunked"),), framing="chunked"),
    ),
    (
        "chunked-any-case",
        OK + b"transfer-encoding: Chunked\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("transfer-encoding", "Chunked"),), framing="chunked"),
    ),
    (
        # SPEC: "Content-Length ignored, dropped": ignored here; whether head.headers or the
        # forwarder drops it, SPEC.md does not say (origin/exchange.py drops it on relay).
        "chunked-overrides-content-length",
        OK + b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\nX-A: a\r\n\r\n",
        b"",
        "GET",
        Want(
            headers=(("Transfer-Encoding", "chunked"), ("X-A", "a")),
            framing="chunked",
            unchecked_fields=frozenset({"content-length"}),
        ),
    ),
    (
        "gzip-then-chunked",
        OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("Transfer-Encoding", "gzip, chunked"),), framing="chunked", codings=("gzip",)),
    ),
    (
        "codings-on-two-lines-lower-cased",
        OK + b"Transfer-Encoding: GZIP\r\nTransfer-Encoding: Deflate , chunked\r\n\r\n",
        b"",
        "GET",
        Want(
            headers=(("Transfer-Encoding", "GZIP"), ("Transfer-Encoding", "Deflate , chunked")),
            framing="chunked",
            codings=("gzip", "deflate"),
        ),
    ),
    (
        "final-coding-not-chunked-is-close-delimited",
        OK + b"Transfer-Encoding: gzip\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("Transfer-Encoding", "gzip"),), framing="close", codings=("gzip",)),
    ),
    (
        "chunked-not-last-is-close-delimited",
        OK + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        b"",
        "GET",
        # What `codings` holds when the last coding is not chunked: SPEC.md is silent.
        Want(headers=(("Transfer-Encoding", "chunked, gzip"),), framing="close", codings=None),
    ),
    # §6.3 rule 6: Content-Length.
    (
        "content-length-leading-zeros-and-ows",
        OK + b"Content-Length:  007 \t\r\n\r\n",
        b"1234567",
        "GET",
        Want(headers=(("Content-Length", "007"),), framing="length", length=7),
    ),
    (
        "content-length-18-digits",
        OK + b"Content-Length: 999999999999999999\r\n\r\n",
        b"",
        "GET",
        Want(headers=(("Content-Length", "9" * 18),), framing="length", length=10**18 - 1),
    ),
    # §6.3 rule 8: no framing field: the body ends when the origin closes.
    ("no-framing-1.1", OK + b"\r\n", b"body", "GET", Want(framing="close")),
    (
        "no-framing-1.0",
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"body",
        "GET",
        Want(version="HTTP/1.0", framing="close", keep_alive=False),
    ),
    # §9.3: persistence. HTTP/1.1 unless "close"; HTTP/1.0 only with "keep-alive".
    (
        "1.1-connection-close",
        OK + b"Connection: close\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(
            headers=(("Connection", "close"), CL0),
            framing="length",
            length=0,
            keep_alive=False,
            connection_tokens=frozenset({"close"}),
        ),
    ),
    (
        "1.1-close-token-any-case-in-a-list-on-a-second-line",
        OK + b"Connection: x-hop\r\nConnection: Upgrade , CLOSE\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(
            headers=(("Connection", "x-hop"), ("Connection", "Upgrade , CLOSE"), CL0),
            framing="length",
            length=0,
            keep_alive=False,
            connection_tokens=frozenset({"x-hop", "upgrade", "close"}),
        ),
    ),
    (
        "1.1-keep-alive-token-changes-nothing",
        OK + b"Connection: keep-alive\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(
            headers=(("Connection", "keep-alive"), CL0),
            framing="length",
            length=0,
            connection_tokens=frozenset({"keep-alive"}),
        ),
    ),
    (
        "1.0-keep-alive",
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(
            version="HTTP/1.0",
            headers=(("Connection", "Keep-Alive"), CL0),
            framing="length",
            length=0,
            connection_tokens=frozenset({"keep-alive"}),
        ),
    ),
    (
        "1.0-keep-alive-in-a-list",
        b"HTTP/1.0 200 OK\r\nConnection: x-a, keep-alive\r\nContent-Length: 0\r\n\r\n",
        b"",
        "GET",
        Want(
            version="HTTP/1.0",
            headers=(("Connection", "x-a, keep-alive"), CL0),
            framing="length",
            length=0,
            connection_tokens=frozenset({"x-a", "keep-alive"}),
        ),
    ),
]
VALID_IDS = [case[0] for case in VALID]


@pytest.mark.parametrize(("name", "head", "tail", "method", "want"), VALID, ids=VALID_IDS)
def test_valid_head_parses(name: str, head: bytes, tail: bytes, method: str, want: Want) -> None:
    parsed = parse(head + tail, method)
    assert parsed is not None
    got, used = parsed
    assert used == len(head)
    assert seen(got, want) == want
    assert got.interim == (100 <= want.status < 200)
    assert parse_response_head(bytearray(head + tail), CONFIG, method) == parsed


@pytest.mark.parametrize(("name", "head", "tail", "method", "want"), VALID, ids=VALID_IDS)
def test_valid_head_at_every_split_point(
    name: str, head: bytes, tail: bytes, method: str, want: Want
) -> None:
    """None until the head is all there, then the same head whatever follows."""
    raw = head + tail
    whole = parse(raw, method)
    for cut in range(len(raw) + 1):
        assert parse(raw[:cut], method) == (None if cut < len(head) else whole), f"prefix of {cut} bytes"


# --- invalid heads: (name, raw, request method); each a complete head ---------------------

GET = "GET"
INVALID: list[tuple[str, bytes, str]] = [
    # §2.3 / §4: HTTP-version is "HTTP/" DIGIT "." DIGIT, case-sensitive; only 1.0 and 1.1 (SPEC).
    ("http-2.0", b"HTTP/2.0 200 OK\r\n\r\n", GET),
    ("http-1.2", b"HTTP/1.2 200 OK\r\n\r\n", GET),
    ("http-0.9-no-status-line", b"<html>hello</html>\r\n\r\n", GET),
    ("icy", b"ICY 200 OK\r\nicy-name: x\r\n\r\n", GET),
    ("lower-case-http-name", b"http/1.1 200 OK\r\n\r\n", GET),
    ("version-without-minor", b"HTTP/1 200 OK\r\n\r\n", GET),
    ("version-two-digit-minor", b"HTTP/1.10 200 OK\r\n\r\n", GET),
    ("version-only", b"HTTP/1.1\r\n\r\n", GET),
    ("space-before-version", b" HTTP/1.1 200 OK\r\n\r\n", GET),
    # §4: status-code = 3DIGIT, single SP separators; SPEC: 100..599.
    ("status-missing", b"HTTP/1.1 \r\n\r\n", GET),
    ("status-two-digits", b"HTTP/1.1 20 OK\r\n\r\n", GET),
    ("status-four-digits", b"HTTP/1.1 2000 OK\r\n\r\n", GET),
    ("status-099", b"HTTP/1.1 099 Low\r\n\r\n", GET),
    ("status-000", b"HTTP/1.1 000 Zero\r\n\r\n", GET),
    ("status-600", b"HTTP/1.1 600 High\r\n\r\n", GET),
    ("status-999", b"HTTP/1.1 999 High\r\n\r\n", GET),
    ("status-not-digits", b"HTTP/1.1 2x0 OK\r\n\r\n", GET),
    ("status-signed", b"HTTP/1.1 +20 OK\r\n\r\n", GET),
    ("status-superscript-digit", b"HTTP/1.1 \xb200 OK\r\n\r\n", GET),
    ("status-glued-to-reason", b"HTTP/1.1 200OK\r\n\r\n", GET),
    ("htab-before-status", b"HTTP/1.1\t200 OK\r\n\r\n", GET),
    ("two-spaces-before-status", b"HTTP/1.1  200 OK\r\n\r\n", GET),
    # §2.2: a CR not followed by LF anywhere in the head.
    ("bare-cr-ends-status-line", b"HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n", GET),
    ("bare-cr-in-reason", b"HTTP/1.1 200 O\rK\r\n\r\n", GET),
    ("bare-cr-in-value", OK + b"X-A: a\rb\r\n\r\n", GET),
    ("cr-cr-lf", OK + b"X-A: a\r\r\n\r\n", GET),
    ("bare-cr-as-blank-line", OK + b"X-A: a\r\n\r\r\n", GET),
    ("bare-cr-in-name", OK + b"X\rA: a\r\n\r\n", GET),
    # §4 reason-phrase, §5.5 field-value (RFC 9110): no CTL but HTAB (NUL, 0x01-0x1f, DEL).
    ("nul-in-reason", b"HTTP/1.1 200 O\x00K\r\n\r\n", GET),
    ("nul-in-value", OK + b"X-A: a\x00b\r\n\r\n", GET),
    ("nul-in-name", OK + b"X-\x00A: a\r\n\r\n", GET),
    ("nul-in-status-line", b"HTTP/1.1\x00200 OK\r\n\r\n", GET),
    ("soh-in-value", OK + b"X-A: \x01\r\n\r\n", GET),
    ("vt-in-value", OK + b"X-A: a\x0bb\r\n\r\n", GET),
    ("ff-in-value", OK + b"X-A: a\x0cb\r\n\r\n", GET),
    ("esc-in-value", OK + b"X-A: \x1b[31m\r\n\r\n", GET),
    ("del-in-value", OK + b"X-A: a\x7fb\r\n\r\n", GET),
    ("del-in-reason", b"HTTP/1.1 200 OK\x7f\r\n\r\n", GET),
    ("control-in-folded-line", OK + b"X-A: a\r\n \x01b\r\n\r\n", GET),
    # §5.2: obs-fold only continues a field; before the first field there is none.
    ("fold-before-first-field", OK + b" X-A: a\r\n\r\n", GET),
    ("htab-fold-before-first-field", OK + b"\tX-A: a\r\n\r\n", GET),
    # §5.1: field-name = token, then ":".
    ("empty-name", OK + b": v\r\n\r\n", GET),
    ("no-colon", OK + b"NoColon\r\n\r\n", GET),
    ("space-inside-name", OK + b"X A: v\r\n\r\n", GET),
    ("at-in-name", OK + b"X@A: v\r\n\r\n", GET),
    ("slash-in-name", OK + b"X/A: v\r\n\r\n", GET),
    ("quote-in-name", OK + b'X"A: v\r\n\r\n', GET),
    ("obs-text-in-name", OK + b"X\xe9: v\r\n\r\n", GET),
    # Limits (SPEC): max_response_head_bytes, max_response_headers.
    ("head-one-byte-over-limit", exact_size_head(HEAD_LIMIT + 1), GET),
    ("one-field-too-many", many_fields(FIELDS_LIMIT + 1), GET),
    # §6.1: chunked at most once.
    ("chunked-twice-in-a-list", OK + b"Transfer-Encoding: chunked, chunked\r\n\r\n", GET),
    (
        "chunked-twice-on-two-lines",
        OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        GET,
    ),
    ("chunked-twice-around-gzip", OK + b"Transfer-Encoding: chunked, gzip, chunked\r\n\r\n", GET),
    # §6.1: Transfer-Encoding in an HTTP/1.0 message is a framing fault.
    ("chunked-in-http-1.0", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", GET),
    ("gzip-in-http-1.0", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", GET),
    # §6.3 rule 5, RFC 9110 §8.6: Content-Length = 1*DIGIT, one line, one value (SPEC: <= 18 digits).
    ("length-list", OK + b"Content-Length: 5, 5\r\n\r\n", GET),
    ("length-repeated-line", OK + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n", GET),
    ("length-repeated-different", OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", GET),
    ("length-negative", OK + b"Content-Length: -1\r\n\r\n", GET),
    ("length-signed", OK + b"Content-Length: +5\r\n\r\n", GET),
    ("length-hex", OK + b"Content-Length: 0x5\r\n\r\n", GET),
    ("length-not-digits", OK + b"Content-Length: abc\r\n\r\n", GET),
    ("length-digits-then-letter", OK + b"Content-Length: 5a\r\n\r\n", GET),
    ("length-inner-space", OK + b"Content-Length: 5 5\r\n\r\n", GET),
    ("length-folded-into-two-values", OK + b"Content-Length: 5\r\n 5\r\n\r\n", GET),
    ("length-decimal", OK + b"Content-Length: 5.0\r\n\r\n", GET),
    ("length-superscript-digit", OK + b"Content-Length: \xb2\r\n\r\n", GET),
    ("length-empty", OK + b"Content-Length:\r\n\r\n", GET),
    ("length-19-digits", OK + b"Content-Length: 1000000000000000000\r\n\r\n", GET),
]
INVALID_IDS = [case[0] for case in INVALID]


@pytest.mark.parametrize(("name", "raw", "method"), INVALID, ids=INVALID_IDS)
def test_invalid_head_is_refused(name: str, raw: bytes, method: str) -> None:
    with pytest.raises(BadResponse):
        parse(raw, method)


Verdict = tuple[ResponseHead, int] | None | str
BAD = "bad"


def verdict(buf: bytes, method: str = "GET", config: Config = CONFIG) -> Verdict:
    try:
        return parse_response_head(buf, config, method)
    except BadResponse:
        return BAD


@pytest.mark.parametrize(("name", "raw", "method"), INVALID, ids=INVALID_IDS)
def test_invalid_head_is_never_accepted_at_any_split_point(name: str, raw: bytes, method: str) -> None:
    """Every prefix: None, or refused early; once refused, refused for good."""
    refused_at = None
    for cut in range(len(raw) + 1):
        got = verdict(raw[:cut], method)
        assert got is None or got == BAD, f"prefix of {cut} bytes accepted: {got}"
        if refused_at is not None:
            assert got == BAD, f"refused at {refused_at} bytes, not at {cut}"
        elif got == BAD:
            refused_at = cut
    assert refused_at is not None


EARLY: list[tuple[str, bytes]] = [
    ("http-2-status-line", b"HTTP/2.0 200 OK\r\n"),
    ("icy-status-line", b"ICY 200 OK\r\nicy-name: x\r\n"),
    ("http-0.9-body", b"<html><body>hello</body></html>\n"),
    ("status-out-of-range", b"HTTP/1.1 600 High\r\n"),
    ("bare-cr", OK + b"X-A: a\rb"),
    ("nul", OK + b"X-A: \x00"),
    ("control-char", OK + b"X-A: \x01"),
    ("head-over-limit", OK + b"X-A: " + b"a" * HEAD_LIMIT),
    ("too-many-fields", OK + b"X: 1\r\n" * (FIELDS_LIMIT + 1)),
]


@pytest.mark.parametrize(("name", "partial"), EARLY, ids=[c[0] for c in EARLY])
def test_a_doomed_partial_head_is_refused_before_it_is_complete(name: str, partial: bytes) -> None:
    """SPEC: refused "as early as the bytes seen allow": a dribbling or non-HTTP origin
    must not hold the exchange until the response header deadline."""
    with pytest.raises(BadResponse):
        parse(partial)


# --- bodies: (name, head, request method, body bytes, EOF after them?, expected) --------------

Body = tuple[bytes, bool, bytes]  # decoded body, done, unused
LENGTH5 = OK + b"Content-Length: 5\r\n\r\n"
LENGTH0 = OK + b"Content-Length: 0\r\n\r\n"
CHUNKED = OK + b"Transfer-Encoding: chunked\r\n\r\n"
GZIP_CHUNKED = OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
CLOSE = OK + b"\r\n"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
NEXT = b"HTTP/1.1 200 OK\r\n"

BODIES: list[tuple[str, bytes, str, bytes, bool, Body | str]] = [
    # length: exactly `length` bytes; what follows is unused; EOF before the end is a fault.
    ("length-exact", LENGTH5, GET, b"hello", False, (b"hello", True, b"")),
    ("length-exact-then-eof", LENGTH5, GET, b"hello", True, (b"hello", True, b"")),
    ("length-extra-bytes-unused", LENGTH5, GET, b"hello" + NEXT, False, (b"hello", True, NEXT)),
    ("length-short", LENGTH5, GET, b"hel", False, (b"hel", False, b"")),
    ("length-eof-early", LENGTH5, GET, b"hel", True, BAD),
    ("length-eof-before-any-byte", LENGTH5, GET, b"", True, BAD),
    ("length-zero", LENGTH0, GET, b"", False, (b"", True, b"")),
    ("length-zero-extra-bytes-unused", LENGTH0, GET, b"x", True, (b"", True, b"x")),
    # chunked (RFC 9112 §7.1): hex sizes, extensions and trailers validated then dropped.
    ("chunked", CHUNKED, GET, b"5\r\nhello\r\n0\r\n\r\n", False, (b"hello", True, b"")),
    (
        "chunked-several-hex-any-case-leading-zeros",
        CHUNKED,
        GET,
        b"3\r\nabc\r\nA\r\n0123456789\r\nb\r\nhello world\r\n0005\r\nhello\r\n000\r\n\r\n",
        True,
        (b"abc0123456789hello worldhello", True, b""),
    ),
    (
        "chunked-16-digit-size",
        CHUNKED,
        GET,
        b"0000000000000002\r\nhi\r\n0\r\n\r\n",
        False,
        (b"hi", True, b""),
    ),
    ("chunked-huge-size-partial", CHUNKED, GET, b"ffffffffffffffff\r\nabc", False, (b"abc", False, b"")),
    (
        "chunked-extensions",
        CHUNKED,
        GET,
        b'5;name=value;bare\r\nhello\r\n3;q="quoted \\" ext;=,"\r\nabc\r\n0;last\r\n\r\n',
        False,
        (b"helloabc", True, b""),
    ),
    # §7.1.1: BWS around ";" and "=" is part of the chunk-ext grammar (SPEC: silent on BWS).
    (
        "chunked-extension-bws",
        CHUNKED,
        GET,
        b"5 ; a = b\t;c\r\nhello\r\n0\r\n\r\n",
        False,
        (b"hello", True, b""),
    ),
    (
        "chunked-trailers-dropped",
        CHUNKED,
        GET,
        b"2\r\nhi\r\n0\r\nX-Trailer: t\r\nX-Other: caf\xe9\r\n\r\n",
        False,
        (b"hi", True, b""),
    ),
    (
        "chunked-trailer-within-limit",
        CHUNKED,
        GET,
        b"0\r\nX-T: " + b"a" * 100 + b"\r\n\r\n",
        False,
        (b"", True, b""),
    ),
    (
        "chunked-unused-after-last-chunk",
        CHUNKED,
        GET,
        b"2\r\nhi\r\n0\r\n\r\n" + NEXT,
        True,
        (b"hi", True, NEXT),
    ),
    (
        "chunked-gzip-passed-through",
        GZIP_CHUNKED,
        GET,
        b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
        True,
        (b"\x1f\x8b\x08", True, b""),
    ),
    ("chunked-incomplete", CHUNKED, GET, b"5\r\nhello\r\n", False, (b"hello", False, b"")),
    ("chunked-eof-in-size-line", CHUNKED, GET, b"5", True, BAD),
    ("chunked-eof-in-data", CHUNKED, GET, b"5\r\nhel", True, BAD),
    ("chunked-eof-before-data-crlf", CHUNKED, GET, b"5\r\nhello", True, BAD),
    ("chunked-eof-before-last-chunk", CHUNKED, GET, b"5\r\nhello\r\n", True, BAD),
    ("chunked-eof-in-trailers", CHUNKED, GET, b"0\r\nX-T: 1\r\n", True, BAD),
    ("chunked-eof-before-final-crlf", CHUNKED, GET, b"0\r\n", True, BAD),
    ("chunked-size-not-hex", CHUNKED, GET, b"x\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-size-empty", CHUNKED, GET, b"\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-size-negative", CHUNKED, GET, b"-5\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-size-0x", CHUNKED, GET, b"0x5\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-size-space-before", CHUNKED, GET, b" 5\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-size-17-digits", CHUNKED, GET, b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-bare-lf-after-size", CHUNKED, GET, b"5\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-bare-lf-after-data", CHUNKED, GET, b"5\r\nhello\n0\r\n\r\n", False, BAD),
    ("chunked-bare-lf-after-last-chunk", CHUNKED, GET, b"5\r\nhello\r\n0\n\r\n", False, BAD),
    ("chunked-bare-lf-ends-trailers", CHUNKED, GET, b"5\r\nhello\r\n0\r\n\n", False, BAD),
    ("chunked-bare-cr-in-size-line", CHUNKED, GET, b"5\r;a\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-data-longer-than-size", CHUNKED, GET, b"3\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-data-not-followed-by-crlf", CHUNKED, GET, b"5\r\nhelloXY0\r\n\r\n", False, BAD),
    ("chunked-extension-without-name", CHUNKED, GET, b"5;\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-extension-empty-value", CHUNKED, GET, b"5;a=\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-extension-unterminated-quote", CHUNKED, GET, b'5;a="open\r\nhello\r\n0\r\n\r\n', False, BAD),
    ("chunked-extension-value-with-space", CHUNKED, GET, b"5;a=b c\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-extension-nul", CHUNKED, GET, b"5;a\x00\r\nhello\r\n0\r\n\r\n", False, BAD),
    ("chunked-trailer-not-a-field", CHUNKED, GET, b"0\r\nNo colon\r\n\r\n", False, BAD),
    ("chunked-trailer-nul", CHUNKED, GET, b"0\r\nX-T: a\x00\r\n\r\n", False, BAD),
    ("chunked-trailer-bare-cr", CHUNKED, GET, b"0\r\nX-T: a\rb\r\n\r\n", False, BAD),
    (
        "chunked-trailers-over-head-limit",
        CHUNKED,
        GET,
        b"0\r\n" + b"".join(b"X-T%d: %s\r\n" % (i, b"a" * 60) for i in range(HEAD_LIMIT // 60)) + b"\r\n",
        False,
        BAD,
    ),
    # close: everything until EOF is the body.
    ("close-before-eof", CLOSE, GET, b"some body", False, (b"some body", False, b"")),
    ("close-eof", CLOSE, GET, b"some body\r\n\r\n0\r\n", True, (b"some body\r\n\r\n0\r\n", True, b"")),
    ("close-empty", CLOSE, GET, b"", True, (b"", True, b"")),
    # none: done before any byte; any byte is unused (a dirty connection).
    ("none-204", NO_CONTENT, GET, b"", False, (b"", True, b"")),
    ("none-204-bytes-unused", NO_CONTENT, GET, b"hello", True, (b"", True, b"hello")),
    ("none-head-request", LENGTH5, "HEAD", b"hello", False, (b"", True, b"hello")),
]
BODY_IDS = [case[0] for case in BODIES]


def read_body(head: ResponseHead, pieces: list[bytes], eof: bool) -> Body | str:
    reader = BodyReader(head, CONFIG)
    out = bytearray()
    try:
        for piece in pieces:
            decoded = reader.feed(piece)
            assert isinstance(decoded, bytes)  # one piece per feed, however many chunks
            out += decoded
        if eof:
            reader.end_of_stream()
    except BadResponse:
        return BAD
    return bytes(out), reader.done, reader.unused


@pytest.mark.parametrize(("name", "head", "method", "data", "eof", "expected"), BODIES, ids=BODY_IDS)
def test_body(name: str, head: bytes, method: str, data: bytes, eof: bool, expected: Body | str) -> None:
    assert read_body(head_of(head, method), [data], eof) == expected


@pytest.mark.parametrize(("name", "head", "method", "data", "eof", "expected"), BODIES, ids=BODY_IDS)
def test_body_at_every_split_point(
    name: str, head: bytes, method: str, data: bytes, eof: bool, expected: Body | str
) -> None:
    parsed = head_of(head, method)
    for cut in range(len(data) + 1):
        assert read_body(parsed, [data[:cut], data[cut:]], eof) == expected, f"split at {cut}"
    assert read_body(parsed, [data[i : i + 1] for i in range(len(data))], eof) == expected, "byte by byte"


@pytest.mark.parametrize(("name", "head", "method", "data", "eof", "expected"), BODIES, ids=BODY_IDS)
def test_body_is_done_exactly_at_its_last_byte(
    name: str, head: bytes, method: str, data: bytes, eof: bool, expected: Body | str
) -> None:
    parsed = head_of(head, method)
    if isinstance(expected, str) or not expected[1] or parsed.framing == "close":
        return
    reader = BodyReader(parsed, CONFIG)
    end = len(data) - len(expected[2])
    assert reader.done == (end == 0)
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        assert reader.done == (i + 1 >= end), f"after {i + 1} bytes"


@pytest.mark.parametrize(
    ("head", "method"),
    [(NO_CONTENT, GET), (LENGTH5, "HEAD"), (LENGTH0, GET), (b"HTTP/1.1 103 Hints\r\n\r\n", GET)],
)
def test_a_body_without_bytes_is_done_at_once(head: bytes, method: str) -> None:
    reader = BodyReader(head_of(head, method), CONFIG)
    assert reader.done and reader.unused == b""
    reader.end_of_stream()
    assert reader.done


# --- a whole exchange: heads until a final one, then its body, then EOF ----------------------


State = tuple[list[ResponseHead], bytes, bytes, bool, bytes]  # heads, pending, body, done, unused


class Exchange:
    """The bytes an origin sends for one request, sans IO: interim heads, a final head, its body."""

    def __init__(self, method: str, config: Config = CONFIG) -> None:
        self.method = method
        self.config = config
        self.buf = bytearray()
        self.heads: list[ResponseHead] = []
        self.body = bytearray()
        self.reader: BodyReader | None = None

    def feed(self, data: bytes) -> None:
        if self.reader is None:
            self.buf += data
            while self.reader is None:
                parsed = parse_response_head(self.buf, self.config, self.method)
                if parsed is None:
                    return
                head, used = parsed
                assert 0 < used <= len(self.buf)
                self.heads.append(head)
                del self.buf[:used]
                if not head.interim or head.status == 101:
                    self.reader = BodyReader(head, self.config)
            data = bytes(self.buf)
            self.buf.clear()
        self.body += self.reader.feed(data)

    def end_of_stream(self) -> None:
        if self.reader is not None:
            self.reader.end_of_stream()

    def state(self) -> State:
        done = self.reader is not None and self.reader.done
        unused = self.reader.unused if self.reader is not None else b""
        return self.heads, bytes(self.buf), bytes(self.body), done, unused


Outcome = tuple[State, State] | str


def exchange(method: str, pieces: list[bytes], config: Config = CONFIG) -> Outcome:
    """(state with all bytes in, state after EOF), or where the BadResponse came."""
    ex = Exchange(method, config)
    try:
        for piece in pieces:
            ex.feed(piece)
    except BadResponse:
        return "bad-before-eof"
    heads, pending, body, done, unused = ex.state()
    before = (list(heads), pending, body, done, unused)
    try:
        ex.end_of_stream()
    except BadResponse:
        return "bad-at-eof"
    return before, ex.state()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- properties: any bytes, any split: a result or BadResponse, nothing else ------------------

FRAGMENTS = [
    b"HTTP/1.1 ",
    b"HTTP/1.0 ",
    b"HTTP/2.0 ",
    b"HTTP/1.1 200 OK\r\n",
    b"200",
    b"204",
    b"304",
    b"100",
    b"103",
    b"101",
    b"999",
    b" OK",
    b"\r\n",
    b"\r\n\r\n",
    b"\n\n",
    b"\r",
    b"\n",
    b" ",
    b"\t",
    b":",
    b",",
    b"Content-Length: ",
    b"Content-Length: 5\r\n",
    b"5",
    b"-1",
    b"\xb2",
    b"Transfer-Encoding: ",
    b"Transfer-Encoding: chunked\r\n",
    b"chunked",
    b"gzip",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"X-A: v",
    b"\x00",
    b"\x7f",
    b"\xe9",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
]
PRELUDES = [
    b"",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
]
METHODS = st.sampled_from(["GET", "HEAD", "POST"])
FIELD_NAME = set(TCHARS)


def check_head(head: ResponseHead, used: int, size: int) -> None:
    """What any accepted head promises, whatever the bytes were."""
    assert 0 < used <= size
    assert isinstance(head, ResponseHead)
    assert 100 <= head.status <= 599 and head.version in ("HTTP/1.0", "HTTP/1.1")
    assert head.framing in ("none", "length", "chunked", "close")
    assert (head.length is not None) == (head.framing == "length")
    assert head.length is None or 0 <= head.length < 10**18
    assert head.interim == (head.status < 200)
    assert not head.interim or head.framing == "none"
    assert all(c == "\t" or " " <= c != "\x7f" for c in head.reason)
    for name, value in head.headers:
        assert name and set(name) <= FIELD_NAME
        assert all(c == "\t" or " " <= c != "\x7f" for c in value), (name, value)
        assert value == value.strip(" \t")
    assert all(coding == coding.lower() for coding in head.codings)
    assert head.framing != "chunked" or "chunked" not in head.codings


@SETTINGS
@given(data=grammar(FRAGMENTS), cut=st.integers(min_value=0, max_value=400), method=METHODS)
def test_parser_returns_a_head_or_bad_response(data: bytes, cut: int, method: str) -> None:
    cut = min(cut, len(data))
    whole, prefix = verdict(data, method, SMALL), verdict(data[:cut], method, SMALL)
    if isinstance(whole, tuple):
        check_head(*whole, len(data))
    if isinstance(prefix, tuple):  # the head was already all there: more bytes change nothing
        assert whole == prefix
    if prefix == BAD:  # an early refusal is final
        assert whole == BAD


@SETTINGS
@given(
    prelude=st.sampled_from(PRELUDES),
    data=grammar(FRAGMENTS + CHUNK_FRAGMENTS),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
    method=METHODS,
)
def test_any_bytes_in_any_pieces_give_the_same_outcome(
    prelude: bytes, data: bytes, cuts: list[int], method: str
) -> None:
    raw = prelude + data
    assert exchange(method, split(raw, cuts), SMALL) == exchange(method, [raw], SMALL)


# --- generated valid responses ------------------------------------------------------------------

WORD = st.text(alphabet=VCHARS, min_size=1, max_size=6)
OWS = st.sampled_from(["", " ", "\t", " \t "])
RWS = st.sampled_from([" ", "\t", "   ", "\t "])
EOL = st.sampled_from(["\r\n", "\r\n", "\n"])


@st.composite
def field_lines(draw: st.DrawFn, fields: list[tuple[str, str]]) -> str:
    """Field lines for `fields`, with OWS, bare LFs and obs-folds a parser must undo."""
    lines = ""
    for name, value in fields:
        words = value.split(" ") if value else []
        text = " ".join(words)
        if len(words) > 1 and draw(st.booleans()):
            at = draw(st.integers(min_value=1, max_value=len(words) - 1))
            text = " ".join(words[:at]) + draw(EOL) + draw(RWS) + " ".join(words[at:])
        lines += f"{name}:{draw(OWS)}{text}{draw(OWS)}{draw(EOL)}"
    return lines


@st.composite
def extra_fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = st.text(alphabet=TCHARS, min_size=1, max_size=8).map(lambda t: "X-" + t)
    values = st.lists(WORD, max_size=3).map(" ".join)
    return draw(st.lists(st.tuples(names, values), max_size=4))


@st.composite
def interim_head(draw: st.DrawFn) -> tuple[bytes, int]:
    status = draw(st.sampled_from([100, 102, 103, 199]))
    fields = draw(extra_fields())
    lines = draw(field_lines(fields))
    return f"HTTP/1.1 {status} Interim{draw(EOL)}{lines}{draw(EOL)}".encode("latin-1"), len(fields)


@dataclass
class Generated:
    method: str
    raw: bytes
    body: bytes  # decoded
    fields: int  # the most fields in one of its heads

    @property
    def tight(self) -> Config:
        """Limits the response is exactly at: one more field would be refused."""
        return Config(port=0, max_response_headers=max(1, self.fields))


@st.composite
def responses(draw: st.DrawFn) -> Generated:
    """A valid response (interim heads, a final head, a body in its framing) h11 also reads.

    At most 6 fields a head (SMALL's limit): 4 extra ones, Connection, a framing field."""
    method = draw(METHODS)
    interim = draw(st.lists(interim_head(), max_size=2))
    raw = b"".join(head for head, _ in interim)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    status = draw(st.sampled_from([200, 201, 204, 206, 304, 404, 500]) | st.integers(200, 599))
    reason = draw(st.none() | st.lists(WORD, max_size=3).map(" ".join))
    fields = draw(extra_fields())
    if draw(st.booleans()):
        fields.append(
            ("Connection", draw(st.sampled_from(["close", "keep-alive", "x-a, close", "Keep-Alive"])))
        )
    framings = ["length", "close"] + (["chunked"] if version == "HTTP/1.1" else [])
    framing = draw(st.sampled_from(framings))
    no_content = method == "HEAD" or status in (204, 304)
    payload = body = b""
    if framing == "length":
        body = draw(st.binary(max_size=40))
        fields.append(("Content-Length", str(len(body) if not no_content else draw(st.integers(0, 99)))))
        payload = b"" if no_content else body
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
        payload = b"" if no_content else draw(chunked_bodies())
    elif not no_content:
        payload = body = draw(st.binary(max_size=40))
    if no_content:
        body = b""
    lines = draw(field_lines(draw(st.permutations(fields))))
    status_line = f"{version} {status}" + ("" if reason is None else f" {reason}")
    head = f"{status_line}{draw(EOL)}{lines}{draw(EOL)}".encode("latin-1")
    if framing == "chunked" and not no_content:
        body = decode_chunked(payload)
    most = max([len(fields), *(count for _, count in interim)])
    return Generated(method, raw + head + payload, body, most)


def decode_chunked(payload: bytes) -> bytes:
    out, rest = bytearray(), payload
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]


@SETTINGS
@given(response=responses(), cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=5))
def test_a_valid_response_in_any_pieces_gives_the_same_head_and_body(
    response: Generated, cuts: list[int]
) -> None:
    whole = exchange(response.method, [response.raw], response.tight)
    assert not isinstance(whole, str), whole
    _, (heads, pending, body, done, unused) = whole
    assert not heads[-1].interim
    assert (pending, body, done, unused) == (b"", response.body, True, b"")
    assert exchange(response.method, split(response.raw, cuts), response.tight) == whole


MUTATIONS = st.sampled_from([b"\r", b"\n", b"\x00", b" ", b":", b"0", b"\t", b"a", b",", b""])


@SETTINGS
@given(
    response=responses(),
    at=st.integers(min_value=0, max_value=600),
    replace=st.booleans(),
    byte=MUTATIONS,
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=5),
)
def test_a_damaged_response_in_any_pieces_gives_the_same_outcome(
    response: Generated, at: int, replace: bool, byte: bytes, cuts: list[int]
) -> None:
    raw = response.raw
    at = min(at, len(raw))
    raw = raw[:at] + byte + raw[at + replace :]
    limits = response.tight
    assert exchange(response.method, split(raw, cuts), limits) == exchange(response.method, [raw], limits)


# --- differential: h11 and this reader agree on valid responses ---------------------------------

FRAMED = {"content-length", "transfer-encoding"}


@dataclass
class Seen:
    """What a reader made of a response: the parts h11 and we report the same way."""

    interim: list[tuple[int, list[tuple[str, str]]]]
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes


def fields_of(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in headers if k.lower() not in FRAMED]


def seen_by_us(method: str, raw: bytes) -> Seen:
    ex = Exchange(method, SMALL)
    ex.feed(raw)
    ex.end_of_stream()
    assert ex.reader is not None and ex.reader.done and ex.reader.unused == b""
    *interim, final = ex.heads
    return Seen(
        [(h.status, fields_of(h.headers)) for h in interim],
        final.status,
        final.reason,
        final.version,
        fields_of(final.headers),
        bytes(ex.body),
    )


def seen_by_h11(method: str, raw: bytes) -> Seen:
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a.example")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    interim: list[tuple[int, list[tuple[str, str]]]] = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.InformationalResponse):
            interim.append((event.status_code, fields_of(decode(event.headers.raw_items()))))
            continue
        assert isinstance(event, h11.Response), event
        break
    body = bytearray()
    while not isinstance(data := conn.next_event(), h11.EndOfMessage):
        assert isinstance(data, h11.Data), data
        body += data.data
    return Seen(
        interim,
        event.status_code,
        event.reason.decode("latin-1"),
        "HTTP/" + event.http_version.decode(),
        fields_of(decode(event.headers.raw_items())),
        bytes(body),
    )


def decode(items: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in items]


# h11 refuses these, and SPEC.md (RFC 9112) says they are valid: h11 supports no transfer
# coding but chunked (§6.1 allows others), and refuses whitespace between a field name and
# its colon (§5.1: a proxy MUST remove it from a response).
H11_REFUSES = {
    "gzip-then-chunked",
    "codings-on-two-lines-lower-cased",
    "final-coding-not-chunked-is-close-delimited",
    "chunked-not-last-is-close-delimited",
    "whitespace-before-colon-removed",
}
# h11 keeps the OWS before an obs-fold's line break ("one \t \ttwo"); §5.2's obs-fold is
# OWS CRLF RWS, all of it replaced by SP. 101 switches h11 to another protocol.
H11_DIFFERS = {"obs-fold-ows-on-both-sides-of-the-break", "101-switching-protocols"}


def h11_head(method: str, head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a.example")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.InformationalResponse | h11.Response), event
    return event.status_code, event.reason.decode("latin-1"), fields_of(decode(event.headers.raw_items()))


@pytest.mark.parametrize(("name", "head", "tail", "method", "want"), VALID, ids=VALID_IDS)
def test_valid_table_heads_agree_with_h11(
    name: str, head: bytes, tail: bytes, method: str, want: Want
) -> None:
    if name in H11_REFUSES:
        with pytest.raises(h11.RemoteProtocolError):
            h11_head(method, head)
        return
    if name in H11_DIFFERS:
        return
    ours = head_of(head, method)
    assert (ours.status, ours.reason, fields_of(ours.headers)) == h11_head(method, head)


@SETTINGS
@given(response=responses())
def test_generated_responses_agree_with_h11(response: Generated) -> None:
    ours = seen_by_us(response.method, response.raw)
    assert ours == seen_by_h11(response.method, response.raw)
    assert ours.body == response.body
