"""Errors a client can see, each knowing its status and the cause the log names.

Words: the *origin* is the server a plain request is for, the *target* is where a CONNECT
goes, a *parent* is an upstream proxy we chain through (`--upstream`). Causes are public
(the access log's `cause=`, Prometheus labels, the X-Tinyproxy-Py-Cause header), so they
are one enumeration, checked against the table in docs/operations.md.

Rule: code raises a ProxyError subclass; only the handler turns it into a reply
(wire/writer.py's `render`). Imports: stdlib only.
"""

from __future__ import annotations

import errno
from enum import Enum
from http import HTTPStatus


class Cause(str, Enum):
    """Why a request failed or a tunnel closed: one short token each."""

    # The client's request or behaviour
    BAD_REQUEST = "bad-request"
    BAD_VERSION = "bad-version"
    BAD_EXPECT = "bad-expect"
    LINE_TOO_LONG = "line-too-long"
    HEAD_TOO_LARGE = "head-too-large"
    HEADER_TIMEOUT = "header-timeout"
    NOT_IMPLEMENTED = "not-implemented"
    NOT_FOUND = "not-found"
    CLIENT_ABORT = "client-abort"
    CLIENT_TIMEOUT = "client-timeout"
    BAD_PROXY_HEADER = "bad-proxy-header"  # closed: no valid PROXY header from a balancer
    # The proxy's policy
    ACL = "acl"
    AUTH = "auth"
    FILTERED = "filtered"
    CONNECT_PORT = "connect-port"
    HTTP_PORT = "http-port"
    DESTINATION = "destination"
    LOOP = "loop"
    # The proxy's own bounds and lifecycle
    OVERLOADED = "overloaded"
    HOST_BUSY = "host-busy"
    SHUTDOWN = "shutdown"
    # An origin or CONNECT target
    DNS = "dns"
    REFUSED = "refused"
    CONNECT_TIMEOUT = "connect-timeout"
    TLS = "tls"
    RESPONSE_TIMEOUT = "response-timeout"
    READ_TIMEOUT = "read-timeout"
    BAD_RESPONSE = "bad-response"
    NO_RESPONSE = "no-response"
    ORIGIN_ABORT = "origin-abort"
    FAULT = "fault"  # a fault rule cut the response (docs/faults.md)
    # A parent proxy
    PARENT_DNS = "parent-dns"
    PARENT_CONNECT = "parent-connect"
    PARENT_TIMEOUT = "parent-timeout"
    PARENT_AUTH = "parent-auth"
    PARENT_STATUS = "parent-status"
    PARENT_PROTOCOL = "parent-protocol"
    PARENT_ERROR = "parent-error"
    PARENT_FORBIDDEN = "parent-forbidden"
    PARENT_UNREACHABLE = "parent-unreachable"
    PARENT_REFUSED = "parent-refused"
    # Why a tunnel (CONNECT, or an upgraded connection) closed; `shutdown` too
    EOF = "eof"
    RESET = "reset"
    IDLE = "idle"
    ERROR = "error"  # a bug: logged with its traceback

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)  # f"{cause}" is the token on every Python version


class ProxyError(Exception):
    """A failure answered with `status`; `cause` is the short token logged and counted."""

    status: HTTPStatus = HTTPStatus.BAD_GATEWAY
    cause: Cause = Cause.BAD_RESPONSE

    def __init__(
        self, message: str = "", *, cause: Cause | None = None, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message or self.status.phrase)
        if cause is not None:
            self.cause = cause
        self.headers = headers  # extra response fields, e.g. a 407's Proxy-Authenticate

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(ProxyError):
    status = HTTPStatus.BAD_REQUEST
    cause = Cause.BAD_REQUEST


class NotFound(ProxyError):
    status = HTTPStatus.NOT_FOUND
    cause = Cause.NOT_FOUND


class RequestTimeout(ProxyError):
    status = HTTPStatus.REQUEST_TIMEOUT
    cause = Cause.HEADER_TIMEOUT


class URITooLong(ProxyError):
    status = HTTPStatus.REQUEST_URI_TOO_LONG
    cause = Cause.LINE_TOO_LONG


class HeadTooLarge(ProxyError):
    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    cause = Cause.HEAD_TOO_LARGE


class NotImplementedByProxy(ProxyError):
    status = HTTPStatus.NOT_IMPLEMENTED
    cause = Cause.NOT_IMPLEMENTED


class VersionNotSupported(ProxyError):
    status = HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
    cause = Cause.BAD_VERSION


class ExpectationFailed(ProxyError):
    status = HTTPStatus.EXPECTATION_FAILED
    cause = Cause.BAD_EXPECT


class Forbidden(ProxyError):
    status = HTTPStatus.FORBIDDEN
    cause = Cause.ACL


class ProxyAuthRequired(ProxyError):
    status = HTTPStatus.PROXY_AUTHENTICATION_REQUIRED
    cause = Cause.AUTH


class LoopDetected(ProxyError):
    status = HTTPStatus.LOOP_DETECTED
    cause = Cause.LOOP


class BadGateway(ProxyError):
    """The origin, target or parent refused, could not be resolved, or broke its protocol."""


class GatewayTimeout(ProxyError):
    """The origin, target or parent did not connect or answer in time."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    cause = Cause.READ_TIMEOUT


class BadResponse(BadGateway):
    """The origin's response broke HTTP/1.1 (RFC 9112): its connection is never reused."""


class ResponseTimeout(GatewayTimeout):
    """The origin's whole response head did not arrive within response_header_timeout."""

    cause = Cause.RESPONSE_TIMEOUT


class Overloaded(ProxyError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    cause = Cause.OVERLOADED


# The process or the host ran out of something: file descriptors, socket buffers, memory.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def exhausted(exc: OSError) -> Overloaded | None:
    """The 503 for an OSError that says the proxy ran out of a resource (the peer is
    not at fault, and it passes); None for any other error."""
    if exc.errno not in EXHAUSTED:
        return None
    return Overloaded(f"the proxy is out of resources ({exc.strerror})")


class Aborted(ProxyError):
    """The exchange cannot go on and nothing more can be said: close the client connection.

    Raised when the client vanished, stalled or broke its body's framing, or when the
    origin broke off after the response head was already sent.
    """

    status = HTTPStatus.BAD_REQUEST
    cause = Cause.CLIENT_ABORT
    # What the client had already been sent, for the access log: the response's status
    # (0: nothing) and how many body bytes.
    status_sent = 0
    bytes_sent = 0
