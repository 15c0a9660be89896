"""The HTTP/1 grammar both directions share (RFC 9110, RFC 9112): tokens, field values,
the hop-by-hop fields, list-valued fields and persistence, and the limits a head parser
reads. The readers (request.py, response.py, body.py) and the writer build on it.
"""

from __future__ import annotations

import re
from typing import Protocol

from ..errors import BadRequest

Headers = list[tuple[str, str]]

TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = re.compile(TCHAR.encode() + rb"+")
TOKEN_TEXT = re.compile(TCHAR + "+")
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
FIELD_TEXT = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
DIGITS = re.compile(r"[0-9]{1,18}")
OBS_FOLD_TEXT = re.compile(r"\r?\n[ \t]+")
STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# Anything but HTAB, CR and LF below SP, and DEL: never valid in a head (RFC 9110 §5.5),
# and a CR not followed by LF (a response split in two where a client sees one).
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
BARE_CR = re.compile(rb"\r(?!\n)")
MAX_INTERIM = 16  # interim (1xx) answers before the final one; more is a flood
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
DEFAULT_PORTS = {"http": 80, "https": 443}


class HeadLimits(Protocol):
    """What a head parser reads of the settings (a Config has them all)."""

    @property
    def max_line_bytes(self) -> int: ...
    @property
    def max_head_bytes(self) -> int: ...
    @property
    def max_headers(self) -> int: ...
    @property
    def max_response_head_bytes(self) -> int: ...
    @property
    def max_response_headers(self) -> int: ...


def field_index(headers: Headers) -> dict[str, list[str]]:
    """Values by lower-case name, built once per head, so checks look fields up instead
    of scanning (and lower-casing) the whole list each time."""
    index: dict[str, list[str]] = {}
    for name, value in headers:
        index.setdefault(name.lower(), []).append(value)
    return index


def list_values(fields: dict[str, list[str]], name: str) -> list[str]:
    """All comma-separated list members of header `name`, lower-cased and trimmed.

    Only OWS (SP, HTAB) is trimmed: str.strip() would also eat NBSP and NEL, and
    "chunked\xa0" must not pass for "chunked".
    """
    return [
        item.strip(" \t").lower()
        for value in fields.get(name, ())
        for item in value.split(",")
        if item.strip(" \t")
    ]


def persistence(fields: dict[str, list[str]], version: str) -> tuple[frozenset[str], bool]:
    """(Connection tokens, whether the connection persists) for a request or response
    (RFC 9112 §9.3: HTTP/1.1 unless "close", HTTP/1.0 only with "keep-alive")."""
    tokens = frozenset(list_values(fields, "connection"))
    return tokens, "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens


def parse_field(line: bytes) -> tuple[str, str]:
    """One field line (name: value), checked; BadRequest for anything else."""
    if line[:1] in (b" ", b"\t"):
        raise BadRequest("obsolete line folding in header")
    name, colon, value = line.partition(b":")
    if not colon or not TOKEN.fullmatch(name):
        raise BadRequest("header field name is not a token")
    value = value.strip(b" \t")
    if not FIELD_VALUE.fullmatch(value):
        raise BadRequest(f"control character in header {name.decode('ascii')}")
    return name.decode("ascii"), value.decode("latin-1")
