"""The processes under test, on loopback: an nginx origin, tinyproxy-py and its peers.

Each runs in the foreground as our child, in its own session, from a temporary prefix,
on ports picked by binding port 0. Stopping sends SIGTERM to the PID we started, then
SIGKILL to its process group if it, or a process it started (nginx's workers, proxy.py's),
has not gone within a deadline.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.kit.servers import free_port
from tests.kit.waits import wait_until

from . import procinfo

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
START_TIMEOUT = 20.0  # a child must accept connections within this
STOP_TIMEOUT = 10.0  # ... and exit within this after SIGTERM
# Paths on the origin and their sizes: small, medium, large and bulk bodies.
FILES = {"/100b": 100, "/16k": 16 * 1024, "/1m": MiB, "/256m": 256 * MiB}
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        return True
    except OSError:
        return False


def raise_fd_limit(needed: int) -> None:
    """Idle tunnels need ~2 fds each in the proxy and 1 here; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def clean_env() -> dict[str, str]:
    """Our environment without *_proxy variables, which would route a child's traffic elsewhere."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV}


class Child:
    """A foreground child process with its output in a log file; stop() ends it by PID."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        env = clean_env()
        if cwd is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH", "")]))
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, env=env, start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_listening(self, port: int) -> None:
        if not wait_until(lambda: accepts(port) or self.process.poll() is not None, START_TIMEOUT, 0.05):
            self.stop()
            raise RuntimeError(f"{self.name} did not listen on {port} within {START_TIMEOUT:g} s")
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM; SIGKILL for its whole group if the leader lingers or leaves processes behind.

        The leader is reaped last: until then its PID, and so its process group ID, cannot
        be reused, so the group we signal is the one we started (nginx's workers, proxy.py's,
        --workers). Popen.send_signal would poll, which reaps: os.kill does not.
        """
        if self.process.returncode is not None:
            return  # reaped already
        os.kill(self.pid, signal.SIGTERM)
        gone = wait_until(self._exited, STOP_TIMEOUT, 0.02) and wait_until(
            lambda: not procinfo.group_members(self.pid, besides=self.pid), STOP_TIMEOUT, 0.05
        )
        if not gone:
            os.killpg(self.pid, signal.SIGKILL)
            wait_until(lambda: not procinfo.group_members(self.pid, besides=self.pid), STOP_TIMEOUT, 0.05)
        self.process.wait(STOP_TIMEOUT)

    def _exited(self) -> bool:
        """Whether the leader has exited, without reaping it (WNOWAIT)."""
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


# --- the origin ---

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        root {prefix}/www;
    }}
}}
"""


@dataclass
class Origin:
    prefix: Path
    http_port: int
    https_port: int
    child: Child
    cafile: Path | None  # the self-signed certificate clients trust; None: no TLS

    @property
    def pid(self) -> int:
        return self.child.pid


@contextlib.contextmanager
def nginx_origin(prefix: Path) -> Iterator[Origin]:
    """nginx serving FILES over HTTP and HTTPS from `prefix` (one worker).

    When we are root, nginx's workers run as nobody: `prefix`'s parent must let them through.
    """
    for sub in ("www", "tmp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    _write_files(prefix / "www")
    cafile = make_certificate(prefix)
    http_port, https_port = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, http_port=http_port, https_port=https_port))
    # Workers drop to an unprivileged user when we are root: they must be able to read
    # the files (the caller makes sure they can reach `prefix`).
    for path in (prefix, prefix / "www"):
        path.chmod(0o755)
    argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    child = Child("nginx", argv, prefix / "nginx.out")
    try:
        child.wait_listening(http_port)
        yield Origin(prefix, http_port, https_port, child, cafile)
    finally:
        child.stop()


def _write_files(www: Path) -> None:
    block = os.urandom(MiB)  # incompressible, and written out: no sparse-file shortcuts
    for path, size in FILES.items():
        with (www / path.lstrip("/")).open("wb") as out:
            for offset in range(0, size, MiB):
                out.write(block[: min(MiB, size - offset)])
            out.flush()
        (www / path.lstrip("/")).chmod(0o644)


def make_certificate(prefix: Path) -> Path | None:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (cert.pem, key.pem); None if no tool.

    P-256 rather than RSA-2048: an RSA signature costs the origin about a millisecond
    per handshake, which would make every TLS figure measure nginx instead of the proxy.
    """
    cert, key = prefix / "cert.pem", prefix / "key.pem"
    if shutil.which("openssl"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    elif not _trustme_certificate(cert, key):
        return None
    return cert  # the key may stay private: nginx's master reads it before dropping privileges


def _trustme_certificate(cert: Path, key: Path) -> bool:
    try:
        import trustme  # the project's test extra; only when openssl is missing
    except ImportError:
        return False
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(str(key))
    with cert.open("wb") as out:
        for blob in (*leaf.cert_chain_pems, ca.cert_pem):
            out.write(blob.bytes())
    return True


# --- the proxies ---


@dataclass
class Proxy:
    name: str
    port: int
    child: Child

    @property
    def pid(self) -> int:
        return self.child.pid


def start_tinyproxy_py(
    workdir: Path, python: str, extra: Sequence[str] = (), name: str = "", source: Path = REPO
) -> Proxy:
    """`python -m tinyproxy_py serve` from `source` (this checkout): CONNECT to any port, quiet log.

    The child runs in `source` with it on PYTHONPATH, so it imports that tree's tinyproxy_py
    (ahead of the venv's editable install of this checkout).
    """
    port = free_port()
    argv = [python, "-m", "tinyproxy_py", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--connect-port", "0", "--log-level", "warning", *extra]  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    child = Child(name or "tinyproxy-py", argv, workdir / "tinyproxy-py.log", cwd=source)
    child.wait_listening(port)
    return Proxy(name or "tinyproxy-py", port, child)


TINYPROXY_CONF = """\
# No User/Group: we may be root, and a foreground child needs no privilege change.
# No ConnectPort lines: tinyproxy 1.11 then allows CONNECT to every port.
Port {port}
Listen 127.0.0.1
Allow 127.0.0.1
MaxClients 4096
Timeout 600
LogLevel Error
LogFile "{workdir}/tinyproxy.log"
PidFile "{workdir}/tinyproxy.pid"
"""


def start_proxy(name: str, argv: Callable[[Path, int], list[str]], workdir: Path) -> Proxy:
    """Any proxy in the foreground: `argv(workdir, port)` is its command line for a free port."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    child = Child(name, argv(workdir, port), workdir / "proxy.out")
    child.wait_listening(port)
    return Proxy(name, port, child)


def tinyproxy_argv(executable: str, workdir: Path, port: int) -> list[str]:
    """The C tinyproxy (Debian package) in the foreground, with a config of our own."""
    conf = workdir / "tinyproxy.conf"
    conf.write_text(TINYPROXY_CONF.format(port=port, workdir=workdir))
    return [executable, "-d", "-c", str(conf)]


def tinyproxy_py_has_workers(python: str) -> bool:
    """Whether this checkout's `serve` knows --workers (issue 9 names a --workers 2 row)."""
    done = subprocess.run(
        [python, "-m", "tinyproxy_py", "serve", "--help"],
        cwd=REPO, env={**clean_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return "--workers" in done.stdout
