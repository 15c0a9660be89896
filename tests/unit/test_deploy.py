"""The deployment examples cannot drift (deploy/, docs/deploy.md).

docs/deploy.md shows every deploy/ file as it is; every tinyproxy-py command line in
them passes the real CLI; the unit, haproxy.cfg and nginx-stream.conf pass their own
checkers when those are installed; the Kubernetes probes ask the proxy's probe paths on
the container's port; every stop timeout covers the drain delay and the grace. No YAML
or Dockerfile library: the files are read by strict line matching, so a file rewritten
in another shape fails here instead of going unchecked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tinyproxy_py.settings.conffile import env_variable
from tinyproxy_py.settings.config import FIELD_TYPES, Config, flag
from tinyproxy_py.settings.ports import AUTO_CONNECT_PORTS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "deploy.md"
TOOL_TIMEOUT = 60.0  # a checker or the CLI starting in a subprocess; generous for slow CI
INTRO = re.compile(r"^\[`(deploy/[^`]+)`\]\(\.\./(deploy/[^)]+)\)")
SETTINGS = {flag(f.name): f.name for f in dataclasses.fields(Config) if f.metadata["cli"]}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Config)}


def read(name: str) -> str:
    return (DEPLOY / name).read_text()


def only(pattern: str, text: str) -> re.Match[str]:
    """The one line of `text` that matches `pattern` (anchored); fails on none or several."""
    found = list(re.finditer(pattern, text, re.M))
    assert len(found) == 1, f"{len(found)} lines match {pattern!r}"
    return found[0]


# docs/deploy.md: a paragraph that starts with a link to a deploy/ file introduces the
# fenced block right after it, which must be that file, byte for byte.


def shown_files() -> list[tuple[str, str]]:
    """(deploy/ path, the text of its block) for each introduced block, in order."""
    lines = DOC.read_text().split("\n")
    shown = []
    for number, line in enumerate(lines):
        intro = INTRO.match(line)
        if not intro:
            continue
        assert intro[1] == intro[2], f"docs/deploy.md:{number + 1}: the link goes elsewhere"
        start = lines.index("", number) + 1  # the paragraph ends at a blank line
        assert lines[start].startswith("```"), f"docs/deploy.md:{start + 1}: no block after {intro[1]}"
        end = lines.index("```", start + 1)
        shown.append((intro[1], "\n".join(lines[start + 1 : end]) + "\n"))
    return shown


def test_the_docs_show_every_deploy_file_once() -> None:
    named = [path for path, _ in shown_files()]
    assert sorted(named) == sorted(f"deploy/{p.name}" for p in DEPLOY.iterdir()), "shown once each"


@pytest.mark.parametrize(("path", "text"), shown_files(), ids=[path for path, _ in shown_files()])
def test_a_shown_file_equals_the_deploy_file(path: str, text: str) -> None:
    assert text == (ROOT / path).read_text(), f"docs/deploy.md differs from {path}"


# Command lines, read from each file as it states them.


@dataclass
class Command:
    where: str
    options: list[str]  # after `tinyproxy-py serve`
    env: dict[str, str]  # the environment it runs in (the image's ENV lines)


def containerfile() -> list[str]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", "", read("Containerfile"))
    return [line for line in joined.split("\n") if line.strip() and not line.startswith("#")]


def image_env() -> dict[str, str]:
    env = {}
    for line in containerfile():
        if line.startswith("ENV "):
            [assignment] = shlex.split(line[4:])  # one KEY=VALUE per ENV line
            key, equals, value = assignment.partition("=")
            assert equals, line
            env[key] = value
    return env


def exec_form(instruction: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT or CMD; [] when the file has none."""
    lines = [line for line in containerfile() if line.startswith(instruction + " ")]
    assert len(lines) <= 1, f"several {instruction} lines"
    return json.loads(lines[0][len(instruction) + 1 :]) if lines else []


def systemd_command() -> Command:
    argv = shlex.split(only(r"^ExecStart=(.*)$", read("tinyproxy-py.service"))[1])
    assert argv[0].endswith("/tinyproxy-py") and argv[1] == "serve", argv
    return Command("tinyproxy-py.service ExecStart", argv[2:], {})


def container_command() -> Command:
    assert exec_form("ENTRYPOINT") == ["tinyproxy-py", "serve"]
    return Command("Containerfile ENTRYPOINT, CMD and ENV", exec_form("CMD"), image_env())


def kubernetes_command() -> Command:
    hook = only(r"^ +command: (.*)$", read("kubernetes.yaml"))[1]  # a second would replace ENTRYPOINT
    assert "kill -USR2 1" in hook, "the one command: is the preStop hook's"
    args = json.loads(only(r"^ +args: (\[.*\])$", read("kubernetes.yaml"))[1])
    return Command("kubernetes.yaml args, after the image's ENTRYPOINT", args, image_env())


def commented_command(name: str) -> Command:
    """The instances' command line, as a comment of a balancer's config."""
    argv = shlex.split(only(r"^#\s+(tinyproxy-py serve .*)$", read(name))[1])
    return Command(f"{name}, the instances", argv[2:], {})


COMMANDS: dict[str, Callable[[], Command]] = {
    "systemd": systemd_command,
    "container": container_command,
    "kubernetes": kubernetes_command,
    "haproxy": lambda: commented_command("haproxy.cfg"),
    "nginx": lambda: commented_command("nginx-stream.conf"),
}


def test_every_command_line_in_deploy_is_checked() -> None:
    """Each line that starts the proxy is one of the COMMANDS read above."""
    starts = [
        f"{path.name}: {line.strip()}"
        for path in sorted(DEPLOY.iterdir())
        for line in path.read_text().split("\n")
        if re.search(r"tinyproxy-py\"?,? \"?serve\b", line)
    ]
    assert len(starts) == 4, starts  # the unit, the image's ENTRYPOINT, two balancer comments


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m tinyproxy_py ARGS` in a child, with none of this process's TINYPROXY_PY_*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TINYPROXY_PY_")}
    return subprocess.run(
        [sys.executable, "-m", "tinyproxy_py", *args],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        env={**clean, **env},
        cwd=ROOT,
    )


def as_environment(options: list[str]) -> dict[str, str]:
    """`--name VALUE` options as TINYPROXY_PY_NAME variables (repeated ones joined by commas)."""
    values: dict[str, list[str]] = {}
    words = iter(options)
    for option in words:
        assert option in SETTINGS, f"{option} is not a setting"
        assert FIELD_TYPES[SETTINGS[option]] != "bool", f"{option}: a switch, not handled here"
        values.setdefault(SETTINGS[option], []).append(next(words))
    return {env_variable(name): ",".join(given) for name, given in values.items()}


def without_config(options: list[str]) -> tuple[list[str], Path | None]:
    """The options minus `--config PATH`, and the deploy/ file installed at PATH."""
    if "--config" not in options:
        return options, None
    at = options.index("--config")
    installed = Path(options[at + 1])
    assert installed.is_absolute(), installed
    return options[:at] + options[at + 2 :], DEPLOY / installed.name


@pytest.mark.parametrize("source", COMMANDS)
def test_a_command_line_is_accepted_by_the_real_cli(source: str, tmp_path: Path) -> None:
    """`serve OPTIONS --help` parses the options (names, values) and stops there; then
    `check-config` builds the same configuration, options passed as environment variables
    (they win over the file, as on the command line), and runs the proxy's own checks.

    Without a config file, check-config gets one that only restores the command line's
    CONNECT ports (a file without ConnectPort allows every port, and warns)."""
    command = COMMANDS[source]()
    options, config_file = without_config(command.options)
    given = [*options, "--config", str(config_file)] if config_file else options
    parsed = run_cli("serve", *given, "--help", env=command.env)
    assert parsed.returncode == 0, f"{command.where}: {parsed.stderr}"
    if config_file is None:
        config_file = tmp_path / "none.conf"
        ports = ["auto"] if DEFAULTS["connect_ports"] == AUTO_CONNECT_PORTS else DEFAULTS["connect_ports"]
        config_file.write_text("".join(f"ConnectPort {port}\n" for port in ports))
    checked = run_cli("check-config", str(config_file), env={**command.env, **as_environment(options)})
    assert checked.returncode == 0, f"{command.where}: {checked.stderr}"
    assert checked.stderr == "", f"{command.where}: warnings: {checked.stderr}"
    for name in map(SETTINGS.__getitem__, options[::2]):  # an unknown variable is ignored
        assert re.search(rf"^{name} = ", checked.stdout, re.M), f"{name} missing from check-config"


# Stop budgets: whoever sends SIGKILL waits longer than drain delay plus grace.


def seconds(option: str, options: list[str]) -> float:
    """An option's value on a command line, else the setting's default."""
    if option in options:
        return float(options[options.index(option) + 1])
    return float(DEFAULTS[SETTINGS[option]])


def test_systemd_waits_longer_than_drain_delay_and_grace() -> None:
    timeout = float(only(r"^TimeoutStopSec=(\d+)s$", read("tinyproxy-py.service"))[1])
    conf = read("tinyproxy-py.conf")
    drain = float(only(r"^DrainDelay (\S+)$", conf)[1])
    grace = float(only(r"^ShutdownGrace (\S+)$", conf)[1])
    assert drain > 0 and timeout > drain + grace


def test_kubernetes_waits_longer_than_pre_stop_drain_delay_and_grace() -> None:
    manifest = read("kubernetes.yaml")
    hook = json.loads(only(r"^ +command: (\[.*\])$", manifest)[1])
    assert hook[:2] == ["/bin/sh", "-c"] and hook[2].startswith("kill -USR2 1; sleep "), hook
    sleep = float(hook[2].rsplit(" ", 1)[1])
    options = kubernetes_command().options
    drain, grace = seconds("--drain-delay", options), seconds("--shutdown-grace", options)
    period = float(only(r"^ +terminationGracePeriodSeconds: (\d+)$", manifest)[1])
    assert drain > 0 and period > sleep + drain + grace  # as if the drain began at SIGTERM


# Kubernetes and the image: probes and ports agree with the proxy.


def probe(manifest: str, name: str) -> dict[str, str]:
    """The `key: value` lines of a probe's block (indented deeper than its name)."""
    lines = manifest.split("\n")
    start = lines.index(only(rf"^( +){name}:$", manifest)[0])
    indent = len(lines[start]) - len(lines[start].lstrip())
    block: dict[str, str] = {}
    for line in lines[start + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        key, colon, value = line.strip().partition(": ")
        if colon:
            assert key not in block, f"{name}: {key} twice"
            block[key] = value
    return block


def test_the_kubernetes_probes_ask_readyz_and_healthz_on_the_container_port() -> None:
    manifest = read("kubernetes.yaml")
    port = only(r"^ +containerPort: (\d+)$", manifest)[1]
    assert probe(manifest, "readinessProbe")["path"] == "/readyz"
    assert probe(manifest, "livenessProbe")["path"] == "/healthz"
    assert probe(manifest, "readinessProbe")["port"] == probe(manifest, "livenessProbe")["port"] == port
    assert only(r"^ +targetPort: (\d+)$", manifest)[1] == port
    assert only(r"^EXPOSE (\d+)$", read("Containerfile"))[1] == port == str(DEFAULTS["port"])


def test_the_image_healthcheck_asks_healthz_on_the_exposed_port() -> None:
    [check] = [line for line in containerfile() if line.startswith("HEALTHCHECK ")]
    code = json.loads(check.split(" CMD ", 1)[1])
    assert code[:2] == ["python", "-c"], code
    assert "HTTPConnection('127.0.0.1', 8888," in code[2] and "'/healthz'" in code[2]
    assert "127.0.0.1" in image_env()["TINYPROXY_PY_ALLOW"].split(), "the check's client is allowed"


# The other tools' own checks, when they are installed.


def tool(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return found


def test_haproxy_accepts_haproxy_cfg() -> None:
    checked = subprocess.run(
        [tool("haproxy", "haproxy"), "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0 and "WARNING" not in output and "ALERT" not in output, output


def nginx_main_config(root: Path, body: str) -> Path:
    """A main nginx.conf around a stream {} block, in `root`; skips without the stream module."""
    binary = tool("nginx", "nginx")
    built = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=TOOL_TIMEOUT).stderr
    load = ""
    if "--with-stream=dynamic" in built:
        modules = re.search(r"--modules-path=(\S+)", built)
        candidates = [Path(modules[1])] if modules else []
        candidates += [Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules")]
        found = [d / "ngx_stream_module.so" for d in candidates if (d / "ngx_stream_module.so").exists()]
        if not found:
            pytest.skip("nginx's stream module is not installed (apt-get install libnginx-mod-stream)")
        load = f"load_module {found[0]};\n"
    elif "--with-stream" not in built:
        pytest.skip("this nginx is built without the stream module")
    path = root / "nginx.conf"
    path.write_text(
        f"{load}daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;\n"
        f"events {{}}\n{body}"
    )
    return path


def nginx_command(config: Path) -> list[str]:
    root = config.parent
    return [tool("nginx", "nginx"), "-p", str(root), "-e", str(root / "error.log"), "-c", str(config)]


def test_nginx_accepts_nginx_stream_conf(tmp_path: Path) -> None:
    config = nginx_main_config(tmp_path, read("nginx-stream.conf"))
    checked = subprocess.run(
        [*nginx_command(config), "-t"], capture_output=True, text=True, timeout=TOOL_TIMEOUT
    )
    assert checked.returncode == 0 and "[warn]" not in checked.stderr, checked.stderr


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """With ExecStart pointing at this environment's tinyproxy-py (the one thing that
    cannot be where the unit says); `verify` exits 0 even for an unknown key, so any
    output fails."""
    verify = tool("systemd-analyze", "systemd")
    binary = Path(sys.executable).parent / "tinyproxy-py"
    if not binary.exists():
        pytest.skip(f"no tinyproxy-py script beside {sys.executable} (pip install -e .)")
    unit = read("tinyproxy-py.service")
    installed = only(r"^ExecStart=(\S+) ", unit)[1]
    (tmp_path / "tinyproxy-py.service").write_text(unit.replace(installed, str(binary)))
    checked = subprocess.run(
        [verify, "verify", str(tmp_path / "tinyproxy-py.service")],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
