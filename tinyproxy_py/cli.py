"""The command line: `tinyproxy-py serve` and friends. The only module that imports click.

Options are generated from `Config` (config.py), so every setting has a flag whose
default and help text come from the one source of truth.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .config import Config
from .server import ProxyServer

THREAD_STACK_SIZE = 512 * 1024
_SCALARS: dict[str, Any] = {"int": int, "float": float, "str": str, "str | None": str, "bool": bool}


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one --option per Config field, in declaration order."""
    for f in reversed(dataclasses.fields(Config)):
        kind = str(f.type)
        repeatable = kind.startswith("tuple[")
        scalar = _SCALARS[kind[6:-6] if repeatable else kind]
        unit = f.metadata["unit"]
        command = click.option(
            "--" + (f.metadata["flag"] or f.name.replace("_", "-")),
            f.name,
            type=scalar,
            multiple=repeatable,
            is_flag=scalar is bool,
            default=f.default,
            show_default=f.default not in (None, ()),
            help=f.metadata["help"] + (f" ({unit})" if unit else ""),
        )(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tinyproxy-py")
def main() -> None:
    """tinyproxy-py: a small, leak-free forward HTTP/HTTPS proxy."""


@main.command()
@config_options
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level; every request and tunnel is logged at info.",
)
def serve(log_level: str, **settings: Any) -> None:
    """Run the proxy until Ctrl-C or SIGTERM (a second signal exits at once)."""
    try:
        config = Config(**settings)
        proxy = ProxyServer(config)
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from exc
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    _prepare_process(config)
    stop = threading.Event()
    _on_signals(stop)
    try:
        proxy.start()
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from exc
    try:
        local = proxy.url.replace("[::]", "[::1]").replace("0.0.0.0", "127.0.0.1")
        click.echo(f"tinyproxy-py listening on {proxy.url}; use it with: ", nl=False)
        click.echo(f"export HTTP_PROXY={local} HTTPS_PROXY={local}")
        while not stop.wait(0.5):
            pass
    finally:
        proxy.stop()


def _prepare_process(config: Config) -> None:
    """Process-wide settings an embedding program decides for itself, so only the CLI makes them.

    Small thread stacks keep max_clients threads cheap (the handler path is shallow); the
    open-files limit is raised toward the hard limit so max_tunnels can actually be reached.
    """
    threading.stack_size(THREAD_STACK_SIZE)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    needed = 2 * config.max_clients + 2 * config.max_tunnels + config.pool_hosts * config.pool_idle_per_host
    log = logging.getLogger("tinyproxy_py")
    log.info(
        "limits: max_clients=%d max_tunnels=%d open files=%d (the limits need up to %d) thread stack=%d KiB",
        config.max_clients,
        config.max_tunnels,
        soft,
        needed,
        THREAD_STACK_SIZE // 1024,
    )
    if needed > soft:
        log.warning(
            "the open-files limit (%d) is below what the limits need (%d): lower max_tunnels", soft, needed
        )


def _on_signals(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: stop gracefully. Second: exit at once."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        logging.getLogger("tinyproxy_py").info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    main()
