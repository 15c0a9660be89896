"""The command line's options as click parses them, whatever click version is installed."""

from __future__ import annotations

from typing import Any

import click
from click.testing import CliRunner

from tinyproxy_py.app.cli import RUN_DEFAULTS, _options


def parsed(args: list[str], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    @click.command()
    @lambda command: _options(command, defaults or {}, frozenset())
    def probe(**settings: Any) -> None:
        seen.update(settings)

    result = CliRunner().invoke(probe, args)
    assert result.exit_code == 0, result.output
    return seen


def test_connect_ports_are_numbers_or_words_on_the_command_line() -> None:
    """click 8.4.0 ran this option's callback before recording its source: the ports
    stayed text, and `serve --connect-port 443` died comparing int with str."""
    assert parsed(["--connect-port", "443"])["connect_ports"] == (443,)
    assert parsed(["--connect-port", "443", "--connect-port", "any"])["connect_ports"] == (443, 0)
    assert parsed(["--connect-port", "none"])["connect_ports"] == ()
    assert parsed(["--connect-port", "443,8443"])["connect_ports"] == (443, 8443)


def test_defaults_stay_as_they_are() -> None:
    assert parsed([])["connect_ports"] == (-1,)  # auto: the policy decides (settings/ports.py)
    assert parsed([], RUN_DEFAULTS)["connect_ports"] == (-1,)  # one rule for serve, run and the fixture
    assert parsed(["--connect-port", "auto"])["connect_ports"] == (-1,)


def test_a_bad_port_word_is_a_usage_error() -> None:
    @click.command()
    @lambda command: _options(command, {}, frozenset())
    def probe(**settings: Any) -> None:
        pass

    result = CliRunner().invoke(probe, ["--connect-port", "https"])
    assert result.exit_code == 2 and "--connect-port" in result.output
