"""A corpus of malformed and hostile requests: (name, raw bytes, expected status or CLOSE).

`ORIGIN` in a request stands for the upstream's "127.0.0.1:port"; `for_upstream` puts it
in. Each request is sent whole, then the client shuts down writing, so a request that
is merely incomplete ends in EOF: CLOSE means the proxy closes without answering. The
sizes assume a proxy built with LIMITS. Families name the rule they enforce.

HEAD_CASES fail in the request head: the upstream must never even be dialled.
BODY_CASES fail in the body's framing, after the head was forwarded: the upstream may
see a head and part of a body, but never a request that looks complete.
"""

from __future__ import annotations

from typing import Literal

CLOSE: Literal["close"] = "close"
Expected = int | Literal["close"]
Case = tuple[str, bytes, Expected]

LIMITS = {"max_line_bytes": 1024, "max_head_bytes": 8192, "max_headers": 32}

ORIGIN = b"ORIGIN"
GET = b"GET http://ORIGIN/ HTTP/1.1\r\n"
HOST = b"Host: x\r\n"


def for_upstream(raw: bytes, port: int) -> bytes:
    return raw.replace(ORIGIN, b"127.0.0.1:%d" % port)


def get_with(*fields: bytes) -> bytes:
    """A GET to the upstream with Host and the given raw field lines (each ending in CRLF)."""
    return GET + HOST + b"".join(fields) + b"\r\n"


def post_with(*fields: bytes) -> bytes:
    return b"POST http://ORIGIN/echo HTTP/1.1\r\n" + HOST + b"".join(fields) + b"\r\n"


CHUNKED = post_with(b"Transfer-Encoding: chunked\r\n")
GOOD_CHUNK = b"5\r\nhello\r\n"

# RFC 9112 §2.2: lines end in CRLF; a lone LF or a bare CR anywhere in the head is refused.
LINE_ENDINGS: list[Case] = [
    ("lone-lf-everywhere", b"GET http://ORIGIN/ HTTP/1.1\nHost: x\n\n", 400),
    ("lone-lf-after-request-line", b"GET http://ORIGIN/ HTTP/1.1\nHost: x\r\n\r\n", 400),
    ("lone-lf-ends-head", GET + HOST + b"\n", 400),
    ("bare-cr-line-endings", b"GET http://ORIGIN/ HTTP/1.1\rHost: x\r\r", 400),
    ("bare-cr-in-value", get_with(b"X-A: a\rb\r\n"), 400),
    ("cr-cr-lf", get_with(b"X-A: a\r\r\n"), 400),
]

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, single spaces,
# method a token; the target has no whitespace, controls, non-ASCII or fragment.
REQUEST_LINE: list[Case] = [
    ("tab-between-method-and-target", b"GET\thttp://ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("two-spaces-after-method", b"GET  http://ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("space-after-version", b"GET http://ORIGIN/ HTTP/1.1 \r\n" + HOST + b"\r\n", 400),
    ("space-before-method", b" GET http://ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("space-in-target", b"GET http://ORIGIN/a b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("unicode-in-target", "GET http://ORIGIN/caf\u00e9 HTTP/1.1\r\n".encode() + HOST + b"\r\n", 400),
    ("nul-in-target", b"GET http://ORIGIN/a\x00b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("del-in-target", b"GET http://ORIGIN/a\x7fb HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("fragment-in-target", b"GET http://ORIGIN/a#frag HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method-not-a-token", b"GE(T http://ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method-with-nul", b"GE\x00T http://ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("http-0.9-request", b"GET http://ORIGIN/\r\n\r\n", 400),
    ("lowercase-http-name", b"GET http://ORIGIN/ http/1.1\r\n" + HOST + b"\r\n", 400),
    ("version-two-digit-minor", b"GET http://ORIGIN/ HTTP/1.10\r\n" + HOST + b"\r\n", 400),
]

# RFC 9110 §2.5 / RFC 9112 §2.3: HTTP/1.0 and 1.1 only; another major or minor is 505.
VERSIONS: list[Case] = [
    ("http-2.0", b"GET http://ORIGIN/ HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    ("http-1.2", b"GET http://ORIGIN/ HTTP/1.2\r\n" + HOST + b"\r\n", 505),
    ("http-0.9-versioned", b"GET http://ORIGIN/ HTTP/0.9\r\n" + HOST + b"\r\n", 505),
]

# RFC 9112 §3.2: absolute-form to forward, authority-form only with CONNECT, origin-form
# only for the proxy's own endpoints; no userinfo (RFC 9110 §4.2.4), a valid host and port.
TARGET_FORMS: list[Case] = [
    # (A GET in origin-form may be one of the proxy's own pages; a body never is.)
    (
        "origin-form-post-to-a-proxy",
        b"POST /hostile HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello",
        400,
    ),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("authority-form-without-connect", b"GET ORIGIN HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("connect-with-absolute-form", b"CONNECT http://ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("connect-without-port", b"CONNECT 127.0.0.1 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (
        "connect-with-a-body",
        b"CONNECT ORIGIN HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello",
        400,
    ),
    ("userinfo-in-target", b"GET http://user:pw@ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("empty-host", b"GET http:///x HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("port-out-of-range", b"GET http://127.0.0.1:99999/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("bad-ipv6-literal", b"GET http://[1:2:3]:80/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("single-slash-scheme", b"GET http:/ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("unsupported-scheme", b"GET ftp://ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 501),
]

# RFC 9112 §5: field-name is a token, no whitespace before the colon, no obs-fold;
# field values hold no NUL or other controls (RFC 9110 §5.5).
FIELDS: list[Case] = [
    ("obs-fold-space", get_with(b"X-A: one\r\n", b" two\r\n"), 400),
    ("obs-fold-tab", get_with(b"X-A: one\r\n", b"\ttwo\r\n"), 400),
    ("space-before-first-field", GET + b" Host: x\r\n\r\n", 400),
    ("space-before-colon", GET + b"Host : x\r\n\r\n", 400),
    ("tab-before-colon", get_with(b"X-A\t: 1\r\n"), 400),
    ("empty-field-name", get_with(b": 1\r\n"), 400),
    ("field-without-colon", get_with(b"X-A 1\r\n"), 400),
    ("field-name-not-a-token", get_with(b"X(A): 1\r\n"), 400),
    ("non-ascii-field-name", get_with(b"X-\xe9: 1\r\n"), 400),
    ("nul-in-value", get_with(b"X-A: a\x00b\r\n"), 400),
    ("vertical-tab-in-value", get_with(b"X-A: a\x0bb\r\n"), 400),
    ("escape-in-value", get_with(b"X-A: \x1b[31mred\r\n"), 400),
    ("del-in-value", get_with(b"X-A: a\x7f\r\n"), 400),
]

# RFC 9112 §3.2: one Host in HTTP/1.1, with a valid value.
HOST_FIELD: list[Case] = [
    ("no-host-in-http-1.1", GET + b"\r\n", 400),
    ("two-hosts", get_with(b"Host: y\r\n"), 400),
    ("invalid-host-value", GET + b"Host: x/y\r\n\r\n", 400),
]

# RFC 9112 §6.1-6.3: one unambiguous framing. CL with TE, differing or malformed lengths
# are 400 and never forwarded; a final coding other than chunked is 501.
FRAMING: list[Case] = [
    ("cl-and-te", post_with(b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400),
    ("te-and-cl", post_with(b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n") + b"0\r\n\r\n", 400),
    ("te-and-cl-zero", post_with(b"Transfer-Encoding: chunked\r\n", b"Content-Length: 0\r\n"), 400),
    ("two-differing-lengths", post_with(b"Content-Length: 5\r\n", b"Content-Length: 6\r\n") + b"hello!", 400),
    ("length-list-differing", post_with(b"Content-Length: 5, 6\r\n") + b"hello!", 400),
    ("negative-length", post_with(b"Content-Length: -1\r\n"), 400),
    ("hex-length", post_with(b"Content-Length: 0x5\r\n") + b"hello", 400),
    ("plus-signed-length", post_with(b"Content-Length: +5\r\n") + b"hello", 400),
    ("empty-length", post_with(b"Content-Length: \r\n"), 400),
    ("length-with-nbsp", post_with(b"Content-Length: 5\xa0\r\n") + b"hello", 400),
    ("length-of-1000-digits", post_with(b"Content-Length: " + b"9" * 1000 + b"\r\n"), 400),
    ("length-over-2-to-64", post_with(b"Content-Length: 18446744073709551616\r\n"), 400),
    ("te-chunked-identity", post_with(b"Transfer-Encoding: chunked, identity\r\n") + b"0\r\n\r\n", 501),
    (
        "te-split-chunked-then-identity",
        post_with(b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: identity\r\n"),
        501,
    ),
    ("te-gzip-chunked", post_with(b"Transfer-Encoding: gzip, chunked\r\n") + b"0\r\n\r\n", 501),
    ("te-identity", post_with(b"Transfer-Encoding: identity\r\n"), 501),
    ("te-chunked-with-nbsp", post_with(b"Transfer-Encoding: chunked\xa0\r\n") + b"0\r\n\r\n", 501),
    (
        "te-in-http-1.0",
        b"POST http://ORIGIN/echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9110 §10.1.1: an expectation other than 100-continue.
    ("unknown-expectation", post_with(b"Content-Length: 0\r\n", b"Expect: 200-ok\r\n"), 417),
]

# Limits (docs/architecture.md): request line → 414; head size or field count → 431.
LIMIT_CASES: list[Case] = [
    ("target-over-line-limit", b"GET http://ORIGIN/" + b"a" * 1100 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414),
    ("method-over-line-limit", b"G" * 2000 + b" http://ORIGIN/ HTTP/1.1\r\n" + HOST + b"\r\n", 414),
    ("16k-line-without-crlf", b"GET http://ORIGIN/" + b"a" * 16_000, 414),
    ("one-field-over-head-limit", get_with(b"X-A: " + b"a" * 9000 + b"\r\n"), 431),
    ("too-many-fields", get_with(*(b"X-%d: 1\r\n" % i for i in range(33))), 431),
    (
        "head-of-many-fields-over-limit",
        get_with(*(b"X-%d: %s\r\n" % (i, b"a" * 400) for i in range(25))),
        431,
    ),
    ("5000-blank-lines-before-request", b"\r\n" * 5000 + get_with(), 431),
]

# The client stops mid-request: nothing to answer, the connection just closes.
EOF_CASES: list[Case] = [
    ("no-bytes", b"", CLOSE),
    ("head-cut-short", GET + HOST, CLOSE),
    ("blank-lines-only", b"\r\n\r\n", CLOSE),
]

HEAD_CASES: list[Case] = [
    *LINE_ENDINGS,
    *REQUEST_LINE,
    *VERSIONS,
    *TARGET_FORMS,
    *FIELDS,
    *HOST_FIELD,
    *FRAMING,
    *LIMIT_CASES,
    *EOF_CASES,
]

# RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF, the size in hex
# (bounded here to 16 digits), extensions per §7.1.1, trailer fields per §7.1.2 (bounded).
# A body that ends early fails the request (RFC 9112 §8) and closes both connections.
BODY_CASES: list[Case] = [
    ("chunk-size-not-hex", CHUNKED + GOOD_CHUNK + b"zz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-20-hex-digits", CHUNKED + GOOD_CHUNK + b"0" * 19 + b"5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-0x-prefix", CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-leading-space", CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", CHUNKED + b"\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-lone-lf", CHUNKED + GOOD_CHUNK + b"5\nhello\r\n0\r\n\r\n", 400),
    ("chunk-data-longer-than-size", CHUNKED + b"3\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-data-lone-lf-end", CHUNKED + b"5\r\nhello\n0\r\n\r\n", 400),
    ("chunk-extension-without-name", CHUNKED + b"5;=x\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-extension-unterminated-quote", CHUNKED + b'5;a="x\r\nhello\r\n0\r\n\r\n', 400),
    ("chunk-extension-control-char", CHUNKED + b"5;a=\x01\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-line-over-limit", CHUNKED + b"5" + b";a=b" * 300 + b"\r\nhello\r\n0\r\n\r\n", 400),
    ("trailer-obs-fold", CHUNKED + GOOD_CHUNK + b"0\r\nX-T: 1\r\n folded\r\n\r\n", 400),
    ("trailer-field-not-a-token", CHUNKED + GOOD_CHUNK + b"0\r\nX T: 1\r\n\r\n", 400),
    (
        "trailer-over-limit",
        CHUNKED + GOOD_CHUNK + b"0\r\n" + b"X-T: %s\r\n" % (b"t" * 1000) * 10 + b"\r\n",
        431,
    ),
    (
        "expect-100-then-bad-chunk",
        post_with(b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n") + b"zz\r\n\r\n",
        400,
    ),
    ("length-body-ends-early", post_with(b"Content-Length: 10\r\n") + b"hello", CLOSE),
    ("chunked-ends-mid-chunk", CHUNKED + b"5\r\nhel", CLOSE),
    ("chunked-ends-without-last-chunk", CHUNKED + GOOD_CHUNK, CLOSE),
    ("chunked-ends-in-trailers", CHUNKED + GOOD_CHUNK + b"0\r\nX-T: 1\r\n", CLOSE),
]

ALL_CASES: list[Case] = [*HEAD_CASES, *BODY_CASES]
