"""The settings a request is judged, rewritten and routed by, compiled once per (re)load.

A reload builds a new `Runtime` and swaps one reference; a handler takes it once per
request, so no request is admitted by one configuration and routed by another.
Imports: config, forward, policy, routes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .config import Config, load_credentials
from .forward import Rewrite
from .policy import Policy, check_exposure
from .routes import Routes, parse_rules, rules_from_env, rules_from_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    config: Config
    rewrite: Rewrite
    policy: Policy
    routes: Routes

    @classmethod
    def compile(cls, config: Config, token: str) -> Runtime:
        """Everything `config` implies; ValueError or OSError (credentials file) if invalid.

        `token` is unique to the proxy instance: carried in our Via member, it lets us
        recognise a request that looped back through us.
        """
        users = load_credentials(config.auth_file) if config.auth_file else ()
        check_exposure(config, has_users=bool(users))
        pseudonym = f"{config.via_name} ({token})" if config.via_name else ""
        policy = Policy(config, users=users, via_token=pseudonym)
        return cls(config, Rewrite.from_config(config, pseudonym), policy, _routes(config))


def _routes(config: Config) -> Routes:
    """Parent-proxy rules: the environment's (if asked for), then the file's, then the command
    line's; later rules win ties and later defaults replace earlier ones (docs/upstream.md)."""
    rules = rules_from_env(os.environ) if config.upstream_from_env else Routes()
    rules = rules.then(parse_rules(config.upstream_rules))
    rules = rules.then(rules_from_options(config.upstream, config.no_upstream))
    for entry in rules.ignored:
        log.warning("NO_PROXY entry %r is not understood; ignored", entry)
    return rules
