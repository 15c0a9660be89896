"""One access log line per request and per tunnel, in our format or Common/Combined Log Format.

Lines go to the `tinyproxy_py.access` logger at INFO, so an embedding program routes them
like any other log; the CLI gives that logger a handler of its own that writes the bare
line (CLF lines carry their own timestamp). Imports: stdlib only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

access_log = logging.getLogger("tinyproxy_py.access")


@dataclass
class AccessRecord:
    """What happened to one request or tunnel. `cause` names a failure or why a tunnel closed;
    `parent` is the parent proxy it went through (its URL without password), if any.

    A CONNECT's record is handed to `on_access` when the tunnel is established (status
    200, `ongoing`), then completed in place (bytes, duration, cause) when it closes and
    handed over once more; the access log line is written then.
    """

    client: str
    method: str = "-"
    target: str = "-"
    version: str = "HTTP/1.1"
    status: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    duration: float = 0.0
    cause: str = ""
    parent: str = ""
    ongoing: bool = False  # a tunnel still open: bytes, duration and cause come at its close
    user: str = "-"
    referer: str = "-"
    user_agent: str = "-"


def format_record(record: AccessRecord, style: str = "default", now: float | None = None) -> str:
    status = str(record.status) if record.status else "-"
    when = time.localtime(now)
    if style == "default":
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S%z', when)} {record.client} {record.method} {record.target} "
            f"{status} up={record.bytes_up} down={record.bytes_down} {record.duration:.3f}s"
        )
        line += f" parent={record.parent}" if record.parent else ""
        return f"{line} cause={record.cause}" if record.cause else line
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", when)
    request = _quote(f"{record.method} {record.target} {record.version}")
    line = f"{record.client} - {record.user} [{stamp}] {request} {status} {record.bytes_down or '-'}"
    if style == "combined":
        line += f" {_quote(record.referer)} {_quote(record.user_agent)}"
    return line


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def emit(record: AccessRecord, style: str) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info("%s", format_record(record, style))
