"""Settings from a tinyproxy.conf(5)-style file and from TINYPROXY_PY_* environment variables,
and the USER:PASSWORD lines of an --auth-file.

The file format is tinyproxy's: one `Keyword value...` per line, keywords in any case,
`#` comments, values in double quotes when they hold spaces. An existing tinyproxy
config runs unchanged for what we support; a directive we do not support is reported
as a warning naming file and line (never silently ignored); a bad value raises
ConfigFileError naming file, line and reason.

Every Config field has a keyword: its name in CamelCase (max_clients → MaxClients), its
flag's where that differs (filter_hosts → FilterHost), and tinyproxy's in ALIASES. tinyproxy's
single `Timeout` (idle seconds for any connection) sets our read, response-header,
client-idle and tunnel-idle timeouts, unless the file also names one of those explicitly.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import FIELD_TYPES, Config, SettingError, check_setting, coerce, flag, parse_bool
from .policy import parse_credential
from .ports import AUTO_CONNECT_PORTS
from .routes import rule_from_words

ENV_PREFIX = "TINYPROXY_PY_"

ALIASES = {  # as tinyproxy spells them (the docs do too); read in any case
    "Listen": "host",
    "BasicAuthRealm": "auth_realm",
    "ConnectPort": "connect_ports",
    "ViaProxyName": "via_name",
    "AddHeader": "add_headers",
}
TIMEOUT_FIELDS = ("read_timeout", "response_header_timeout", "client_idle_timeout", "tunnel_idle_timeout")
LOG_LEVELS = {
    "critical": "error",
    "error": "error",
    "warning": "warning",
    "notice": "info",
    "connect": "info",
    "info": "info",
    "debug": "debug",
}
# tinyproxy directives with no counterpart here: reported, never silently dropped.
UNSUPPORTED = {
    "syslog": "send stderr to syslog with your service manager instead",
    "bind": "outgoing source address selection is not supported",
    "bindsame": "outgoing source address selection is not supported",
    "errorfile": "custom error pages are not supported",
    "defaulterrorfile": "custom error pages are not supported",
    "statfile": "the stats page is built in (see StatHost)",
    "startservers": "one process with threads; see MaxClients",
    "minspareservers": "one process with threads; see MaxClients",
    "maxspareservers": "one process with threads; see MaxClients",
    "maxrequestsperchild": "one process with threads; see MaxClients",
    "filterurls": "filters match host names only",
    "filtercasesensitive": "filters are case-insensitive",
    "anonymous": "header anonymisation is not supported",
    "reversepath": "reverse proxying is not supported",
    "reverseonly": "reverse proxying is not supported",
    "reversemagic": "reverse proxying is not supported",
    "reversebaseurl": "reverse proxying is not supported",
}


class ConfigFileError(ValueError):
    """A value that stops start-up; the message names file and line."""


@dataclass
class FileSettings:
    """What a file set (Config field → value), plus warnings for what it could not use."""

    values: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)  # field → "FILE:LINE: Directive"
    # field → what a missing directive means here, said when nothing else sets the field
    notes: dict[str, str] = field(default_factory=dict)


def _keyword(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


_KEYWORDS = (
    {_keyword(name): name for name in FIELD_TYPES}
    | {_keyword(f.metadata["flag"]): f.name for f in dataclasses.fields(Config) if f.metadata["flag"]}
    | {alias.lower(): name for alias, name in ALIASES.items()}
)


def spelling(f: dataclasses.Field[Any]) -> str:
    """A setting's keyword as the docs write it: TlsCert, MaxClients, ConnectPort."""
    return "".join(part.capitalize() for part in (f.metadata["flag"] or f.name).replace("-", "_").split("_"))


# Every directive a file may use, lower case → as written, for "did you mean".
_TINYPROXY_FORMS = ("Timeout", "Upstream", "No", "BasicAuth", "AddHeader", "DisableViaHeader", "LogLevel")
_FILTER_FORMS = ("Filter", "FilterType", "FilterExtended", "FilterDefaultDeny")
SPELLINGS = {
    word.lower(): word
    for word in (
        *(spelling(f) for f in dataclasses.fields(Config) if f.metadata["cli"]),
        *ALIASES,
        *_TINYPROXY_FORMS,
        *_FILTER_FORMS,
    )
}


def load_file(path: str) -> FileSettings:
    """Read a tinyproxy.conf-style file. Raises ConfigFileError (or OSError if unreadable)."""
    return parse(read_text(path, "config file"), path)


def read_text(path: str, what: str) -> str:
    """A file's text; OSError or ConfigFileError that name the file and say why in words."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise OSError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def parse(text: str, path: str = "<config>") -> FileSettings:
    parser = _Parser(path)
    # Lines end at LF (CRLF too), as tinyproxy reads them; splitlines() would also end one
    # at a lone CR or U+0085 inside a value and start a directive no editor shows.
    for number, line in enumerate(text.split("\n"), 1):
        parser.line(number, line.removesuffix("\r"))
    return parser.finish()


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.result = FileSettings()
        self.repeated: dict[str, list[Any]] = {}  # repeatable field → its items so far
        self.timeout: float | None = None
        self.filter: tuple[str, int] | None = None
        self.filter_type = "ere"
        self.current = self.timeout_line = ""  # "FILE:LINE: Directive" being read, and Timeout's
        self.connect_ports: list[int] = []

    def where(self, number: int) -> str:
        return f"{self.path}:{number}"

    def line(self, number: int, line: str) -> None:
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ConfigFileError(f"{self.where(number)}: {exc}") from None
        if not words:
            return
        keyword, values = words[0].lower(), words[1:]
        if keyword == "no" and values[:1] and values[0].lower() == "upstream":
            keyword, values = "noupstream", values[1:]
        self.current = f"{self.where(number)}: {words[0]}"
        try:
            self.directive(number, keyword, values, words[0])
        except ValueError as exc:
            raise ConfigFileError(f"{self.current}: {exc}") from None

    def directive(self, number: int, keyword: str, values: list[str], written: str) -> None:
        special = getattr(self, f"_{keyword}", None)
        if special is not None:
            special(number, values)
        elif keyword in _KEYWORDS:
            self.set(_KEYWORDS[keyword], values)
        elif keyword in UNSUPPORTED:  # tinyproxy's: the rest of its file still means what it says
            why = UNSUPPORTED[keyword]
            self.result.warnings.append(f"{self.where(number)}: {written}: not supported, ignored ({why})")
        else:  # a typo: starting without the rule the user meant would be worse than not starting
            guess = difflib.get_close_matches(keyword, SPELLINGS, n=1, cutoff=0.7)
            hint = f"; did you mean {SPELLINGS[guess[0]]}?" if guess else ""
            raise ValueError(f"unknown directive{hint}")

    def set(self, name: str, values: list[str]) -> None:
        if not values:
            raise ValueError("needs a value")
        value = _checked(name, coerce(name, values))  # this line's values, named by this line
        self.result.where[name] = self.current
        if FIELD_TYPES[name].startswith("tuple["):  # the whole list is checked once, at the end:
            self.repeated.setdefault(name, []).extend(value)  # per line, n lines cost n^2
        else:
            self.result.values[name] = value

    # tinyproxy directives whose shape differs from ours.
    def _timeout(self, number: int, values: list[str]) -> None:
        self.timeout = _checked("read_timeout", float(_one(values)))
        self.timeout_line = self.current

    def _upstream(self, number: int, values: list[str]) -> None:
        self._rule(["Upstream", *values])

    def _noupstream(self, number: int, values: list[str]) -> None:
        self._rule(["No", "Upstream", *values])

    def _rule(self, words: list[str]) -> None:
        """Upstream rules keep their file order: the last matching one wins (as in tinyproxy)."""
        rule_from_words(words)  # validates now, so a bad line is reported with its number
        self.set("upstream_rules", [shlex.join(words)])

    def _connectport(self, number: int, values: list[str]) -> None:
        """tinyproxy.conf(5): the ports CONNECT may reach; `ConnectPort 0` matches no port,
        so alone it disables CONNECT; with no ConnectPort line every port is allowed.
        `ConnectPort auto` is the command line's default (--connect-port)."""
        if [value.lower() for value in values] == ["auto"]:
            self.result.where["connect_ports"] = self.current
            self.result.values["connect_ports"] = AUTO_CONNECT_PORTS
            return
        ports = [_checked("connect_ports", (int(value),))[0] for value in values] if values else []
        if any(port < 0 for port in ports):
            raise ValueError("takes port numbers, or auto")
        if not ports:
            raise ValueError("needs a value")
        self.connect_ports.extend(port for port in ports if port != 0)
        self.result.where["connect_ports"] = self.current
        self.result.values["connect_ports"] = tuple(self.connect_ports)

    def _basicauth(self, number: int, values: list[str]) -> None:
        if len(values) != 2:
            raise ValueError("takes a user and a password")
        self.set("basic_auth", [f"{values[0]}:{values[1]}"])

    def _addheader(self, number: int, values: list[str]) -> None:
        if len(values) != 2:
            raise ValueError('takes a "Name" and a "value"')
        self.set("add_headers", [f"{values[0]}: {values[1]}"])

    def _fault(self, number: int, values: list[str]) -> None:
        """Fault "host=H kind=K ..." or the words unquoted: one rule a line."""
        self.set("faults", [values[0] if len(values) == 1 else shlex.join(values)] if values else [])

    def _disableviaheader(self, number: int, values: list[str]) -> None:
        if parse_bool(_one(values)):
            self.result.values["via_name"] = ""

    def _loglevel(self, number: int, values: list[str]) -> None:
        level = _one(values).lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown level {values[0]!r}")
        self.result.values["log_level"] = LOG_LEVELS[level]

    def _filter(self, number: int, values: list[str]) -> None:
        self.filter = (_one(values), number)

    def _filtertype(self, number: int, values: list[str]) -> None:
        kind = _one(values).lower()
        if kind not in ("bre", "ere", "fnmatch"):
            raise ValueError("takes bre, ere or fnmatch")
        self.filter_type = kind

    def _filterextended(self, number: int, values: list[str]) -> None:
        if parse_bool(_one(values)):
            self.filter_type = "ere"

    def _filterdefaultdeny(self, number: int, values: list[str]) -> None:
        denied = parse_bool(_one(values))
        self.result.values["filter_mode"] = "allow" if denied else "deny"

    def finish(self) -> FileSettings:
        values, notes = self.result.values, self.result.notes
        for name, items in self.repeated.items():
            try:  # rules about the list as a whole (listen addresses that collide)
                values[name] = _checked(name, tuple(items))
            except ValueError as exc:
                raise ConfigFileError(f"{self.result.where[name]}: {exc}") from None
        if "connect_ports" not in values:
            values["connect_ports"] = (0,)
            notes["connect_ports"] = (
                f"{self.path}: no ConnectPort line: CONNECT may reach every port, as in tinyproxy; "
                "add `ConnectPort 443` lines to allow only those ports"
            )
        if "host" not in values:
            notes["host"] = (
                f"{self.path}: no Listen line: listening on 127.0.0.1 only, where tinyproxy would "
                "listen on every address; write `Listen 0.0.0.0` to accept other machines"
            )
        if self.timeout is not None:
            for name in TIMEOUT_FIELDS:
                if name not in self.result.values:
                    self.result.values[name] = self.timeout
                    self.result.where[name] = self.timeout_line
        if self.filter is not None:
            self.result.values["filter_hosts"] = self._filter_patterns(*self.filter)
        return self.result

    def _filter_patterns(self, path: str, number: int) -> tuple[str, ...]:
        """tinyproxy filter files hold one regular expression (or glob) per line."""
        path = os.path.join(os.path.dirname(self.path), path)
        try:
            lines = [line.split("#", 1)[0].strip() for line in read_text(path, "filter file").split("\n")]
        except (OSError, ConfigFileError) as exc:
            raise ConfigFileError(f"{self.where(number)}: Filter: {exc}") from None  # names the file
        if self.filter_type == "fnmatch":
            return tuple("glob:" + line for line in lines if line)
        for line_number, line in enumerate(lines, 1):
            try:
                re.compile(line)
            except re.error as exc:
                where = f"{self.where(number)}: Filter: {path}:{line_number}"
                raise ConfigFileError(f"{where}: bad regular expression {line!r}: {exc}") from None
        return tuple("re:" + line for line in lines if line)


def _checked(name: str, value: Any) -> Any:
    """`value` if the setting takes it; else a ValueError the caller names (file and line,
    or the environment variable) instead of the internal field name."""
    try:
        check_setting(name, value)
    except SettingError as exc:
        raise ValueError(exc.reason) from None
    return value


def _one(values: list[str]) -> str:
    if len(values) != 1:
        raise ValueError(f"takes one value, got {len(values)}")
    return values[0]


def env_variable(name: str) -> str:
    return ENV_PREFIX + name.upper()


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """TINYPROXY_PY_<FIELD> variables; repeatable settings take comma- or space-separated lists."""
    values = {}
    for f in (f for f in dataclasses.fields(Config) if f.metadata["cli"]):
        name = f.name
        text = environ.get(env_variable(name))
        if text is None:
            continue
        parts = [text]
        if FIELD_TYPES[name].startswith("tuple["):
            parts = text.split(",") if f.metadata["spaced"] else text.replace(",", " ").split()
            parts = [part.strip() for part in parts if part.strip()]
        try:
            values[name] = _checked(name, coerce(name, parts))
        except ValueError as exc:
            raise ValueError(f"{env_variable(name)}: {exc}") from None
    return values


def reference_table() -> str:
    """The configuration reference (docs/configuration.md), generated from Config's fields."""
    aliases: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    rows = ["| option | file keyword | environment | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(Config):
        if not f.metadata["cli"]:
            continue
        spelled = [f"`{spelling(f)}`"] + [f"`{a}`" for a in aliases.get(f.name, [])]
        spelled = RULE_KEYWORDS.get(f.name, list(dict.fromkeys(spelled)))
        unit = f" ({f.metadata['unit']})" if f.metadata["unit"] else ""
        rows.append(
            f"| `{flag(f.name)}` | {' '.join(spelled)} | `{env_variable(f.name)}` | {_default(f.default)} "
            f"| {f.metadata['help']}{unit} |"
        )
    return "\n".join(rows) + "\n"


# In a file, upstream rules keep tinyproxy's form and order (see docs/upstream.md).
RULE_KEYWORDS = {
    "upstream": ['`Upstream TYPE [USER:PASS@]HOST:PORT ["SITE"]`'],
    "no_upstream": ['`No Upstream "SITE"`'],
}


def _default(value: Any) -> str:
    if value == AUTO_CONNECT_PORTS:
        return "`auto`"
    if value is None or value == ():
        return "(none)"
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value)
    if value == "":
        return '`""`'
    return f"`{value}`"


def load_credentials(path: str) -> tuple[tuple[str, str], ...]:
    """USER:PASSWORD lines of an auth file (blank lines and # comments skipped)."""
    users = []
    for number, line in enumerate(read_text(path, "auth file").split("\n"), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                users.append(parse_credential(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return tuple(users)
