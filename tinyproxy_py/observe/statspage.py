"""The proxy's own pages: an HTML status page, Prometheus metrics and JSON, from one snapshot.

Pure rendering: `render(path, snapshot)` takes a callable returning the dict ProxyServer.snapshot() builds
and returns (content type, body), or None for an unknown path. Everything that came
from the network (targets, client addresses) is escaped. Imports: stdlib only.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, TypedDict


class Snapshot(TypedDict):
    """Everything the stats pages show, as plain data: ProxyServer.snapshot() builds it,
    the pages render it, and `--workers` pass it between processes as JSON."""

    version: str
    workers: list[int]  # the pids whose shares are added up
    listening: str
    uptime: float
    counters: dict[str, int]
    gauges: dict[str, int]
    resources: dict[str, int]
    pool: dict[str, dict[str, int]]  # origin -> {"in_use": n, "idle": n}
    tunnels: list[dict[str, Any]]  # open: client, target, age, idle, bytes each way
    closed_tunnels: list[dict[str, Any]]  # the last ones to close, newest first
    process: dict[str, int]  # open_fds, threads


def has_page(path: str) -> bool:
    return _page_name(path) in PAGES


def render(path: str, snapshot: Callable[[], Snapshot]) -> tuple[str, bytes]:
    """The page at `path` (has_page said it exists): `snapshot` is called only now, after
    the caller's checks (it lists /proc and every pool)."""
    content_type, renderer = PAGES[_page_name(path)]
    return content_type, renderer(snapshot()).encode("utf-8")


def _page_name(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/") or "/"


def _prefixed(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: v for k, v in sorted(counters.items()) if k.startswith(prefix)}


# --- Prometheus text exposition format 0.0.4 ---


def render_metrics(snapshot: Snapshot) -> str:
    counters, gauges = snapshot["counters"], snapshot["gauges"]
    out: list[str] = []
    metric = _metric_writer(out)
    metric("uptime_seconds", "gauge", "Seconds since the proxy started.", [({}, snapshot["uptime"])])
    for name, (label, help_text) in FAMILIES.items():  # counters named "{name}.{label value}"
        samples = [({label: k}, v) for k, v in _prefixed(counters, name + ".").items()]
        metric(f"{name}_total", "counter", help_text, samples)
    for name, help_text in COUNTERS.items():
        metric(f"{name}_total", "counter", help_text, [({}, counters.get(name, 0))])
    for name, help_text in GAUGES.items():
        metric(name, "gauge", help_text, [({}, gauges.get(name, 0))])
    metric(
        "pool_connections",
        "gauge",
        "Pooled connections per origin (or parent proxy), in use or idle.",
        [
            ({"origin": origin, "state": state}, count)
            for origin, usage in sorted(snapshot["pool"].items())
            for state, count in sorted(usage.items())
        ],
    )
    process = snapshot["process"]
    metric("open_fds", "gauge", "File descriptors open in the process.", [({}, process["open_fds"])])
    metric(
        "fds_accounted",
        "gauge",
        "File descriptors the proxy's live objects account for (a growing gap is a leak).",
        [({}, snapshot["resources"]["fds_accounted"])],
    )
    metric("threads", "gauge", "Threads in the process.", [({}, process["threads"])])
    return "\n".join(out) + "\n"


FAMILIES = {
    "responses": ("class", "Responses sent, by status class (none: the connection closed without one)."),
    "errors": ("cause", "Failed requests and refusals, by cause."),
    "tunnels_closed": ("reason", "Tunnels (CONNECT and upgrades) closed, by reason."),
    "faults": ("kind", "Faults applied by fault rules (docs/faults.md), by kind."),
    "tls_handshakes": (
        "result",
        "Handshakes on TLS listeners: ok, or why one failed (timeout, closed, reset, refused).",
    ),
}
COUNTERS = {
    "connect_attempts": "TCP connects started to origins, targets and parent proxies (each address tried).",
    "connect_fallbacks": "Connections won by an address of another family than the first (Happy Eyeballs).",
    "handler_threads_started": "Handler threads started (a client connection found no idle one).",
    "lookup_threads_started": "Name lookup threads started (a lookup found no idle one).",
    "handler_thread_start_failures": "Handler threads that could not be started (the connection was closed).",
    "lookup_thread_start_failures": "Lookup threads that could not be started (their lookup got a 503).",
    "clients_evicted": "Idle client connections closed to admit new ones (max_clients, per-address caps).",
    "accept_pauses": "Pauses of accept(): the process was out of file descriptors (or the host of memory).",
}
GAUGES = {
    "clients": "Open client connections.",
    "handler_threads": "Threads serving client connections.",
    "idle_handler_threads": "Handler threads waiting for a client connection (each ends after 5 s idle).",
    "lookups": "Name lookups running, including those given up on at the connect timeout.",
    "idle_lookup_threads": "Lookup threads waiting for a lookup (each ends after 5 s idle).",
    "opening_clients": "Client connections accepted whose first request is not done yet.",
    "requests_in_flight": "Plain HTTP requests being forwarded, and CONNECTs being set up.",
    "tunnels": "Open CONNECT tunnels.",
    "pool_open": "Open pooled connections to origins and parent proxies (in use and idle).",
}


def _metric_writer(out: list[str]) -> Callable[[str, str, str, Iterable[tuple[dict[str, str], float]]], None]:
    def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        full = f"tinyproxy_py_{name}"
        out.append(f"# HELP {full} {help_text}")
        out.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{full}{{{label_text}}} {value}" if labels else f"{full} {value}")

    return metric


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --- JSON ---


def render_json(snapshot: Snapshot) -> str:
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


# --- HTML ---

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:72em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}
td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}
"""


def render_html(snapshot: Snapshot) -> str:
    counters, gauges = snapshot["counters"], snapshot["gauges"]
    sections = [
        _table("Now", ["what", "count"], [[k, v] for k, v in _now(snapshot, gauges)]),
        _table("Responses by status class", ["class", "count"], _prefixed(counters, "responses.").items()),
        _table("Errors by cause", ["cause", "count"], _prefixed(counters, "errors.").items()),
        _table("Faults applied, by kind", ["kind", "count"], _prefixed(counters, "faults.").items()),
        _table(
            "TLS handshakes, by result", ["result", "count"], _prefixed(counters, "tls_handshakes.").items()
        ),
        _table(
            "Connection pool",
            ["origin", "in use", "idle"],
            [
                [o, u.get("in_use", 0), u.get("idle", 0)]
                for o, u in sorted(snapshot["pool"].items())
                if u.get("in_use", 0) or u.get("idle", 0)  # an origin whose connections all closed: gone
            ],
        ),
        _table(
            "Open tunnels",
            ["client", "target", "age", "idle", "bytes up", "bytes down"],
            [
                [t["client"], t["target"], _secs(t["age"]), _secs(t["idle"]), t["bytes_up"], t["bytes_down"]]
                for t in snapshot["tunnels"]
            ],
        ),
        _table(
            "Recently closed tunnels",
            ["closed", "client", "target", "lasted", "bytes up", "bytes down", "why"],
            [
                [
                    _ago(t["closed_at"]),
                    t["client"],
                    t["target"],
                    _secs(t["duration"]),
                    t["bytes_up"],
                    t["bytes_down"],
                    t["reason"],
                ]
                for t in snapshot["closed_tunnels"]
            ],
        ),
    ]
    title = f"tinyproxy-py {html.escape(snapshot['version'])}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="5"><title>{title}</title><style>{_STYLE}</style></head><body>'
        f"<h1>{title}</h1><p class='muted'>listening on {html.escape(snapshot['listening'])}, "
        f"up {_secs(snapshot['uptime'])}. Also: <a href='/metrics'>/metrics</a>, "
        f"<a href='/json'>/json</a>.</p>{''.join(sections)}</body></html>\n"
    )


def _now(snapshot: Snapshot, gauges: dict[str, int]) -> list[tuple[str, int]]:
    process = snapshot["process"]
    return [
        ("client connections", gauges.get("clients", 0)),
        ("requests in flight", gauges.get("requests_in_flight", 0)),
        ("open tunnels", gauges.get("tunnels", 0)),
        ("pooled connections", gauges.get("pool_open", 0)),
        ("threads", process["threads"]),
        ("open file descriptors", process["open_fds"]),
    ]


def _table(title: str, header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    body = (
        "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
        or f"<tr><td class='muted' colspan='{len(header)}'>none</td></tr>"
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"<td class='n'>{value}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _ago(when: float) -> str:
    """A wall-clock time as the page's reader wants it: how long ago (and the time of day)."""
    return f"{_secs(max(0.0, time.time() - when))} ago ({time.strftime('%H:%M:%S', time.localtime(when))})"


def _secs(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


PAGES: dict[str, tuple[str, Callable[[Snapshot], str]]] = {
    "/": ("text/html; charset=utf-8", render_html),
    "/metrics": ("text/plain; version=0.0.4; charset=utf-8", render_metrics),
    "/json": ("application/json", render_json),
}
