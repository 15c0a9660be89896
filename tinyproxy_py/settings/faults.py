"""Fault rules: which exchanges misbehave on purpose, and how (docs/faults.md).

A rule names destinations (host exact or `*.suffix`, port; for plain HTTP also method
and path prefix), a kind, the kind's settings, and when it fires: a probability with a
seed (the same seed gives the same sequence of outcomes), `first=N` (the first N matches
only), `after=M` (skip the first M). For each new exchange the rules are tried in order;
the first that matches and fires is the exchange's fault. Written as text
(`host=api.test kind=latency ms=300`: the command line, the config file, the JSON
endpoint) or as keywords (`proxy.faults.add(host="api.test", kind="latency", ms=300)`).

This module decides; net/faultstream.py and the handler carry a fault out. No I/O here.
"""

from __future__ import annotations

import logging
import random
import shlex
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..wire.grammar import FIELD_TEXT

log = logging.getLogger(__name__)

# Kinds and their settings, with defaults (None: required). Units: ms, bytes, KB/s.
# `direction`: down (target to client), up (client to target) or both.
KINDS: dict[str, dict[str, Any]] = {
    # TCP level: plain exchanges and CONNECT tunnels alike, on the target's side
    "latency": {"ms": None, "jitter": 0, "direction": "down"},
    "bandwidth": {"rate": None, "direction": "down"},
    "slicer": {"size": 1, "ms": 10, "direction": "down"},
    "reset_peer": {"ms": 0, "bytes": 0, "direction": "down"},
    "timeout": {"ms": 0},
    "refuse": {},
    "limit_data": {"bytes": None, "direction": "down"},
    # HTTP level: plain exchanges (status and fail_first answer a CONNECT too)
    "status": {"status": 503, "retry_after": "", "body": ""},
    "fail_first": {"n": None, "status": 503, "retry_after": "", "body": ""},
    "slow_head": {"size": 1, "ms": 100},
    "truncate": {"bytes": 0},
    "header_delay": {"ms": None},
}
TCP_KINDS = frozenset({"latency", "bandwidth", "slicer", "reset_peer", "timeout", "limit_data"})
ANSWERED = frozenset({"status", "fail_first", "refuse"})  # by the proxy, before any dial
CLIENT_KINDS = frozenset({"slow_head", "truncate", "header_delay"})  # shape the client's response
SELECTORS = {"host": "*", "port": 0, "method": "", "path": "", "p": 1.0, "seed": None, "first": 0, "after": 0}
_TEXT = frozenset({"direction", "retry_after", "body", "host", "method", "path"})


# Bounds that keep every rule's arithmetic finite and every wait within a day.
LIMITS = {"ms": 86_400_000, "jitter": 86_400_000, "rate": 1e9, "port": 65535, "p": 1, "status": 599}
MAX_COUNT = 2**53  # bytes, counts, seeds
MAX_RULES = 1000


class FaultError(ValueError):
    """A rule that cannot be: unknown kind or key, a bad value."""


@dataclass(eq=False)
class Rule:
    """One fault rule. `matched` counts the exchanges its selectors matched, `applied`
    those it fired on; `active` goes False when it is removed (streams it shapes then
    pass bytes through untouched)."""

    kind: str
    settings: dict[str, Any]
    host: str = "*"
    port: int = 0
    method: str = ""
    path: str = ""
    p: float = 1.0
    seed: int | None = None
    first: int = 0
    after: int = 0
    id: int = 0
    source: str = "api"  # "config": from --fault or the config file, replaced on reload
    matched: int = 0
    applied: int = 0
    active: bool = True
    _random: random.Random | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.p < 1:  # only a probability draws (and a generator holds ~2.5 KiB)
            self._random = random.Random(self.seed)

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    @property
    def text(self) -> str:
        """The rule as `--fault` takes it."""
        words = [f"host={self.host}", f"kind={self.kind}"]
        words += [
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.settings.items() if v != ""
        ]
        chosen = {"port": self.port, "method": self.method, "path": self.path, "first": self.first}
        words += [f"{k}={v}" for k, v in chosen.items() if v]
        words += [f"after={self.after}"] if self.after else []
        words += [f"p={self.p:g}"] if self.p < 1 else []
        words += [f"seed={self.seed}"] if self.seed is not None else []
        return shlex.join(words)

    def selects(self, host: str, port: int, method: str, path: str | None) -> bool:
        """Whether this exchange is one the rule names (`path` None: a tunnel)."""
        if self.host != "*":
            wanted = self.host
            if wanted.startswith("*.") and not host.endswith(wanted[1:]):
                return False
            if not wanted.startswith("*.") and host != wanted:
                return False
        if self.port and port != self.port:
            return False
        if self.method and method != self.method:
            return False
        if self.path and (path is None or not path.startswith(self.path)):
            return False
        if path is None:  # a tunnel carries bytes, not exchanges the proxy can shape
            if "status" in self.settings and self.settings["status"] < 300:
                return False  # a 2xx to a CONNECT would say the tunnel is open
            return self.kind in TCP_KINDS or self.kind in ANSWERED
        return True

    def fires(self) -> bool:
        """Counted, probability drawn: whether the rule applies to this match."""
        self.matched += 1
        if self.matched <= self.after:
            return False
        limit = self.settings["n"] if self.kind == "fail_first" else self.first
        if limit and self.applied >= limit:
            return False
        if self._random is not None and self._random.random() >= self.p:
            return False
        self.applied += 1
        return True

    def describe(self) -> dict[str, Any]:
        """For the JSON endpoint and the stats page."""
        return {"id": self.id, "rule": self.text, "kind": self.kind, "matched": self.matched,
                "applied": self.applied, "source": self.source}  # fmt: skip


def parse_rule(text: str | None = None, /, **words: Any) -> Rule:
    """A rule from `--fault` text, keywords, or both (keywords win)."""
    try:
        pairs = [word.partition("=") for word in shlex.split(text or "")]
    except ValueError as exc:
        raise FaultError(f"cannot split {text!r}: {exc}") from None
    given: dict[str, Any] = {}
    for key, equals, value in pairs:
        if not equals:
            raise FaultError(f"{key!r} is not key=value")
        given[key] = value
    given.update(words)
    kind = str(given.pop("kind", ""))
    if kind not in KINDS:
        raise FaultError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    unknown = set(given) - set(KINDS[kind]) - set(SELECTORS)
    if unknown:
        keys = ", ".join(sorted({*KINDS[kind], *SELECTORS} - {"host"}))
        raise FaultError(f"{kind} takes {keys or 'no settings'} (and host); not {', '.join(sorted(unknown))}")
    settings = {key: _value(kind, key, given.get(key, default)) for key, default in KINDS[kind].items()}
    chosen = {key: _value(kind, key, given.get(key, default)) for key, default in SELECTORS.items()}
    if settings.get("direction", "down") not in ("down", "up", "both"):
        raise FaultError(f"direction must be down, up or both; got {settings['direction']!r}")
    if kind == "bandwidth" and not settings["rate"] > 0:
        raise FaultError("rate must be above 0 (KB/s)")
    if not 0 <= chosen["p"] <= 1:
        raise FaultError(f"p must be between 0 and 1; got {chosen['p']}")
    if "status" in settings and (settings["status"] < 200 or settings["status"] in (204, 304)):
        raise FaultError(
            f"status must be 200-599 and not 204 or 304 (the answer has a body); got {settings['status']}"
        )
    chosen["method"], chosen["host"] = chosen["method"].upper(), chosen["host"].lower()
    return Rule(kind, settings, **chosen)


def _value(kind: str, key: str, value: Any) -> Any:
    if value is None:
        if key == "seed":
            return None
        raise FaultError(f"{kind} needs {key}=")
    if key in _TEXT:
        if key != "body" and not FIELD_TEXT.fullmatch(str(value)):  # it goes into a head
            raise FaultError(f"{key} must be printable text on one line; got {value!r}")
        return str(value)
    try:
        number = float(value) if key in ("p", "jitter", "ms", "rate") else int(value)
    except (TypeError, ValueError, OverflowError):
        raise FaultError(f"{key} must be a number; got {value!r}") from None
    if not 0 <= number <= LIMITS.get(key, MAX_COUNT):  # NaN fails this too
        raise FaultError(f"{key} must be between 0 and {LIMITS.get(key, MAX_COUNT):g}; got {value!r}")
    return number


class FaultHandle:
    """What `Faults.add` returns: `remove()` it (or leave its `with` block) to end the rule."""

    def __init__(self, faults: Faults, rule: Rule) -> None:
        self.faults, self.rule = faults, rule

    @property
    def applied(self) -> int:
        """How many exchanges the rule fired on so far."""
        return self.rule.applied

    def remove(self) -> None:
        self.faults.remove(self.rule.id)

    def __enter__(self) -> FaultHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Faults:
    """The proxy's fault rules, changed at run time from any thread. `on_fire(rule,
    what, count)` is told of every fault applied: the exchange, and the how-manieth it
    was for the rule (the proxy counts and logs it)."""

    def __init__(self, on_fire: Callable[[Rule, str, int], None] | None = None) -> None:
        self._rules: list[Rule] = []  # replaced whole on change: match() reads it unlocked
        self._lock = threading.Lock()
        self._next_id = 1
        self.on_fire = on_fire

    def add(self, text: str | None = None, /, **words: Any) -> FaultHandle:
        """Add a rule (see parse_rule) after the others; it applies to new exchanges at once."""
        return self.add_rule(parse_rule(text, **words))

    def add_rule(self, rule: Rule) -> FaultHandle:
        with self._lock:
            if len(self._rules) >= MAX_RULES:
                raise FaultError(f"there are {MAX_RULES} fault rules already: remove some first")
            rule.id, self._next_id = self._next_id, self._next_id + 1
            self._rules = [*self._rules, rule]
        if rule.source != "config":  # those are logged as the proxy starts or reloads
            log.info("fault rule %d added: %s", rule.id, rule.text)
        return FaultHandle(self, rule)

    def remove(self, rule_id: int) -> bool:
        """End a rule; whether it was there. Exchanges it shapes go on unshaped."""
        with self._lock:
            gone = [rule for rule in self._rules if rule.id == rule_id]
            self._rules = [rule for rule in self._rules if rule.id != rule_id]
        for rule in gone:
            rule.active = False
            log.info("fault rule %d removed: %s (applied %d times)", rule.id, rule.text, rule.applied)
        return bool(gone)

    def clear(self, source: str | None = None) -> None:
        """Remove every rule (of `source`, if given)."""
        for rule in self.rules():
            if source is None or rule.source == source:
                self.remove(rule.id)

    def replace_config_rules(self, texts: tuple[str, ...]) -> None:
        """The rules of the command line and config file, anew (start, reload)."""
        fresh = [parse_rule(text) for text in texts]  # all or nothing
        with self._lock:  # in one step: no exchange sees neither the old nor the new
            gone = [rule for rule in self._rules if rule.source == "config"]
            for rule in fresh:
                rule.source, rule.id, self._next_id = "config", self._next_id, self._next_id + 1
            self._rules = [rule for rule in self._rules if rule.source != "config"] + fresh
        for rule in gone:
            rule.active = False

    def rules(self) -> list[Rule]:
        return list(self._rules)

    def match(self, host: str, port: int, method: str, path: str | None) -> Rule | None:
        """The fault for a new exchange (`path` None: a CONNECT tunnel), or None.
        No rules, no cost: one list check."""
        if not self._rules:
            return None
        host = host.lower()
        with self._lock:  # counts and draws in one order: seeded runs repeat
            fired = next(
                (rule for rule in self._rules if rule.selects(host, port, method, path) and rule.fires()),
                None,
            )
            count = fired.applied if fired is not None else 0
        if fired is not None and self.on_fire is not None:
            self.on_fire(fired, f"{method} {host}:{port}{path or ''}", count)
        return fired

    def describe(self) -> list[dict[str, Any]]:
        return [rule.describe() for rule in self._rules]


def rule_problem(text: str) -> str:
    """Why a `--fault` text is not a rule ("" if it is): for the config's checks."""
    try:
        parse_rule(text)
    except FaultError as exc:
        return str(exc)
    return ""


def from_json(document: Mapping[str, Any]) -> Rule:
    """A rule from the JSON endpoint's body: {"rule": "text"} or the keys themselves."""
    words = dict(document)
    text = words.pop("rule", None)
    if text is not None and not isinstance(text, str):
        raise FaultError('"rule" must be a string')
    return parse_rule(text, **{str(k): v for k, v in words.items()})
