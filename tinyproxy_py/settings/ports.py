"""The spelling of port lists: http_ports' N and N-M ranges, connect_ports' words."""

from __future__ import annotations

import re

_PORT_RANGE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?")
# connect_ports' default, 'auto': every port while only local clients may connect, else these.
AUTO_CONNECT_PORTS = (-1,)
PUBLIC_CONNECT_PORTS = (443, 563)


def port_ranges(texts: tuple[str, ...]) -> tuple[tuple[int, int], ...] | None:
    """`http_ports` as (first, last) pairs; None for 'any'. The texts are checked."""
    if any(text.strip().lower() == "any" for text in texts):
        return None
    ranges = [port_range(text) for text in texts]
    assert None not in ranges, texts
    return tuple(r for r in ranges if r is not None)


def port_range(text: str) -> tuple[int, int] | None:
    """'80' or '8000-8999' as (first, last); None if it is neither."""
    match = _PORT_RANGE.fullmatch(text.strip())
    if match is None:
        return None
    first = int(match[1])
    last = int(match[2] or first)
    return (first, last) if 1 <= first <= last <= 65535 else None


def port_range_problem(text: str) -> str:
    if text.strip().lower() == "any" or port_range(text) is not None:
        return ""
    return f"must be ports or ranges of ports (80, 8000-8999) or 'any'; got {text!r}"


def connect_ports(values: list[str]) -> tuple[int, ...]:
    """The command line's and environment's spelling: ports (also 443,8443), 'any' (or
    0), 'none' or 'auto'."""
    words = [word.strip().lower() for value in values for word in value.split(",") if word.strip()]
    for word, meaning in (("none", ()), ("auto", AUTO_CONNECT_PORTS)):
        if word in words:
            if len(words) > 1:
                raise ValueError(f"'{word}' stands alone")
            return meaning
    if bad := [word for word in words if word != "any" and not word.isdigit()]:
        raise ValueError(f"takes port numbers, 'any', 'none' or 'auto'; got {bad[0]!r}")
    return tuple(0 if word == "any" else int(word) for word in words)
