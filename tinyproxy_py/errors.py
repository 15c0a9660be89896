"""Errors a client can see, each knowing its status and the cause the log names.

Rule: code raises a ProxyError subclass; only the handler turns it into a reply
(`render`). Imports: stdlib only.
"""

from __future__ import annotations

from http import HTTPStatus


class ProxyError(Exception):
    """A failure answered with `status`; `cause` is the short token logged and counted."""

    status: HTTPStatus = HTTPStatus.BAD_GATEWAY
    cause: str = "proxy-error"

    def __init__(
        self, message: str = "", *, cause: str | None = None, headers: tuple[tuple[str, str], ...] = ()
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
    cause = "bad-request"


class NotFound(ProxyError):
    status = HTTPStatus.NOT_FOUND
    cause = "not-found"


class RequestTimeout(ProxyError):
    status = HTTPStatus.REQUEST_TIMEOUT
    cause = "header-timeout"


class URITooLong(ProxyError):
    status = HTTPStatus.REQUEST_URI_TOO_LONG
    cause = "line-too-long"


class HeadTooLarge(ProxyError):
    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    cause = "head-too-large"


class NotImplementedByProxy(ProxyError):
    status = HTTPStatus.NOT_IMPLEMENTED
    cause = "not-implemented"


class VersionNotSupported(ProxyError):
    status = HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
    cause = "bad-version"


class ExpectationFailed(ProxyError):
    status = HTTPStatus.EXPECTATION_FAILED
    cause = "bad-expect"


class Forbidden(ProxyError):
    status = HTTPStatus.FORBIDDEN
    cause = "forbidden"


class ProxyAuthRequired(ProxyError):
    status = HTTPStatus.PROXY_AUTHENTICATION_REQUIRED
    cause = "auth"


class LoopDetected(ProxyError):
    status = HTTPStatus.LOOP_DETECTED
    cause = "loop"


class UpstreamError(ProxyError):
    """The origin refused, could not be resolved, or spoke broken HTTP (502)."""

    status = HTTPStatus.BAD_GATEWAY
    cause = "upstream-error"


class UpstreamTimeout(ProxyError):
    """Connect or read timeout towards the origin (504)."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    cause = "read-timeout"


class BadResponse(UpstreamError):
    """The origin's response broke HTTP/1.1 (RFC 9112): its connection is never reused."""

    cause = "bad-response"


class ResponseTimeout(UpstreamTimeout):
    """The origin's whole response head did not arrive within response_header_timeout."""

    cause = "response-timeout"


class Overloaded(ProxyError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    cause = "overloaded"


class Aborted(ProxyError):
    """The exchange cannot go on and nothing more can be said: close the client connection.

    Raised when the client vanished, stalled or broke its body's framing, or when the
    origin broke off after the response head was already sent.
    """

    status = HTTPStatus.BAD_REQUEST
    cause = "client-abort"


def render(error: ProxyError, *, close: bool = True) -> bytes:
    """A complete HTTP/1.1 response for `error`: short plain text that names the cause."""
    body = f"{error.status.value} {error.status.phrase}: {error.message}\n".encode()
    head = (
        f"HTTP/1.1 {error.status.value} {error.status.phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Tinyproxy-Py-Cause: {error.cause}\r\n"
    )
    head += "".join(f"{name}: {value}\r\n" for name, value in error.headers)
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body
