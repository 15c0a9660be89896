"""Process-wide settings, which an embedding program decides for itself and so only the
command line makes: logging handlers (a log file reopened after rotation, access lines
bare), the thread stack size, malloc's mmap threshold and the open-files limit."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading

from ..settings.config import Config

log = logging.getLogger("tinyproxy_py")
THREAD_STACK_SIZE = 512 * 1024
M_MMAP_THRESHOLD = -3  # mallopt(3)


class LogSetup:
    """The root handler: stderr, or a log file that can be reopened after rotation."""

    FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

    def __init__(self, config: Config) -> None:
        self.handler: logging.Handler = (
            open_log(config.log_file, "log file") if config.log_file else logging.StreamHandler(sys.stderr)
        )
        # With --workers, each line says which worker wrote it.
        pid = " [%(process)d]" if config.workers > 1 else ""
        self.handler.setFormatter(
            logging.Formatter(self.FORMAT.replace(" %(levelname)s", pid + " %(levelname)s"))
        )
        root = logging.getLogger()
        root.addHandler(self.handler)
        root.setLevel(config.log_level.upper())
        # A record per request: skip what no format here shows (the caller's file and
        # line, found by walking the stack; thread and process names; the pid unless
        # --workers prints it). A third of an access line's cost.
        logging._srcfile = None
        logging.logThreads = logging.logMultiprocessing = False
        logging.logProcesses = config.workers > 1
        # Access lines carry their own timestamp (CLF needs the bare line): no prefix, in
        # their own file or the log's stream. At INFO, so log_level "warning" silences them.
        self.access = logging.getLogger("tinyproxy_py.access")
        try:
            self.bare: logging.Handler = (
                open_log(config.access_log, "access log")
                if config.access_log
                else SharedStreamHandler(self.handler)
            )
        except BaseException:
            root.removeHandler(self.handler)
            self.handler.close()
            raise
        self.access.addHandler(self.bare)
        self.access.propagate = False

    def reopen(self) -> None:
        """Open each log file anew (after rotation); one that cannot be opened (after a
        privilege drop, a directory only root may write) keeps the stream it has."""
        for handler in (self.handler, self.bare):
            if isinstance(handler, logging.FileHandler):
                try:
                    stream = handler._open()
                except OSError as exc:
                    log.error("cannot reopen %s, writing on where it was: %s", handler.baseFilename, exc)
                    continue
                with handler.lock:  # type: ignore[union-attr]
                    old, handler.stream = handler.stream, stream
                if old is not None:
                    old.close()

    def close(self) -> None:
        self.access.removeHandler(self.bare)
        self.access.propagate = True
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        self.bare.close()


def open_log(path: str, what: str) -> logging.FileHandler:
    """A file handler; OSError naming the file that cannot be opened."""
    try:
        return logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise OSError(f"cannot open the {what} {path}: {exc.strerror or exc}") from None


class SharedStreamHandler(logging.Handler):
    """Writes bare messages to another handler's current stream (so a reopen covers both)."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        stream = getattr(self.target, "stream", None)
        if stream is None:
            return
        with self.target.lock:  # type: ignore[union-attr]
            try:
                stream.write(record.getMessage() + "\n")
                stream.flush()
            except (OSError, ValueError):
                self.handleError(record)


def pin_malloc_threshold() -> None:
    """Keep glibc's mmap threshold at its default, 128 KiB, fixed: by default the first
    free of a larger block raises it for good, and from then on every handler thread's
    malloc arena keeps up to a megabyte it has freed (the proxy's own reads avoid large
    blocks, net/nowait.py; a library may not). No-op where malloc is not glibc's."""
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (ImportError, AttributeError, OSError):
        pass


def prepare_process(config: Config) -> None:
    """Process-wide settings an embedding program decides for itself, so only the CLI makes them.

    Small thread stacks keep max_clients threads cheap (the handler path is shallow); the
    open-files limit is raised toward the hard limit so max_tunnels can actually be reached;
    glibc's malloc keeps its mmap threshold at the default (`pin_malloc_threshold`).
    """
    threading.stack_size(THREAD_STACK_SIZE)
    pin_malloc_threshold()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    others = 2 * config.max_clients + config.pool_hosts * config.pool_idle_per_host
    needed = others + 2 * config.max_tunnels
    log.info(
        "limits: max_clients=%d max_tunnels=%d open files=%d (the limits need up to %d) thread stack=%d KiB",
        config.max_clients,
        config.max_tunnels,
        soft,
        needed,
        THREAD_STACK_SIZE // 1024,
    )
    if needed > soft:
        fits = (soft - others) // 2  # two descriptors per tunnel
        log.warning(
            "the open-files limit (%d) is below what the limits need (%d): %s, or raise the limit to "
            "%d (ulimit -n, or LimitNOFILE= in a systemd unit)",
            soft,
            needed,
            f"lower --max-tunnels to {fits}" if fits > 0 else "lower --max-clients and --max-tunnels",
            needed,
        )


def account(user: str | None, group: str | None) -> tuple[str, int, int]:
    """(name, uid, gid) of `user` and `group` (the user's own by default; no user: root's).
    ValueError naming one that does not exist."""
    import grp  # on Unix only, and only here
    import pwd

    try:
        entry = pwd.getpwnam(user) if user else pwd.getpwuid(0)
    except KeyError:
        raise ValueError(f"no such user: {user}") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError:
        raise ValueError(f"no such group: {group}") from None
    return entry.pw_name, entry.pw_uid, gid


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become `user` and `group` for good, once the ports are bound and the log and pid
    files open, as tinyproxy does. Not started as root: a log line, nothing else
    (tinyproxy's behaviour too). Raises OSError or ValueError when it cannot: the caller
    stops rather than serve as root."""
    if user is None and group is None:
        return
    if os.geteuid() != 0:
        log.info("not started as root: User/Group (%s:%s) ignored", user or "-", group or "-")
        return
    name, uid, gid = account(user, group)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    log.info("running as user %s (uid %d, gid %d)", name, uid, gid)
