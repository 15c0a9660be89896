"""The command line: serve, check-config, run, env. The only module that imports click.

Options are generated from `Config` (settings/config.py), so every setting has a flag whose
default and help text come from the one source of truth. Settings are merged as:
command line > environment (TINYPROXY_PY_...) > config file > defaults.
Process-wide concerns live here and in app/process.py, never in the core: logging
handlers, signals, the open-files limit, thread stack size, the pid file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from click.core import ParameterSource

from ..server.proxy import ProxyServer
from ..settings.conffile import env_variable, from_environment, load_file
from ..settings.config import CHOICES, SPELLED, Config, SettingError, check_setting, coerce, flag
from ..settings.ports import AUTO_CONNECT_PORTS
from ..settings.routes import join_host_port
from ..version import __version__
from .process import LogSetup, drop_privileges, prepare_process
from .workers import PASSED_ON, SharedStats, supervise

_SCALARS: dict[str, Any] = {
    "int": int,
    "int | None": int,
    "float": float,
    "str": str,
    "str | None": str,
    "bool": bool,
}
log = logging.getLogger("tinyproxy_py")


# `run` wraps one command on this machine: a free port always, and unless a file or the
# environment says otherwise, plain requests to any port (local test servers use ephemeral
# ones, as the pytest fixture allows); CONNECT follows serve's 'auto'; no serve-only options.
RUN_DEFAULTS: dict[str, Any] = {"port": 0, "http_ports": ("any",)}
SERVE_ONLY = frozenset({"workers", "pid_file", "user", "group"})
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")


def _options(
    command: Callable[..., Any], defaults: dict[str, Any], left_out: frozenset[str]
) -> Callable[..., Any]:
    """Add one --option per Config field (but `left_out`), in declaration order, plus --config."""
    for f in reversed(
        [f for f in dataclasses.fields(Config) if f.metadata["cli"] and f.name not in left_out]
    ):
        kind = str(f.type)
        repeatable = kind.startswith("tuple[")
        scalar = _SCALARS[kind[6:-6] if repeatable else kind]
        unit = f.metadata["unit"]
        spelled = f.name in SPELLED  # words as well as numbers: parsed as the environment's are
        default = defaults.get(f.name, f.default)
        if default == AUTO_CONNECT_PORTS:  # click passes a spelled default on as text: the word
            default = ("auto",)
        command = click.option(
            flag(f.name),
            f.name,
            type=click.Choice(CHOICES[f.name]) if f.name in CHOICES else str if spelled else scalar,
            callback=_spelled if spelled else None,
            multiple=repeatable,
            is_flag=scalar is bool,
            default=default,
            show_default=_shown(default),
            help=f.metadata["help"] + (f" ({unit})" if unit else ""),
        )(command)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="tinyproxy.conf-style file (see docs/configuration.md).",
    )(command)


def _shown(default: Any) -> bool | str:
    if default == ("auto",):  # connect_ports' (see _options)
        return "auto"
    return default not in (None, ())


def _spelled(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Words as well as numbers ('any', 'none'), parsed as the environment's are. Only
    the command line gives text; a default is typed already. (Not by asking click where
    the value came from: click 8.4.0 runs callbacks before it records that.)"""
    if not value or not all(isinstance(item, str) for item in value):
        return value
    try:
        return coerce(str(param.name), list(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def build_config(
    config_file: str | None, explicit: dict[str, Any], defaults: dict[str, Any] | None = None
) -> tuple[Config, list[str]]:
    """Merge defaults < file < environment < command line. Raises ValueError or OSError.

    `defaults` are the command's own (run's), over Config's."""
    file = load_file(config_file) if config_file else None
    environment = from_environment(os.environ)
    try:
        for name, value in explicit.items():
            check_setting(name, value)
        merged = {**(defaults or {}), **(file.values if file else {}), **environment, **explicit}
        config = Config(**merged)
        if file is None:
            return config, []
        said = [note for name, note in file.notes.items() if name not in environment and name not in explicit]
        return config, file.warnings + said
    except SettingError as exc:  # named as the user set it: an option, a variable, a file line
        if exc.name in explicit:
            source = flag(exc.name)
        elif exc.name in environment:
            source = env_variable(exc.name)
        else:
            source = file.where.get(exc.name, flag(exc.name)) if file else flag(exc.name)
        raise ValueError(f"{source}: {exc.reason}") from None


def _explicit(settings: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line (not defaults): they win over file and env."""
    ctx = click.get_current_context()
    return {k: v for k, v in settings.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}


def _load(
    config_file: str | None, explicit: dict[str, Any], defaults: dict[str, Any] | None = None
) -> tuple[Config, list[str]]:
    try:
        return build_config(config_file, explicit, defaults)
    except (ValueError, OSError) as exc:  # each names its file, line or variable
        raise click.UsageError(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tinyproxy-py")
def main() -> None:
    """tinyproxy-py: a small, leak-free forward HTTP/HTTPS proxy."""


@main.command()
@lambda command: _options(command, {}, frozenset())
def serve(config_file: str | None, **settings: Any) -> None:
    """Run the proxy until Ctrl-C or SIGTERM (a second signal exits at once).

    SIGHUP or SIGUSR1 reloads the config file (ACL, auth, filters, timeouts) and a TLS
    listener's certificate without dropping connections, and reopens the log file.
    SIGUSR2 starts a drain: /readyz answers 503 while the proxy goes on serving (see
    --drain-delay).
    """
    explicit = _explicit(settings)
    config, warnings = _load(config_file, explicit)
    proxy = _make_proxy(config)  # validates everything before anything starts
    logs = _logs(config)
    for warning in warnings:
        log.warning("%s", warning)
        if config.log_file:  # whoever starts it reads the terminal, not the file
            click.echo(f"warning: {warning}", err=True)
    prepare_process(config)
    said = set(warnings)

    def reload() -> tuple[Config, list[str]]:
        """The file and environment again; a warning said before is not said again."""
        again, warnings = build_config(config_file, explicit)
        fresh = [warning for warning in warnings if warning not in said]
        said.update(fresh)
        return again, fresh

    try:
        with _pid_file(config.pid_file):
            if config.workers == 1:
                _run_worker(proxy, logs, reload, announce=True)
                return

            _preload()  # once here: the workers share its pages, and no first client waits

            def worker(config: Config, shared: SharedStats) -> None:
                # The certificate the parent loaded: a replacement worker does not depend
                # on the files being good when it starts.
                server = ProxyServer(config, tls=proxy.tls)
                _run_worker(server, logs, reload, shared, announce=shared.index == 0)

            status = supervise(config, worker, on_reload=lambda: _reload_tls(proxy, reload))
    except OSError as exc:
        where = exc.filename or f"{config.host[0]}:{config.port}"
        raise click.ClickException(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    finally:
        logs.close()
    sys.exit(status)


def _run_worker(
    proxy: ProxyServer,
    logs: LogSetup,
    reload: Callable[[], tuple[Config, list[str]]],
    shared: SharedStats | None = None,
    announce: bool = False,
) -> None:
    """Serve until a stop signal: the whole of `serve`, or one of its --workers."""
    events = _signal_events()
    _start(proxy)
    try:
        if proxy.config.user or proxy.config.group:
            _preload()  # while its files are readable: the user may not read where they are
        drop_privileges(proxy.config.user, proxy.config.group)
    except (OSError, ValueError) as exc:
        proxy.stop()  # never serve on as root when asked not to
        raise click.ClickException(f"cannot run as {proxy.config.user}:{proxy.config.group}: {exc}") from exc
    if shared is not None:
        shared.attach(proxy)
    try:
        if announce:
            _announce(proxy)
        _serve_until_stopped(proxy, events, logs, reload)
    finally:
        try:
            proxy.stop()  # still published meanwhile: totals must not drop during the drain
        finally:
            if shared is not None:
                shared.detach()


def _preload() -> None:
    """Load what the first plain request would (urllib3, http.client, ssl: some 40 ms),
    and find certifi's bundle (which imports more)."""
    import certifi

    from ..origin import connections  # noqa: F401  # loaded for what it imports

    certifi.where()


def _reload_tls(proxy: ProxyServer, reload: Callable[[], tuple[Config, list[str]]]) -> None:
    """In the parent of --workers, on SIGHUP: the pair a replacement worker will start with."""
    try:
        config = reload()[0]
        if proxy.tls is not None and config.tls_cert is not None:
            proxy.tls.reload(config.tls_cert, config.tls_key)
    except (ValueError, OSError) as exc:
        log.warning("a replacement worker would start with the certificate loaded before: %s", exc)


def _logs(config: Config) -> LogSetup:
    try:
        return LogSetup(config)
    except OSError as exc:  # names the file
        raise click.ClickException(str(exc)) from None


def _make_proxy(config: Config) -> ProxyServer:
    try:
        return ProxyServer(config)
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from exc


def _start(proxy: ProxyServer) -> None:
    try:
        proxy.start()
    except OSError as exc:
        where = exc.filename or f"{proxy.config.host[0]}:{proxy.config.port}"
        raise click.ClickException(f"cannot listen on {where}: {exc.strerror or exc}") from exc


def _announce(proxy: ProxyServer) -> None:
    local = _local_url(proxy)
    click.echo(f"tinyproxy-py listening on {' and '.join(proxy.urls)}; use it with: ", nl=False)
    # Both cases: curl and wget read only the lower-case http_proxy (a CGI program's
    # HTTP_PROXY can come from a request's Proxy header); some tools only the upper case.
    click.echo("export " + " ".join(f"{name}={local}" for name in PROXY_VARIABLES))


def _local_url(proxy: ProxyServer) -> str:
    """The URL a client on this machine uses, also when listening on every interface."""
    return proxy.url.replace("[::]", "[::1]").replace("0.0.0.0", "127.0.0.1")


def _serve_until_stopped(
    proxy: ProxyServer,
    events: queue.SimpleQueue[int],
    logs: LogSetup,
    reload: Callable[[], tuple[Config, list[str]]],
) -> None:
    while True:
        try:
            signum = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if signum in (signal.SIGINT, signal.SIGTERM):
            log.info("%s: stopping", signal.Signals(signum).name)
            return
        if signum == signal.SIGUSR2:
            proxy.drain()
            continue
        logs.reopen()
        _reload(proxy, reload)  # SIGHUP, or SIGUSR1 as tinyproxy users expect


def _reload(proxy: ProxyServer, reload: Callable[[], tuple[Config, list[str]]]) -> None:
    try:
        config, warnings = reload()
        for warning in warnings:
            log.warning("%s", warning)
        proxy.reload(config)
        logging.getLogger().setLevel(proxy.config.log_level.upper())
    except (ValueError, OSError) as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)


def _signal_events() -> queue.SimpleQueue[int]:
    """Signals become events for the main loop; a second stop signal exits at once.

    A SimpleQueue: a handler runs between two bytecodes of the main thread, maybe inside
    the queue's own get(), and only SimpleQueue's put is safe there (Queue's lock is not
    reentrant). At most 16 wait; more of the same add nothing."""
    events: queue.SimpleQueue[int] = queue.SimpleQueue()
    stopping = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM):
            if stopping.is_set():
                os._exit(128 + signum)
            stopping.set()
        if events.qsize() < 16:
            events.put(signum)

    for signum in PASSED_ON:
        signal.signal(signum, handler)
    # A --workers child starts with them blocked (app/workers.py): none is lost or fatal
    # before the handlers are in place.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PASSED_ON)
    return events


@contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    try:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise click.ClickException(f"cannot write the pid file {path}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


@main.command("check-config")
@click.argument("config_file", type=click.Path(dir_okay=False))
def check_config(config_file: str) -> None:
    """Validate a config file and print the effective configuration (file < environment)."""
    config, warnings = _load(config_file, {})
    proxy = _make_proxy(config)  # the policy checks (ACL rules, filters, exposure) run here
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for f in dataclasses.fields(Config):
        value = getattr(config, f.name)
        if f.name == "basic_auth":
            value = tuple(credential.partition(":")[0] + ":***" for credential in value)
        if f.name == "allow" and not value:
            networks = ", ".join(map(str, proxy.policy.allow))
            click.echo(f"allow = (none given) -> {networks}")
            continue
        if f.name == "connect_ports":  # what the policy makes of it
            auto = "auto -> " if value == AUTO_CONNECT_PORTS else ""
            value = auto + proxy.policy.describe_connect_ports()
        click.echo(f"{f.name} = {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "(none)"
    return "(none)" if value is None else str(value)


@main.command(context_settings={"ignore_unknown_options": False})
@lambda command: _options(command, RUN_DEFAULTS, SERVE_ONLY)
@click.argument("command", nargs=-1, required=True)
def run(config_file: str | None, command: tuple[str, ...], **settings: Any) -> None:
    """Run COMMAND with HTTP(S)_PROXY pointing at a fresh proxy; show what it fetched.

    Usage: tinyproxy-py run [OPTIONS] -- COMMAND [ARGS]... The proxy listens on a free
    loopback port, NO_PROXY is cleared for COMMAND so every request shows up, and the
    exit status is COMMAND's (127 if it is not found, 126 if it cannot be run, as in a shell).
    """
    explicit = {"port": 0, **_explicit(settings)}  # a free port whatever a file says
    config, warnings = _load(config_file, explicit, RUN_DEFAULTS)
    proxy = _make_proxy(config)
    logs = _logs(config)
    try:
        for warning in warnings:
            log.warning("%s", warning)
        _start(proxy)
        url = _local_url(proxy)
        env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
        env |= dict.fromkeys(PROXY_VARIABLES, url)
        try:
            status = subprocess.call(list(command), env=env)
        except OSError as exc:
            # As a shell says it: 127 for a command not found, 126 for one that cannot run.
            click.echo(f"tinyproxy-py: cannot run {command[0]}: {exc.strerror or exc}", err=True)
            status = 127 if isinstance(exc, FileNotFoundError) else 126
    finally:
        proxy.stop()
        logs.close()
    sys.exit(status)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the proxy listens.")
@click.option("--port", default=8888, show_default=True, type=int, help="The proxy's port.")
def env(host: str, port: int) -> None:
    """Print shell export lines that point clients at a running proxy: eval "$(tinyproxy-py env)"."""
    url = "http://" + join_host_port(host, port)
    for name in PROXY_VARIABLES:
        click.echo(f"export {name}={url}")


if __name__ == "__main__":
    main()
