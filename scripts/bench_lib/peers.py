"""The proxies a user would pick instead of tinyproxy-py: one table of how to find, start and name them.

Each peer is optional and skipped, with a note that says how to get it, when absent.
tinyproxy comes from the system (apt-get install tinyproxy); proxy.py and pproxy come
from a virtual environment of their own (`--peers-venv`), never the project's, which
`install()` makes. Each runs with its defaults as a plain forward proxy on 127.0.0.1,
logging warnings only; its version is read from the program itself.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import services

DEFAULT_VENV = Path("~/.cache/tinyproxy-py-bench/peers").expanduser()
VENV_PACKAGES = ("proxy.py", "pproxy")  # PyPI names
INSTALL_TIMEOUT = 900.0  # pip downloads and builds; a stuck index must not hang the bench


@dataclass(frozen=True)
class Peer:
    name: str  # the subject's name in the record and the JSON
    program: str  # its executable: on PATH, or in the peers' venv
    in_venv: bool
    argv: Callable[[str, Path, int], list[str]]  # (executable, workdir, port) -> command line
    version_flag: str
    one_process: bool = True  # False: worker processes serve, so one process's counts miss them
    kind: str = ""  # after the version in its column's header
    caveat: str = ""  # a footnote to its column


def _proxy_py_argv(executable: str, workdir: Path, port: int) -> list[str]:
    """No plugins beyond the built-in HTTP proxy; default (threadless) workers."""
    return [executable, "--hostname", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]


def _pproxy_argv(executable: str, workdir: Path, port: int) -> list[str]:
    """HTTP only (CONNECT and absolute-form), direct to the target; quiet without -v."""
    return [executable, "-l", f"http://127.0.0.1:{port}"]


PEERS = (
    Peer("tinyproxy", "tinyproxy", False, services.tinyproxy_argv, "-v", kind="(C)"),
    Peer(
        "proxy.py", "proxy", True, _proxy_py_argv, "--version", one_process=False,
        caveat="proxy.py serves from worker processes (its default: threadless, one per CPU)",
    ),
    Peer(
        "pproxy", "pproxy", True, _pproxy_argv, "--version",
        caveat="pproxy parses only the first request of a plain-HTTP connection, then relays bytes "
        "to that origin (rewriting a request line found at the start of a read): its keep-alive "
        "figures are a relay's, and a later request to another host would reach the first",
    ),
)  # fmt: skip
NAMES = tuple(peer.name for peer in PEERS)


@dataclass(frozen=True)
class Found:
    """A peer that is installed: where, and which version."""

    peer: Peer
    executable: str
    version: str

    @property
    def label(self) -> str:
        return " ".join(filter(None, (self.peer.name, self.version, self.peer.kind)))

    def start(self, workdir: Path) -> services.Proxy:
        return services.start_proxy(
            self.peer.name, functools.partial(self.peer.argv, self.executable), workdir
        )


def find(wanted: Sequence[str], venv: Path) -> tuple[list[Found], list[str]]:
    """The wanted peers that are installed, and a note for each that is not."""
    found: list[Found] = []
    notes: list[str] = []
    not_in_venv: list[str] = []
    for peer in (p for p in PEERS if p.name in wanted):
        executable = _executable(peer, venv)
        if executable is not None:
            found.append(Found(peer, executable, version(executable, peer.version_flag)))
        elif peer.in_venv:
            not_in_venv.append(peer.name)
        else:
            notes.append(f"{peer.name} skipped: not installed (apt-get install -y {peer.program})")
    if not_in_venv:
        where = "" if venv == DEFAULT_VENV else f" --peers-venv {shlex.quote(str(venv))}"
        notes.append(
            f"{', '.join(not_in_venv)} skipped: not in {venv}; install them with "
            f"`python3 scripts/bench.py --install-peers{where}`, which runs "
            + " && ".join(shlex.join(argv) for argv in install_commands(venv))
        )
    return found, notes


def _executable(peer: Peer, venv: Path) -> str | None:
    if not peer.in_venv:
        return shutil.which(peer.program)
    path = venv / "bin" / peer.program
    return str(path) if path.is_file() else None


def version(executable: str, flag: str) -> str:
    """The first dotted number the program prints for `flag` ("tinyproxy 1.11.1" -> 1.11.1)."""
    try:
        done = subprocess.run(
            [executable, flag], capture_output=True, text=True, timeout=60, env=services.clean_env()
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    match = re.search(r"\d+(?:\.\d+)+", done.stdout + done.stderr)
    return match.group(0) if match else "?"


def install_commands(venv: Path) -> list[list[str]]:
    return [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--upgrade", *VENV_PACKAGES],
    ]


def install(venv: Path) -> None:
    """Make the peers' venv and pip-install proxy.py and pproxy into it (pip's output to stderr)."""
    for argv in install_commands(venv):
        print(f"$ {shlex.join(argv)}", file=sys.stderr, flush=True)
        # Our own environment as it is: pip may need the *_proxy variables to reach PyPI.
        subprocess.run(argv, check=True, timeout=INSTALL_TIMEOUT, stdout=sys.stderr)
