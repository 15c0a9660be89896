"""The settings a request is judged, rewritten and routed by, compiled once per (re)load.

A reload builds a new `Runtime` and swaps one reference; a handler takes it once per
request, so no request is admitted by one configuration and routed by another.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..net.dialer import Dialer, Resolver, system_resolver
from ..net.lookups import Lookups
from ..observe.stats import Stats
from ..origin.exchange import Rewrite
from ..settings.conffile import load_credentials
from ..settings.config import Config, parse_override
from ..settings.policy import Policy, check_exposure
from ..settings.routes import Routes, parse_rules, rules_from_env, rules_from_options

log = logging.getLogger(__name__)
TINYPROXY_STAT_HOST = "tinyproxy.stats"


@dataclass(frozen=True)
class Runtime:
    config: Config
    rewrite: Rewrite
    policy: Policy
    routes: Routes
    stat_hosts: frozenset[str]  # host names the proxy answers itself
    dialer: Dialer  # the attempt delay and host overrides; judging() per client

    @classmethod
    def compile(
        cls, config: Config, token: str, stats: Stats, resolver: Resolver | None, lookups: Lookups
    ) -> Runtime:
        """Everything `config` implies; ValueError or OSError (credentials file) if invalid.

        `token` is unique to the proxy instance: carried in our Via member, it lets us
        recognise a request that looped back through us. `lookups` are the proxy's lookup
        threads, which outlive a reload.
        """
        users = load_credentials(config.auth_file) if config.auth_file else ()
        check_exposure(config, has_users=bool(users))
        pseudonym = f"{config.via_name} ({token})" if config.via_name else ""
        policy = Policy(config, users=users, via_token=pseudonym)
        rewrite = Rewrite.from_config(config, pseudonym)
        dialer = _dialer(config, stats, resolver, lookups)
        return cls(config, rewrite, policy, _routes(config), _stat_hosts(config.stat_host), dialer)


def _dialer(config: Config, stats: Stats, resolver: Resolver | None, lookups: Lookups) -> Dialer:
    resolve = dict(parse_override("resolve", line) for line in config.resolve)
    moved = (parse_override("connect_to", line) for line in config.connect_to)
    connect_to = {key: (host, int(port)) for key, (host, port) in moved}
    return Dialer(
        config.attempt_delay, resolve, connect_to, resolver or system_resolver, stats, lookups=lookups
    )


def _stat_hosts(stat_host: str) -> frozenset[str]:
    """The stat host; by default tinyproxy's name too, so a tinyproxy user's bookmark
    (http://tinyproxy.stats/) is answered here instead of forwarded to DNS."""
    if stat_host == Config.stat_host:
        return frozenset({stat_host, TINYPROXY_STAT_HOST})
    return frozenset({stat_host.lower()} if stat_host else ())


def _routes(config: Config) -> Routes:
    """Parent-proxy rules: the environment's (if asked for), then the file's, then the command
    line's; later rules win ties and later defaults replace earlier ones (docs/upstream.md)."""
    rules = rules_from_env(os.environ) if config.upstream_from_env else Routes()
    rules = rules.then(parse_rules(config.upstream_rules))
    rules = rules.then(rules_from_options(config.upstream, config.no_upstream))
    for entry in rules.ignored:
        log.warning("NO_PROXY entry %r is not understood; ignored", entry)
    return rules
