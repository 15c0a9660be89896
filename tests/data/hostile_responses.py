"""A corpus of malformed and hostile ORIGIN responses, for tests/wire/test_hostile_origin.py.

Each case is what one origin connection does after it has read the proxy's request head:
a script of byte pieces (each sent with one sendall) and pauses, then either the origin
closes, or it keeps the connection open and answers any further request on it cleanly.
`expect` is what the proxy's client must see; `reuse` whether the proxy may send its next
request to this origin over the same connection. The rules are issue 12's (SPEC.md):
RFC 9112 parsing and framing of responses, strict, 502 `bad-response` for a malformed head.

The word "evil" appears only in bytes that must never reach a client: in responses
injected after a complete one, in fields of a head that must be refused, and so on.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pause:
    """The origin waits this long (watching for the proxy closing the connection)."""

    seconds: float


Piece = bytes | Pause


@dataclass(frozen=True)
class Expect:
    """What the client of the proxy sees. status None: ABORT, the connection is closed
    without a complete response (a head and part of a body may have arrived)."""

    status: int | None
    body: bytes | None = None  # the exact body, with the proxy's own framing removed; None: not checked
    cause: str | None = None  # X-Tinyproxy-Py-Cause of the proxy's own answer; None: not checked
    interim: tuple[int, ...] | None = ()  # interim statuses relayed before the final one; None: not checked
    fields: tuple[
        tuple[str, str | None], ...
    ] = ()  # a field of the final head: its one value, or None: absent
    codings: tuple[str, ...] | None = None  # the final head's Transfer-Encoding list, lower-case
    raw: tuple[bytes, ...] = ()  # byte strings the client must receive somewhere
    absent_raw: tuple[bytes, ...] = ()  # byte strings the client must never receive
    within: tuple[float, float] | None = None  # seconds from sending the request to the outcome
    interim_gap: float = 0.0  # the final head arrives at least this long after the first interim one


@dataclass(frozen=True)
class Case:
    name: str
    script: tuple[Piece, ...]
    expect: Expect
    method: str = "GET"
    version: str = "HTTP/1.1"  # the client's request version
    body_size: int = 0  # a request body of this many bytes (Content-Length), sent by the client
    keep_open: bool = True  # after the script: keep the connection (answering cleanly), or close it
    reuse: bool | None = False  # True: the next request must reuse it; False: must not; None: either
    proxy: tuple[tuple[str, object], ...] = ()  # proxy settings for this case (over the test's)

    def __post_init__(self) -> None:
        assert self.keep_open or self.reuse is not True, f"{self.name}: a closed connection is not reused"


ABORT = Expect(None)
BAD = Expect(502, cause="bad-response")
HEADER_DEADLINE = (("response_header_timeout", 1.5),)

INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"  # a second response, smuggled in
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
GOOD_CHUNKS = b"5\r\nhello\r\n0\r\n\r\n"
GZIPPED = gzip.compress(b"hello", mtime=0)
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
SETTLE = Pause(0.3)  # lets the proxy relay the head and the first bytes before the break


def head(*lines: bytes, status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return status + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def sized(*lines: bytes, body: bytes = b"hello", status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    """A complete response: the given field lines, a Content-Length and the body."""
    return head(*lines, b"Content-Length: %d" % len(body), status=status) + body


OK5 = sized()


def relayed(body: bytes = b"hello", **details: Any) -> Expect:
    return Expect(200, body=body, **details)


def bad_status_line(status_line: bytes) -> bytes:
    return sized(status=status_line)


# Sanity: a well-formed response in each framing goes through, and its connection is reused
# when the origin allows it.
BASELINE: list[Case] = [
    Case("valid-length", (OK5,), relayed(), reuse=True),
    Case(
        "valid-chunked",
        (CHUNKED_HEAD + GOOD_CHUNKS,),
        relayed(fields=(("Content-Length", None),)),
        reuse=True,
    ),
    Case("valid-close-delimited", (head() + b"hello",), relayed(), keep_open=False),
    Case("valid-length-http10-client", (OK5,), relayed(), version="HTTP/1.0", reuse=True),
    Case(
        "valid-chunked-http10-client",
        (CHUNKED_HEAD + GOOD_CHUNKS,),
        relayed(fields=(("Transfer-Encoding", None),)),
        version="HTTP/1.0",
        reuse=True,
    ),
    Case("http10-response-without-keep-alive", (sized(status=b"HTTP/1.0 200 OK"),), relayed()),
    Case(
        "http10-response-with-keep-alive",
        (sized(b"Connection: keep-alive", status=b"HTTP/1.0 200 OK"),),
        relayed(),
        reuse=True,
    ),
    Case("connection-close-with-length", (sized(b"Connection: close"),), relayed()),
    Case(
        "head-response-without-body",
        (head(b"Content-Length: 5"),),
        Expect(200, body=b""),
        method="HEAD",
        reuse=False,  # nothing after a bodiless head proves the connection quiet
    ),
    Case(
        "304-with-content-length-without-body",
        (head(b"Content-Length: 5", status=b"HTTP/1.1 304 Not Modified"),),
        Expect(304, body=b""),
        reuse=False,
    ),
]

# RFC 9112 §6.3: one Content-Length line, one value of digits (at most 18 here).
CONTENT_LENGTH: list[Case] = [
    Case("cl-list-5-5-then-injected-response", (head(b"Content-Length: 5, 5") + b"hello" + INJECTED,), BAD),
    Case("cl-duplicate-equal-lines", (head(b"Content-Length: 5", b"Content-Length: 5") + b"hello",), BAD),
    Case("cl-conflicting-lines", (head(b"Content-Length: 5", b"Content-Length: 6") + b"hello!",), BAD),
    Case("cl-negative", (head(b"Content-Length: -5") + b"hello",), BAD),
    Case("cl-19-digits", (head(b"Content-Length: " + b"1" * 19) + b"hello",), BAD),
    Case("cl-non-digit", (head(b"Content-Length: 5x") + b"hello",), BAD),
    Case("cl-plus-sign", (head(b"Content-Length: +5") + b"hello",), BAD),
    Case("cl-empty", (head(b"Content-Length: ") + b"hello",), BAD),
    Case("cl-surrounded-by-ows", (head(b"Content-Length: \t 5 \t") + b"hello",), relayed(), reuse=True),
    # 18 digits is a length: the body then breaks off after 5 bytes.
    Case(
        "cl-18-digits-then-close",
        (head(b"Content-Length: " + b"9" * 18) + b"hello", SETTLE),
        ABORT,
        keep_open=False,
    ),
]

# RFC 9112 §6.1, §6.3: Transfer-Encoding overrides Content-Length; chunked must be final
# (else the body is read to close) and appear once; none in an HTTP/1.0 response.
TRANSFER_ENCODING: list[Case] = [
    Case(
        "te-gzip-chunked-with-cl",
        (
            head(b"Content-Length: 100", b"Transfer-Encoding: gzip, chunked")
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(GZIPPED), GZIPPED),
        ),
        relayed(GZIPPED, codings=("gzip", "chunked"), fields=(("Content-Length", None),)),
        reuse=None,
    ),
    Case(
        "te-gzip-chunked-http10-client",
        (head(b"Transfer-Encoding: gzip, chunked") + b"%x\r\n%s\r\n0\r\n\r\n" % (len(GZIPPED), GZIPPED),),
        Expect(502),
        version="HTTP/1.0",
        reuse=None,
    ),
    Case(
        "te-chunked-not-last-reads-to-close",
        (head(b"Transfer-Encoding: chunked, gzip") + GOOD_CHUNKS,),
        relayed(GOOD_CHUNKS),  # the bytes as they came: chunked is not the framing here
        keep_open=False,
    ),
    Case("te-chunked-twice-in-one-line", (head(b"Transfer-Encoding: chunked, chunked") + GOOD_CHUNKS,), BAD),
    Case(
        "te-chunked-twice-in-two-lines",
        (head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked") + GOOD_CHUNKS,),
        BAD,
    ),
    Case(
        "te-in-http10-response",
        (head(b"Transfer-Encoding: chunked", status=b"HTTP/1.0 200 OK") + GOOD_CHUNKS,),
        BAD,
    ),
    Case("te-chunked-any-case", (head(b"Transfer-Encoding: Chunked") + GOOD_CHUNKS,), relayed(), reuse=True),
]

# RFC 9112 §7.1: the chunk framing. A break after the head was relayed can only close the
# client connection (no last chunk): SETTLE makes sure the head went out first.
CHUNKS: list[Case] = [
    Case(
        "chunk-size-16-hex-digits",
        (CHUNKED_HEAD + b"0000000000000005\r\nhello\r\n0\r\n\r\n",),
        relayed(),
        reuse=True,
    ),
    Case(
        "chunk-extensions-and-trailers-dropped",
        (CHUNKED_HEAD + b'5;name=value;q="a b"\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n',),
        relayed(absent_raw=(b"name=value", b"X-Trailer")),
        reuse=True,
    ),
    Case(
        "chunk-size-upper-case-hex",
        (CHUNKED_HEAD + b"A\r\nhellohello\r\n0\r\n\r\n",),
        relayed(b"hellohello"),
        reuse=True,
    ),
    Case(
        "chunk-size-16-f-digits-then-close",
        (CHUNKED_HEAD + b"ffffffffffffffff\r\nhello", SETTLE),
        ABORT,
        keep_open=False,
    ),
    Case(
        "chunk-size-17-hex-digits",
        (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE, b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
        ABORT,
    ),
    Case("chunk-size-junk", (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE, b"5zz\r\nhello\r\n0\r\n\r\n"), ABORT),
    Case("chunk-size-bare-lf", (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE, b"5\nhello\r\n0\r\n\r\n"), ABORT),
    Case(
        "chunk-data-longer-than-size",
        (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE, b"3\r\nhello\r\n0\r\n\r\n"),
        ABORT,
    ),
    Case(
        "chunk-data-ends-in-bare-lf",
        (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE, b"5\r\nhello\n0\r\n\r\n"),
        ABORT,
    ),
    Case(
        "chunk-extension-control-char",
        (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE, b"5;a=\x01\r\nhello\r\n0\r\n\r\n"),
        ABORT,
    ),
    Case(
        "trailer-name-not-a-token",
        (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE, b"0\r\nX Evil: 1\r\n\r\n"),
        ABORT,
    ),
    Case(
        "trailers-over-64-kib",
        (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE, b"0\r\nX-Evil: " + b"a" * 70_000 + b"\r\n\r\n"),
        ABORT,
    ),
    Case(
        "chunked-missing-final-crlf-then-close",
        (CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n", SETTLE),
        ABORT,
        keep_open=False,
    ),
]

# Bytes after the end of a response: relayed only up to that end, and the connection is
# dirty (never reused), whether the bytes come with the response or a moment later.
EXTRA_BYTES: list[Case] = [
    Case("body-longer-than-length", (OK5 + INJECTED,), relayed()),
    Case("bytes-after-body-a-moment-later", (OK5, SETTLE, INJECTED), relayed()),
    Case("head-response-followed-by-body", (OK5 + INJECTED,), Expect(200, body=b""), method="HEAD"),
    Case(
        "head-response-body-a-moment-later",
        (head(b"Content-Length: 4"), SETTLE, b"evil"),
        Expect(200, body=b""),
        method="HEAD",
    ),
    Case(
        "204-followed-by-bytes", (head(status=b"HTTP/1.1 204 No Content") + INJECTED,), Expect(204, body=b"")
    ),
    Case(
        "204-with-a-chunked-body",
        (head(b"Transfer-Encoding: chunked", status=b"HTTP/1.1 204 No Content") + b"4\r\nevil\r\n0\r\n\r\n",),
        Expect(204, body=b""),
    ),
    Case(
        "304-followed-by-bytes",
        (head(b'ETag: "x"', status=b"HTTP/1.1 304 Not Modified") + INJECTED,),
        Expect(304, body=b""),
    ),
]

# RFC 9112 §8: a response that ends early in each framing. Before the head is complete the
# proxy can still answer 502; after it, it can only close.
ENDS_EARLY: list[Case] = [
    Case("closes-without-a-byte", (), Expect(502), keep_open=False),
    Case("head-ends-early", (b"HTTP/1.1 200 OK\r\nContent-Len",), Expect(502), keep_open=False),
    Case("length-body-ends-early", (head(b"Content-Length: 10") + b"hello", SETTLE), ABORT, keep_open=False),
    Case("chunked-ends-mid-chunk", (CHUNKED_HEAD + b"a\r\nhello", SETTLE), ABORT, keep_open=False),
    Case(
        "chunked-ends-before-last-chunk", (CHUNKED_HEAD + b"5\r\nhello\r\n", SETTLE), ABORT, keep_open=False
    ),
    Case(
        "body-stalls-past-read-timeout",
        (head(b"Content-Length: 10") + b"hello", Pause(5.0), b"world"),
        Expect(None, within=(1.8, 3.5)),
    ),
]

# RFC 9112 §2.2, §5: lines end in CRLF (a bare LF is accepted, and relayed as CRLF); no bare
# CR, NUL or other control but HTAB in a head; obs-fold becomes one SP; whitespace before a
# colon is removed (§5.1: a proxy MUST, in a response); field names are tokens.
HEAD_BYTES: list[Case] = [
    Case("bare-cr-in-value", (sized(b"X-A: a\rSet-Cookie: evil=1"),), BAD),
    Case("cr-cr-lf-line-end", (sized(b"X-A: a\r"),), BAD),
    Case(
        "bare-cr-after-status-line", (b"HTTP/1.1 200 OK\rX-Evil: 1\r\nContent-Length: 5\r\n\r\nhello",), BAD
    ),
    Case("control-char-in-reason", (bad_status_line(b"HTTP/1.1 200 O\x01K"),), BAD),
    Case("nul-in-value", (sized(b"X-A: a\x00evil"),), BAD),
    Case("escape-in-value", (sized(b"X-A: \x1b[31mevil"),), BAD),
    Case("htab-in-value", (sized(b"X-A: a\tb"),), relayed(fields=(("X-A", "a\tb"),)), reuse=True),
    Case(
        "obs-fold-space",
        (sized(b"X-Fold: one", b" two"),),
        relayed(fields=(("X-Fold", "one two"),), raw=(b"\r\nX-Fold: one two\r\n",)),
        reuse=True,
    ),
    Case(
        "obs-fold-tab",
        (sized(b"X-Fold: one", b"\ttwo"),),
        relayed(fields=(("X-Fold", "one two"),), raw=(b"\r\nX-Fold: one two\r\n",)),
        reuse=True,
    ),
    Case("fold-before-first-field", (sized(b" X-Evil: one"),), BAD),
    Case("empty-field-name", (sized(b": evil"),), BAD),
    Case("field-without-colon", (sized(b"X-Evil 1"),), BAD),
    Case("field-name-not-a-token", (sized(b"X(Evil): 1"),), BAD),
    Case("non-ascii-field-name", (sized(b"X-\xe9vil: 1"),), BAD),
    Case("obs-text-in-value", (sized(b"X-A: caf\xe9"),), relayed(fields=(("X-A", "caf\xe9"),)), reuse=True),
    Case(
        "whitespace-before-colon",
        (sized(b"X-A : 1"),),
        relayed(fields=(("X-A", "1"),), raw=(b"\r\nX-A: 1\r\n",), absent_raw=(b"X-A :",)),
        reuse=True,
    ),
    Case(
        "whitespace-before-colon-in-content-length",
        (head(b"Content-Length : 5") + b"hello",),
        relayed(absent_raw=(b"Content-Length :",)),
        reuse=None,
    ),
    Case(
        "lf-only-line-endings",
        (b"HTTP/1.1 200 OK\nContent-Length: 5\nX-A: 1\n\nhello",),
        relayed(fields=(("X-A", "1"),)),
        reuse=True,
    ),
    Case(
        "mixed-line-endings",
        (b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 5\r\n\nhello",),
        relayed(fields=(("X-A", "1"),)),
        reuse=True,
    ),
]

# RFC 9112 §4: HTTP/1.x SP 3DIGIT [SP reason]; 100..599 here.
STATUS_LINE: list[Case] = [
    Case("status-line-http-2.0", (bad_status_line(b"HTTP/2.0 200 OK"),), BAD),
    Case("http-0.9-body-without-status-line", (b"<html>evil</html>\n",), BAD, keep_open=False),
    Case("tab-after-version", (bad_status_line(b"HTTP/1.1\t200 OK"),), BAD),
    Case("icy-status-line", (bad_status_line(b"ICY 200 OK"),), BAD),
    Case("lower-case-http-name", (bad_status_line(b"http/1.1 200 OK"),), BAD),
    Case("status-600", (bad_status_line(b"HTTP/1.1 600 Evil"),), BAD),
    Case("status-99", (bad_status_line(b"HTTP/1.1 99 Evil"),), BAD),
    Case("status-099", (bad_status_line(b"HTTP/1.1 099 Evil"),), BAD),
    Case("status-non-digit", (bad_status_line(b"HTTP/1.1 2x0 Evil"),), BAD),
    Case("status-without-reason", (bad_status_line(b"HTTP/1.1 200"),), relayed(), reuse=True),
]

# Limits: max_response_head_bytes (65536), max_response_headers (100).
LIMITS: list[Case] = [
    Case("one-field-over-64-kib", (sized(b"X-Evil: " + b"a" * 70_000),), BAD),
    Case("many-lines-over-64-kib", (sized(*(b"X-Evil-%d: %s" % (i, b"a" * 1000) for i in range(80))),), BAD),
    Case("101-fields", (sized(*(b"X-Evil-%d: 1" % i for i in range(100))),), BAD),
    Case("100-fields", (sized(*(b"X-F-%d: 1" % i for i in range(99))),), relayed(), reuse=True),
]

# RFC 9110 §15.2: interim responses go to HTTP/1.1 clients as they come, not to HTTP/1.0
# ones; 100 Continue is the proxy's own business; 16 at most; 101 only to an Upgrade.
INTERIM: list[Case] = [
    Case(
        "early-hints-then-200-http11-client",
        (EARLY_HINTS, Pause(1.0), OK5),
        relayed(interim=(103,), interim_gap=0.7, raw=(b"\r\nLink: </style.css>; rel=preload\r\n",)),
        reuse=True,
    ),
    Case(
        "early-hints-then-200-http10-client",
        (EARLY_HINTS, Pause(0.5), OK5),
        relayed(absent_raw=(b"Link:",)),
        version="HTTP/1.0",
        reuse=True,
    ),
    Case(
        "interim-with-content-length",
        (head(b"Content-Length: 5", status=b"HTTP/1.1 103 Early Hints") + OK5,),
        relayed(interim=(103,)),
        reuse=True,
    ),
    Case(
        "100-continue-from-origin-dropped", (b"HTTP/1.1 100 Continue\r\n\r\n" + OK5,), relayed(), reuse=True
    ),
    Case(
        "16-interim-responses",
        (b"HTTP/1.1 102 Processing\r\n\r\n" * 16 + OK5,),
        relayed(interim=(102,) * 16),
        reuse=True,
    ),
    Case(
        "17-interim-responses",
        (b"HTTP/1.1 102 Processing\r\n\r\n" * 17 + OK5,),
        Expect(502, cause="bad-response", interim=None),
    ),
    Case(
        "unrequested-101",
        (
            head(b"Upgrade: websocket", b"Connection: Upgrade", status=b"HTTP/1.1 101 Switching Protocols")
            + b"\x81\x04evil",
        ),
        BAD,
    ),
]

# The response-header deadline counts from the request; a line now and then does not
# extend it (the test proxy's read_timeout is 2 s, the deadline 1.5 s).
TIMING: list[Case] = [
    Case(
        "fields-after-a-5s-pause",
        (b"HTTP/1.1 200 OK\r\n", Pause(5.0), b"Content-Length: 4\r\n\r\nevil"),
        Expect(504, cause="response-timeout", within=(1.4, 2.5)),
        proxy=HEADER_DEADLINE,
    ),
    Case(
        "head-dribbled-a-line-every-half-second",
        (
            b"HTTP/1.1 200 OK\r\n",
            *(piece for i in range(10) for piece in (Pause(0.5), b"X-Evil-%d: 1\r\n" % i)),
            b"Content-Length: 4\r\n\r\nevil",
        ),
        Expect(504, cause="response-timeout", within=(1.4, 2.5)),
        proxy=HEADER_DEADLINE,
    ),
    Case(
        "head-after-a-second-within-the-deadline",
        (Pause(1.0), OK5),
        relayed(within=(0.9, 1.5)),
        reuse=True,
        proxy=HEADER_DEADLINE,
    ),
]

# An origin may answer before it has read the request body (RFC 9112 §9.5), then close.
EARLY_RESPONSE: list[Case] = [
    Case(
        "413-before-a-1-mib-request-body",
        (sized(b"Connection: close", body=b"too large", status=b"HTTP/1.1 413 Content Too Large"),),
        Expect(413, body=b"too large"),
        method="POST",
        body_size=1024 * 1024,
        keep_open=False,
    ),
]

CASES: list[Case] = [
    *BASELINE,
    *CONTENT_LENGTH,
    *TRANSFER_ENCODING,
    *CHUNKS,
    *EXTRA_BYTES,
    *ENDS_EARLY,
    *HEAD_BYTES,
    *STATUS_LINE,
    *LIMITS,
    *INTERIM,
    *TIMING,
    *EARLY_RESPONSE,
]

assert len({case.name for case in CASES}) == len(CASES), "case names must be unique"
