"""The one source of truth for every setting: name, type, default, help text.

The CLI builds its options from `fields(Config)`, and the docs list the same metadata,
so neither can drift from the code. The timeouts' defaults follow Go's http.Transport
and http.Server (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..wire.grammar import TOKEN_TEXT
from .faults import rule_problem
from .ports import AUTO_CONNECT_PORTS, connect_ports, port_range_problem

SPELLED = frozenset({"connect_ports"})  # settings whose text is more than a number: see coerce
CHOICES = {
    "proxy_protocol": ("off", "v1", "v2", "any"),
    "filter_mode": ("deny", "allow"),
    "log_level": ("debug", "info", "warning", "error"),
    "access_log_format": ("default", "common", "combined"),
}
# Squid's Safe_ports for the protocols a plain request can speak here: HTTP's, and every
# unprivileged port (where development servers listen).
HTTP_PORTS = ("80", "443", "280", "488", "591", "777", "1025-65535")
_HEADER_LINE = re.compile(TOKEN_TEXT.pattern + r": [\x20-\x7e]*")
# A realm goes inside a quoted-string (RFC 9110 §5.6.4): printable ASCII without " or \.
_REALM = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
# Fields the proxy itself decides: adding one would break framing or connection handling.
_NOT_ADDABLE = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)


def _opt(
    default: Any, help: str, *, unit: str = "", flag: str = "", cli: bool = True, spaced: bool = False
) -> Any:
    """A setting. `flag` names its command-line option when the field name reads badly
    there; `cli=False` keeps it off the command line and environment; `spaced` items
    contain spaces, so a list of them in the environment is separated by commas only."""
    metadata = {"help": help, "unit": unit, "flag": flag, "cli": cli, "spaced": spaced}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """Settings of one proxy instance. Immutable: build a new one to change it."""

    host: tuple[str, ...] = _opt(
        ("127.0.0.1",),
        "Address to listen on, an IPv4 or IPv6 literal (repeatable: one listener each, all on "
        "the same port; e.g. 127.0.0.1 and ::1).",
    )
    port: int = _opt(8888, "TCP port to listen on; 0 picks a free port.")
    tls_cert: str | None = _opt(
        None,
        "Certificate chain (PEM) for a TLS listener, which clients reach as an https:// proxy: "
        "on --tls-port beside the clear --port, or without it on --port itself. Reread on SIGHUP.",
    )
    tls_key: str | None = _opt(None, "Private key (PEM) of --tls-cert; default: inside the --tls-cert file.")
    tls_port: int | None = _opt(
        None, "Port of the TLS listener beside the clear one (needs --tls-cert); 0 picks a free port."
    )
    connect_timeout: float = _opt(
        10.0,
        "Name lookup and TCP connect to an origin, CONNECT target or parent proxy, all its addresses.",
        unit="seconds",
    )
    attempt_delay: float = _opt(
        0.25,
        "Happy Eyeballs (RFC 8305): start connecting to a host's next address this long after "
        "the previous attempt, while it is still pending.",
        unit="seconds",
    )
    resolve: tuple[str, ...] = _opt(
        (),
        "HOST:PORT:ADDRESS[,ADDRESS...]: connect to ADDRESS for HOST:PORT, without asking DNS "
        "(curl's --resolve; repeatable).",
    )
    connect_to: tuple[str, ...] = _opt(
        (),
        "HOST:PORT:HOST2:PORT2: connect to HOST2:PORT2 instead of HOST:PORT (curl's --connect-to; "
        "repeatable).",
    )
    read_timeout: float = _opt(
        60.0, "Wait between an origin's body bytes, and for each send to it.", unit="seconds"
    )
    response_header_timeout: float = _opt(
        60.0,
        "Deadline for an origin's whole response head, from when the request was sent (Go's "
        "ResponseHeaderTimeout); 504 beyond.",
        unit="seconds",
    )
    pool_idle_timeout: float = _opt(
        90.0, "Idle pooled connections older than this are closed.", unit="seconds"
    )
    pool_hosts: int = _opt(100, "Origin hosts whose connection pools are kept (LRU).")
    pool_idle_per_host: int = _opt(10, "Idle pooled connections kept per origin host.")
    max_conns_per_host: int = _opt(
        0, "Connections in use per origin host (0: no cap); waits up to the connect timeout, then 503."
    )
    request_body_min_rate: int = _opt(
        500,
        "A request body must come at least this fast on average, after a first read timeout's grace "
        "(time spent waiting for the origin does not count); 0: no minimum.",
        unit="bytes per second",
    )
    header_timeout: float = _opt(
        10.0, "Deadline for a client's whole request head, from its first byte.", unit="seconds"
    )
    client_idle_timeout: float = _opt(
        30.0, "Keep-alive: how long a client connection may wait between requests.", unit="seconds"
    )
    tunnel_idle_timeout: float = _opt(
        300.0, "A CONNECT tunnel with no byte either way is closed.", unit="seconds"
    )
    tunnel_linger: float = _opt(30.0, "A half-closed tunnel idle this long is closed.", unit="seconds")
    max_clients: int = _opt(256, "Concurrent client connections (threads); 503 beyond.")
    max_clients_per_address: int = _opt(
        0,
        "Concurrent client connections from one address (0: no cap); at the cap its longest-idle "
        "connection is closed to admit a new one, else 503.",
    )
    workers: int = _opt(
        1, "Processes sharing the port (SO_REUSEPORT), each with its own threads, hub and pool; serve only."
    )
    max_tunnels: int = _opt(10_000, "Open CONNECT tunnels; 503 beyond.")
    max_tunnels_per_address: int = _opt(
        0, "Open CONNECT tunnels of one client address (0: no cap); 503 beyond."
    )
    max_line_bytes: int = _opt(8192, "Longest request line; 414 beyond.", unit="bytes")
    max_head_bytes: int = _opt(65_536, "Largest request head; 431 beyond.", unit="bytes")
    max_headers: int = _opt(100, "Most header fields in a request head; 431 beyond.")
    # nginx answers 502 past its 4-8 KiB proxy buffer and h11 stops at 16 KiB; 64 KiB
    # leaves room for cookie-heavy sites while 4 such heads at once stay under 1 MiB.
    max_response_head_bytes: int = _opt(
        65_536, "Largest response head an origin may send; 502 beyond.", unit="bytes"
    )
    max_response_headers: int = _opt(100, "Most header fields in an origin's response head; 502 beyond.")
    drain_delay: float = _opt(
        0.0,
        "On SIGTERM (or from SIGUSR2), keep accepting this long while /readyz answers 503, so "
        "a balancer's health check takes the instance out before its listener closes.",
        unit="seconds",
    )
    shutdown_grace: float = _opt(
        10.0,
        "Once the listener is closed, how long requests in flight and tunnels still moving bytes "
        "may take to finish (tunnels idle for a second are closed at once).",
        unit="seconds",
    )
    allow: tuple[str, ...] = _opt(
        (),
        "Client address or CIDR block that may use the proxy (repeatable). None given: loopback "
        "only, or any address when credentials are configured (they guard it).",
    )
    deny: tuple[str, ...] = _opt(
        (), "Client address or CIDR block refused, checked before allow (repeatable)."
    )
    basic_auth: tuple[str, ...] = _opt((), "USER:PASSWORD for proxy Basic authentication (repeatable).")
    auth_file: str | None = _opt(None, "File of USER:PASSWORD lines for proxy Basic authentication.")
    auth_realm: str = _opt("tinyproxy-py", "Realm named in the 407 challenge.")
    proxy_protocol: str = _opt(
        "off",
        "Expect a PROXY protocol header (HAProxy's, v1, v2 or any) first on every connection: the "
        "client address it carries is used everywhere. Needs --proxy-protocol-from.",
    )
    proxy_protocol_from: tuple[str, ...] = _opt(
        (),
        "Address or CIDR block of a load balancer allowed to send PROXY headers (repeatable); "
        "connections from elsewhere are closed.",
    )
    local_clients: tuple[str, ...] = _opt(
        ("127.0.0.0/8", "::1"),
        "Client address or CIDR block on this machine (repeatable): such clients may reach its "
        "loopback and link-local services, which the destination policy refuses to others.",
        flag="local-client",
    )
    stats_allow: tuple[str, ...] = _opt(
        ("127.0.0.0/8", "::1"),
        "Client address or CIDR block that may read the stats pages (/, /metrics, /json), "
        "which show every client's traffic (repeatable; replaces the default). /healthz and "
        "/readyz answer every allowed client.",
    )
    deny_destinations: tuple[str, ...] = _opt(
        (),
        "Address or CIDR block no client may reach, checked on the resolved address "
        "(repeatable; e.g. 10.0.0.0/8).",
        flag="deny-destination",
    )
    allow_destinations: tuple[str, ...] = _opt(
        (),
        "Address or CIDR block any client may reach although the default refuses it "
        "(loopback, link-local, unspecified, the proxy's own; repeatable).",
        flag="allow-destination",
    )
    connect_ports: tuple[int, ...] = _opt(
        AUTO_CONNECT_PORTS,
        "Port CONNECT may reach (repeatable, or 443,8443). 'auto': any port while only this "
        "machine's clients may connect (no allow rule beyond them, no credentials), 443 and 563 "
        "once others may. 'any' (or 0) allows every port, 'none' refuses CONNECT.",
        flag="connect-port",
    )
    http_ports: tuple[str, ...] = _opt(
        HTTP_PORTS,
        "Port a plain http:// request may reach: N or N-M (repeatable; replaces the default "
        "list, which keeps requests off mail and other line-based services). 'any' allows "
        "every port.",
        flag="http-port",
    )
    filter_hosts: tuple[str, ...] = _opt(
        (),
        "Host filter: example.com, *.example.com (subdomains), re:REGEX or glob:PATTERN (repeatable).",
        flag="filter-host",
    )
    filter_mode: str = _opt("deny", "deny: refuse hosts matching a filter; allow: refuse all others.")
    forwarded_for: bool = _opt(False, "Add the client's address to X-Forwarded-For.")
    upstream: tuple[str, ...] = _opt(
        (),
        "Upstream proxy 'URL [SITE]' (http:// or socks5://; repeatable): for SITE only, or the default.",
        spaced=True,
    )
    no_upstream: tuple[str, ...] = _opt((), "SITE to reach directly, never through an upstream (repeatable).")
    upstream_rules: tuple[str, ...] = _opt(
        (), "tinyproxy-style Upstream / No Upstream lines, in file order.", cli=False
    )
    upstream_from_env: bool = _opt(
        False, "Chain through HTTP_PROXY / HTTPS_PROXY, except NO_PROXY, for plain HTTP and CONNECT alike."
    )
    ca_bundle: str | None = _opt(None, "CA bundle (PEM) for https:// origins; default: certifi's bundle.")
    via_name: str = _opt("tinyproxy-py", "Pseudonym this proxy adds to Via headers; empty: no Via.")
    x_tinyproxy: bool = _opt(
        False, "Add an X-Tinyproxy header with the client's address (as tinyproxy does)."
    )
    add_headers: tuple[str, ...] = _opt(
        (),
        "'Name: value' header added to every forwarded request (repeatable).",
        flag="add-header",
        spaced=True,
    )
    faults: tuple[str, ...] = _opt(
        (),
        "Fault rule 'host=H kind=KIND key=value ...' (repeatable; docs/faults.md), e.g. "
        "'host=api.test kind=latency ms=300'.",
        flag="fault",
        spaced=True,
    )
    stat_host: str = _opt(
        "tinyproxy-py.stats",
        "Requests to this host are answered by the proxy's stats pages (at the default, tinyproxy's "
        "tinyproxy.stats too); empty: off.",
    )
    log_level: str = _opt(
        "info", "debug, info, warning or error; every request and tunnel is logged at info."
    )
    log_file: str | None = _opt(
        None, "Write the log to this file instead of stderr (reopened on SIGHUP/SIGUSR1)."
    )
    access_log_format: str = _opt("default", "Access log lines: default, common or combined.")
    access_log: str | None = _opt(
        None,
        "Write access lines to this file instead of the log's stream (reopened on SIGHUP/SIGUSR1): "
        "it then holds nothing else, as Common/Combined Log Format parsers want.",
    )
    pid_file: str | None = _opt(None, "Write the process id to this file while serving.")
    user: str | None = _opt(
        None,
        "Started as root: run as this user once listening, with the log and pid files open "
        "(as tinyproxy does). Ignored, with a log line, when not started as root.",
    )
    group: str | None = _opt(None, "The group to run as with --user (default: the user's own).")

    def __post_init__(self) -> None:
        if isinstance(self.host, str):  # Config(host="::1"): one address, as before
            object.__setattr__(self, "host", (self.host,))
        for f in dataclasses.fields(self):
            check_setting(f.name, getattr(self, f.name))
        if self.max_head_bytes < self.max_line_bytes:
            raise SettingError("max_head_bytes", "must be at least max_line_bytes (--max-line-bytes)")
        if self.tls_cert is None and (self.tls_port is not None or self.tls_key is not None):
            raise SettingError("tls_port" if self.tls_key is None else "tls_key", "needs --tls-cert")
        if self.tls_port and self.tls_port == self.port:
            raise SettingError("tls_port", "must differ from --port (without it, --port speaks TLS)")
        if self.proxy_protocol != "off" and not self.proxy_protocol_from:
            reason = "needs --proxy-protocol-from: the balancers that may send the header"
            raise SettingError("proxy_protocol", reason)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


class SettingError(ValueError):
    """One setting's value is refused. `name` is the Config field, `reason` says why
    without naming it, so a caller can name it as the user wrote it (a flag, a file's
    FILE:LINE and directive, an environment variable)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} {reason}")
        self.name, self.reason = name, reason


_AT_LEAST_ONE = frozenset(
    {"max_clients", "max_tunnels", "max_line_bytes", "max_headers", "max_response_headers", "workers"}
    | {"pool_hosts", "pool_idle_per_host"}
)


def check_setting(name: str, value: Any) -> None:
    """Refuse a value that would break the proxy (or every request) once it runs.

    Checked where Config is built, and by the config file reader for each line, so a bad
    value stops start-up (or a reload) instead of failing requests. Raises SettingError.
    """
    reason = _why_not(name, FIELD_TYPES[name], value)
    if reason:
        raise SettingError(name, reason)


def _why_not(name: str, kind: str, value: Any) -> str:
    if kind in ("int", "float", "int | None") and value is not None:
        return _number_problem(name, kind, value)
    if name in CHOICES and value not in CHOICES[name]:
        return f"must be one of {', '.join(CHOICES[name])}; got {value!r}"
    if name == "add_headers":
        return next((problem for header in value if (problem := _header_problem(header))), "")
    if name == "faults":
        return next((f"{text!r}: {problem}" for text in value if (problem := rule_problem(text))), "")
    if name == "auth_realm" and not _REALM.fullmatch(value):
        return f"must be printable ASCII without quotes or backslashes, got {value!r}"
    # Via's received-by pseudonym is a token (RFC 9110 §7.6.3)
    if name == "via_name" and value and not TOKEN_TEXT.fullmatch(value):
        return f"must be a token (letters, digits, -._~ and the like), got {value!r}"
    if name == "connect_ports" and value != AUTO_CONNECT_PORTS and not all(0 <= p <= 65535 for p in value):
        return "must be ports (0 allows every port, none at all refuses CONNECT)"
    if name == "http_ports":
        return next((problem for text in value if (problem := port_range_problem(text))), "")
    if name == "host":
        return _listen_problem(value)
    if name in ("resolve", "connect_to"):
        return next((problem for line in value if (problem := _override_problem(name, line))), "")
    if name in (
        "allow",
        "deny",
        "local_clients",
        "stats_allow",
        "deny_destinations",
        "allow_destinations",
        "proxy_protocol_from",
    ):
        bad = [rule for rule in value if not _is_network(rule)]
        return f"{bad[0]!r} is not an address or CIDR block" if bad else ""
    return ""


def _number_problem(name: str, kind: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"must be a non-negative number, got {value!r}"
    if kind == "float" and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if value < 0:
        return f"must be a non-negative number, got {value!r}"
    if kind == "float" and value == 0 and name != "drain_delay":  # 0: no delay; elsewhere, no deadline
        return "must be greater than 0"
    if name in ("port", "tls_port") and value > 65535:
        return f"must be within 0..65535, got {value}"
    if name in _AT_LEAST_ONE and value < 1:
        return "must be at least 1"
    if name == "max_response_head_bytes" and value < 1024:
        return "must be at least 1024"
    return ""


def _header_problem(header: str) -> str:
    if not _HEADER_LINE.fullmatch(header):
        return f"entries must look like 'Name: value', got {header!r}"
    if header.partition(":")[0].lower() in _NOT_ADDABLE:
        return f"cannot set {header.partition(':')[0]}: the proxy decides it"
    return ""


def _listen_problem(hosts: tuple[str, ...]) -> str:
    if not hosts or not all(host and not host.isspace() for host in hosts):
        return "needs an address to listen on"
    twice = [host for index, host in enumerate(hosts) if host in hosts[:index]]
    return f"lists {twice[0]!r} twice" if twice else ""


_OVERRIDE = {
    "resolve": re.compile(r"([^:\s]+):(\d+):(.+)"),
    "connect_to": re.compile(r"([^:\s]+):(\d+):(\[[0-9A-Fa-f:.]+\]|[^:\s]+):(\d+)"),
}


def parse_override(name: str, line: str) -> tuple[tuple[str, int], tuple[str, ...]]:
    """A --resolve line → ((host, port), (address, ...)); a --connect-to line →
    ((host, port), (host2, port2)). Names in lower case. Raises ValueError."""
    shape = "HOST:PORT:ADDRESS[,ADDRESS...]" if name == "resolve" else "HOST:PORT:HOST2:PORT2"
    match = _OVERRIDE[name].fullmatch(line.strip())
    ports = [int(p) for p in match.groups()[1::2]] if match else []
    if match is None or not all(0 < port < 65536 for port in ports):
        raise ValueError(f"expected {shape}, got {line!r}")
    key = (match[1].lower(), ports[0])
    if name == "connect_to":
        return key, (match[3].strip("[]").lower(), match[4])
    addresses = tuple(a.strip().strip("[]") for a in match[3].split(","))
    for address in addresses:
        ipaddress.ip_address(address)  # ValueError names it
    return key, addresses


def _override_problem(name: str, line: str) -> str:
    try:
        parse_override(name, line)
    except ValueError as exc:
        return str(exc)
    return ""


def _is_network(rule: str) -> bool:
    try:
        ipaddress.ip_network(rule.strip(), strict=False)
    except ValueError:
        return False
    return True


def flag(name: str) -> str:
    """The command-line option of a setting: --max-clients, --connect-port."""
    metadata = Config.__dataclass_fields__[name].metadata
    return "--" + (metadata["flag"] or name.replace("_", "-"))


def describe() -> list[tuple[str, Any, str, str]]:
    """(name, default, unit, help) for every setting, in declaration order."""
    return [(f.name, f.default, f.metadata["unit"], f.metadata["help"]) for f in dataclasses.fields(Config)]


FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(Config)}
_TRUE, _FALSE = {"yes", "on", "true", "1"}, {"no", "off", "false", "0"}


def coerce(name: str, values: list[str]) -> Any:
    """Turn the text of a setting (from a file or the environment) into its field's type.

    Repeatable settings take every value; the others exactly one. Raises ValueError.
    """
    kind = FIELD_TYPES[name]
    if name == "connect_ports":
        return connect_ports(values)
    if kind.startswith("tuple["):
        item = int if kind == "tuple[int, ...]" else str
        return tuple(item(value) for value in values)
    if len(values) != 1:
        raise ValueError(f"{name} takes one value, got {len(values)}")
    text = values[0]
    if kind == "bool":
        return parse_bool(text)
    try:
        if kind in ("int", "int | None"):
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"takes a {'whole ' if kind != 'float' else ''}number, got {text!r}") from None
    return text


def parse_bool(text: str) -> bool:
    """yes/no, on/off, true/false, 1/0, in any case (tinyproxy writes Yes and No)."""
    if text.lower() not in _TRUE | _FALSE:
        raise ValueError(f"takes yes or no, got {text!r}")
    return text.lower() in _TRUE
