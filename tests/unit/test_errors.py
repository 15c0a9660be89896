"""The error classes answer as the error table in docs/architecture.md says."""

from __future__ import annotations

import pytest

from tinyproxy_py import errors
from tinyproxy_py.observe.accesslog import AccessRecord, format_record
from tinyproxy_py.wire.writer import render


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.BadRequest, 400),
        (errors.Forbidden, 403),
        (errors.RequestTimeout, 408),
        (errors.URITooLong, 414),
        (errors.HeadTooLarge, 431),
        (errors.NotImplementedByProxy, 501),
        (errors.BadGateway, 502),
        (errors.Overloaded, 503),
        (errors.GatewayTimeout, 504),
        (errors.VersionNotSupported, 505),
    ],
)
def test_status_of_each_error(error: type[errors.ProxyError], status: int) -> None:
    assert error().status == status


def test_render_is_a_complete_response_naming_the_cause() -> None:
    raw = render(errors.GatewayTimeout("origin slow", cause=errors.Cause.READ_TIMEOUT))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert b"Connection: close" in head
    assert b"X-Tinyproxy-Py-Cause: read-timeout" in head
    assert body == b"504 Gateway Timeout: origin slow\n"
    assert f"Content-Length: {len(body)}".encode() in head


def test_the_default_access_line_names_the_parent_proxy_and_the_cause() -> None:
    record = AccessRecord(
        "127.0.0.1", "GET", "http://o/", status=502, parent="http://p:3128", cause="parent-auth"
    )
    line = format_record(record, now=0)
    assert line.endswith(" GET http://o/ 502 up=0 down=0 0.000s parent=http://p:3128 cause=parent-auth")
    assert "parent=" not in format_record(AccessRecord("127.0.0.1"), now=0)
    assert "p:3128" not in format_record(record, "common", now=0)  # CLF has no field for it
