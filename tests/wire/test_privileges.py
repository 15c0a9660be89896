"""User and Group: started as root, the proxy runs as the user once it listens, with the
log and pid files open (as tinyproxy does), and never serves on as root when it cannot.

Runs as root (CI does); elsewhere it is skipped with the reason shown."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..kit.origins import OriginServer
from ..kit.responses import get
from ..kit.waits import MUST_NOT_EXPIRE, wait_until
from ..support import address_of, client_env, proxy_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
NOBODY = pwd.getpwnam("nobody")
GROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the dropped user can write (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="tinyproxy-py-privileges-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of `pid`, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def test_serve_runs_as_the_user_once_listening(shared_dir: Path, origin: OriginServer) -> None:
    log_file, pid_file = shared_dir / "proxy.log", shared_dir / "proxy.pid"
    args = ("--user", "nobody", "--log-file", str(log_file), "--pid-file", str(pid_file))
    with proxy_process(*args) as (proc, url):
        assert ids(proc.pid) == (NOBODY.pw_uid, NOBODY.pw_gid)
        assert pid_file.read_text().strip() == str(proc.pid)  # written as root, before the drop
        assert get(address_of(url), origin.url("/bytes/10")).status == 200
        # A file made after the drop belongs to the user: the log reopened after rotation.
        log_file.rename(shared_dir / "proxy.log.1")
        proc.send_signal(signal.SIGHUP)
        assert wait_until(log_file.exists)
        assert (log_file.stat().st_uid, log_file.stat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(MUST_NOT_EXPIRE) == 0
    rotated = (shared_dir / "proxy.log.1").read_text()
    assert f"running as user nobody (uid {NOBODY.pw_uid}, gid {NOBODY.pw_gid})" in rotated
    assert not pid_file.exists()  # removed at the end, by the user, from a directory it may write


def test_workers_run_as_the_user_and_still_add_up_their_stats(origin: OriginServer) -> None:
    with proxy_process("--workers", "2", "--user", "nobody", "--group", GROUP) as (proc, url):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        assert wait_until(lambda: len(children.read_text().split()) == 2)
        for pid in map(int, children.read_text().split()):
            assert wait_until(lambda pid=pid: ids(pid) == (NOBODY.pw_uid, grp.getgrnam(GROUP).gr_gid))
        assert get(address_of(url), origin.url("/bytes/10")).status == 200
        stats = get(address_of(url), "http://tinyproxy-py.stats/json")
        assert stats.status == 200 and b'"workers"' in stats.body


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--user", "no-such-user-tinyproxy-py"), "no such user: no-such-user-tinyproxy-py"),
        (
            ("--user", "nobody", "--group", "no-such-group-tinyproxy-py"),
            "no such group: no-such-group-tinyproxy-py",
        ),
    ],
)
def test_a_user_it_cannot_become_stops_the_start_instead_of_serving_as_root(
    args: tuple[str, ...], reason: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tinyproxy_py", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=MUST_NOT_EXPIRE,
        env=client_env(),
    )
    assert result.returncode == 1
    assert reason in result.stderr
