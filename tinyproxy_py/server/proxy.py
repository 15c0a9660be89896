"""ProxyServer: the listening socket, bounded client threads, start and stop.

A TCPServer per listening address accepts; each client connection is served by one
handler thread at a time, at most `max_clients` at once, from a set of reused threads
(net/threads.py) shared by every listener. Beyond `max_clients` a client gets a
canned 503 on the accepting thread and is closed at once instead of waiting in a queue.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from ..net.clientconn import ClientConnection
from ..net.lookups import Lookups
from ..observe.accesslog import AccessRecord, access_log, emit
from ..observe.stats import Stats
from ..observe.statspage import Snapshot
from ..origin.pool import OriginPool
from ..settings.config import Config
from ..settings.faults import Faults, Rule
from ..settings.routes import join_host_port
from ..tunnel.hub import SHUTDOWN_IDLE, TunnelHub
from ..tunnel.state import ClosedTunnel
from ..version import __version__
from .listener import Clients, Listener, bind
from .runtime import Runtime

if TYPE_CHECKING:
    from ..net.dialer import Resolver
    from ..origin.exchange import Rewrite
    from ..settings.policy import Policy
    from ..settings.routes import Routes
    from .tls import ServerTLS

log = logging.getLogger(__name__)


class Siblings(Protocol):
    """The workers of `serve --workers` (app.workers.SharedStats), for pages that add them up.

    Totals never go down between scrapes, whichever worker answers: each publishes its
    share before adding up, and every share read was published, so each worker's part
    only grows (Prometheus reads a decrease as a restart).
    """

    def publish(self) -> Snapshot:
        """This worker's snapshot, taken now and written where the others read it."""

    def read_others(self) -> list[Snapshot]: ...


class ProxyServer:
    """A running proxy. Use as a context manager, or call start() and stop().

    >>> with ProxyServer(Config(port=0)) as proxy:
    ...     proxy.url  # 'http://127.0.0.1:43121'
    """

    def __init__(
        self,
        config: Config | None = None,
        on_access: Callable[[AccessRecord], None] | None = None,
        resolver: Resolver | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        """Check the configuration (ValueError names what is wrong); nothing is opened yet.

        `on_access`, if given, is called with each request's and tunnel's AccessRecord
        (from the thread that served it: keep it quick and thread-safe). `resolver`
        replaces getaddrinfo for every name the proxy looks up: (host, port) → a list of
        (family, sockaddr); tests use one that never asks DNS. An IP address literal is
        dialled as it is, without asking it. `tls`: the TLS listeners' certificate, loaded
        already (by default it is loaded from `config.tls_cert`, if set).
        """
        self._resolver = resolver
        self.on_access = on_access
        # Set by `serve --workers`: this worker's share, published, and the others'.
        self.siblings: Siblings | None = None
        # A token unique to this instance, carried in our Via member: seeing it come
        # back in a request means the request looped through us.
        self._token = os.urandom(4).hex()  # not secrets: it loads hashlib (libcrypto) for nothing
        self.stats = Stats()
        # Fault rules (docs/faults.md): those of the config, and any added at run time.
        self.faults = Faults(on_fire=self._fault_fired)
        config = config or Config()
        self.faults.replace_config_rules(config.faults)
        self._fault_texts = config.faults
        # Each client waits for one lookup at a time; lookups given up on count too.
        self._lookups = Lookups(config.max_clients, self.stats)
        self.runtime = Runtime.compile(config, self._token, self.stats, resolver, self._lookups)
        self.tls = tls  # the TLS listeners' certificate, if there are some
        if config.tls_cert is not None and tls is None:
            from .tls import ServerTLS  # ssl is loaded for TLS listeners only

            self.tls = ServerTLS(config.tls_cert, config.tls_key)
        self._listeners: list[tuple[Listener, threading.Thread]] = []
        self._clients = Clients(self.config.max_clients, self.stats)
        self.addresses: tuple[tuple[str, int], ...] = ()  # kept after stop: draining handlers read it
        self.urls: tuple[str, ...] = ()  # of the addresses, https:// for a TLS listener's
        self.draining = threading.Event()  # set by drain(): /readyz 503, no more keep-alive
        self._drain_started: float | None = None
        self.cut_off = threading.Event()  # set when the grace period is over

    # The running settings, read through the one reference a reload replaces.
    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def rewrite(self) -> Rewrite:
        return self.runtime.rewrite

    @property
    def policy(self) -> Policy:
        return self.runtime.policy

    @property
    def routes(self) -> Routes:
        return self.runtime.routes

    @property
    def pseudonym(self) -> str:
        """Our Via member, e.g. 'tinyproxy-py (3f9a0c1e)': unique to this instance."""
        return self.rewrite.pseudonym

    # Settings that only a restart can change: the listener, the thread bound, the pool.
    RESTART_FIELDS = (
        "host",
        "port",
        "tls_port",
        "max_clients",
        "connect_timeout",
        "read_timeout",
        "pool_hosts",
        "pool_idle_per_host",
        "max_conns_per_host",
        "ca_bundle",
        "log_file",
        "access_log",
        "pid_file",
    )

    def reload(self, config: Config) -> list[str]:
        """Apply `config` to the running proxy without dropping a connection.

        ACL, auth, filters, ports, headers, the client/tunnel timeouts and a TLS listener's
        certificate (reread) apply to what comes next; RESTART_FIELDS keep their running
        values (returned, and logged). A certificate that does not load is logged and
        the running one stays; the rest applies.
        Raises ValueError or OSError, leaving the running configuration untouched.
        """
        # A TLS listener comes and goes with a restart only; its certificate files are reread.
        tls_fixed = ("tls_cert", "tls_key") if self.tls is None or config.tls_cert is None else ()
        restart_only = self.RESTART_FIELDS + tls_fixed
        kept = [name for name in restart_only if getattr(config, name) != getattr(self.config, name)]
        config = config.replace(**{name: getattr(self.config, name) for name in kept})
        runtime = Runtime.compile(config, self._token, self.stats, self._resolver, self._lookups)
        if self.tls is not None and config.tls_cert is not None:  # reread, renamed or not
            try:
                self.tls.reload(config.tls_cert, config.tls_key)
            except OSError as exc:  # a renewal gone wrong must not hold back the rest
                log.error("TLS certificate not reloaded, the running one stays: %s", exc)
        self.hub.config = self.pool.config = config
        self.runtime = runtime  # one assignment: a request sees all of it or none
        if config.faults != self._fault_texts:  # unchanged rules keep their counts
            self.faults.replace_config_rules(config.faults)
            self._fault_texts = config.faults
            log.info("fault rules of the configuration now: %s", "; ".join(config.faults) or "none")
        log.info(
            "configuration reloaded%s", f"; a restart is needed to change {', '.join(kept)}" if kept else ""
        )
        return kept

    def _fault_fired(self, rule: Rule, exchange: str, count: int) -> None:
        """Every fault applied is counted and logged, so a test can tell it fired."""
        self.stats.count(f"faults.{rule.kind}")
        log.info("fault %s (rule %d, #%d) applied to %s", rule.kind, rule.id, count, exchange)

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """Where the proxy listens (the first address, with several), or listened once stopped."""
        if not self.addresses:
            raise RuntimeError("the proxy has not been started")
        return self.addresses[0]

    @property
    def url(self) -> str:
        """The first listener's URL: https:// if it is a TLS one."""
        if not self.urls:
            raise RuntimeError("the proxy has not been started")
        return self.urls[0]

    @property
    def tls_url(self) -> str:
        """The first TLS listener's URL (RuntimeError if there is none)."""
        tls_urls = [url for url in self.urls if url.startswith("https:")]
        if not tls_urls:
            raise RuntimeError("the proxy has no TLS listener (see --tls-cert)")
        return tls_urls[0]

    def start(self) -> None:
        """Bind every address, then serve from background threads. Returns once connections
        are accepted. With port 0, the first address picks the port and the others share it.
        An address that cannot be bound raises OSError (its `filename` names it), and
        nothing stays open. A stopped proxy does not start again (RuntimeError): its
        drain and its handler threads are over; make a new ProxyServer."""
        if self.cut_off.is_set():
            raise RuntimeError("this ProxyServer was stopped; make a new one to serve again")
        self.pool = OriginPool(self.config, self.stats)
        self.hub = TunnelHub(self.config, self.stats, on_close=self._tunnel_closed)
        try:
            listeners = self._bind_all()
        except BaseException:
            self.hub.close()
            raise
        self.addresses = tuple((str(ls.server_address[0]), int(ls.server_address[1])) for ls in listeners)
        self.urls = tuple(
            _url(address, ls.tls is not None) for address, ls in zip(self.addresses, listeners, strict=True)
        )
        for rule in self.faults.rules():  # logged here: a command line's log is set up by now
            log.info("fault rule %d in force: %s", rule.id, rule.text)
        self.hub.start()
        self.pool.start()
        for listener in listeners:
            thread = threading.Thread(
                target=listener.serve_forever,
                kwargs={"poll_interval": 0.25},
                name="tinyproxy-py-accept",
                daemon=True,
            )
            thread.start()
            self._listeners.append((listener, thread))
        log.info(
            "listening on %s; CONNECT may reach %s",
            ", ".join(self.urls),
            self.policy.describe_connect_ports(),
        )

    def _bind_all(self, tries: int = 5) -> list[Listener]:
        """A listener per address and port (the clear one, the TLS one); with port 0 the
        first address picks it for the others, and if one of them has that port taken
        already, the whole set tries again."""
        for attempt in range(tries):
            listeners: list[Listener] = []
            try:
                for port, tls in self._ports():
                    first = len(listeners)
                    for host in self.config.host:
                        listeners.append(bind(host, port, self, self.config, self._clients, tls))
                        port = listeners[first].server_address[1]
                return listeners
            except OSError as exc:
                for listener in listeners:
                    listener.server_close()
                chosen = 0 in (self.config.port, self.config.tls_port) and len(listeners) > 0
                if not (chosen and exc.errno == errno.EADDRINUSE and attempt < tries - 1):
                    raise
        raise AssertionError("unreachable")

    def _ports(self) -> list[tuple[int, ServerTLS | None]]:
        """The ports to listen on, each with its TLS (None: clear text)."""
        if self.config.tls_port is None:
            return [(self.config.port, self.tls)]  # with a certificate, --port speaks TLS
        return [(self.config.port, None), (self.config.tls_port, self.tls)]

    def drain(self) -> None:
        """Stop being ready: /readyz answers 503 and connections close after their current
        response, while the listener still accepts (a balancer needs a check or two to
        notice). stop() then keeps accepting until `drain_delay` has passed since this call."""
        if self._drain_started is None:
            self._drain_started = time.monotonic()
            self.draining.set()
            log.info("draining: /readyz answers 503")

    def stop(self) -> None:
        """Drain, stop accepting once `drain_delay` is over, let requests in flight and busy
        tunnels (and first requests on connections just accepted) finish within the grace
        period, then close everything."""
        listeners, self._listeners = self._listeners, []
        if not listeners:
            return
        self.drain()
        assert self._drain_started is not None
        accepting = self._drain_started + self.config.drain_delay - time.monotonic()
        if accepting > 0:
            log.info("still accepting for %.1f s of drain delay", accepting)
            time.sleep(accepting)
        for listener, thread in listeners:
            listener.shutdown()
            listener.server_close()
            thread.join(timeout=5.0)  # serve_forever has returned: shutdown() waited for it
        self.hub.close_idle_from_now()
        grace_ends = time.monotonic() + self.config.shutdown_grace
        # A connection accepted just before the listener closed may not have asked yet: a
        # moment for its first request (one that never comes, a browser's preconnect,
        # costs this; one already running is waited for with the requests in flight).
        self._wait_until_zero(("opening_clients",), min(SHUTDOWN_IDLE, self.config.shutdown_grace))
        if not self._wait_until_zero(("requests_in_flight", "tunnels"), grace_ends - time.monotonic()):
            log.warning(
                "grace period over: aborting %d requests in flight and %d tunnels",
                self.stats.gauge("requests_in_flight"),
                self.stats.gauge("tunnels"),
            )
        self.cut_off.set()
        # Requests still waiting for an origin fail fast; each answers 503 (cause
        # shutdown) unless a response had begun, before the client sockets are cut.
        self.pool.close()
        self._wait_until_zero(("requests_in_flight",), SHUTDOWN_IDLE)
        self._clients.abort()
        self.hub.close()
        self._wait_until_zero(("clients",), 5.0)
        self._clients.threads.stop(timeout=5.0)
        if not self._lookups.stop(timeout=1.0):
            log.warning("a name lookup is still running; its thread ends when the resolver gives up")
        log.info("stopped")

    def _wait_until_zero(self, gauges: tuple[str, ...], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(map(self.stats.gauge, gauges)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def claim_address(self, client: ClientConnection, address: str) -> None:
        """Count `client` against `address`'s cap (--max-clients-per-address); Overloaded at it."""
        self._clients.claim_address(client, address, self.config.max_clients_per_address)

    def wants_access_records(self) -> bool:
        """Whether anybody reads AccessRecords: the access log is on, or an embedder asked."""
        return self.on_access is not None or access_log.isEnabledFor(logging.INFO)

    def record_access(self, record: AccessRecord) -> None:
        """One finished request or tunnel: to the access log and the embedding program."""
        emit(record, self.config.access_log_format)
        if self.on_access is not None:
            self.on_access(record)

    def tunnel_opened(self, record: AccessRecord) -> None:
        """A CONNECT's record, handed to the embedding program as soon as the tunnel is up
        (a test can await it while the tunnel is open); completed when it closes."""
        if self.on_access is not None:
            self.on_access(record)

    def _tunnel_closed(self, tunnel: ClosedTunnel) -> None:
        """The access log line of a tunnel, written when it closes (with bytes and reason).

        A CONNECT's record was handed out when it opened; it is completed in place and
        handed over again. An upgraded connection (its 101 already logged) brought a
        record of its own.
        """
        record = tunnel.record
        if record is None or not self.wants_access_records():
            return
        record.bytes_up, record.bytes_down = tunnel.bytes_up, tunnel.bytes_down
        record.duration, record.cause, record.ongoing = tunnel.duration, tunnel.reason, False
        self.record_access(record)

    def snapshot(self) -> Snapshot:
        """Everything the stats pages show, as plain data (observe/statspage.py renders it),
        added up over sibling workers when there are some (`--workers`)."""
        if self.siblings is None:
            return self.local_snapshot()
        own = self.siblings.publish()  # the very numbers the other workers will read next
        return _add_up([own, *self.siblings.read_others()])

    def local_snapshot(self) -> Snapshot:
        """This process's share of the snapshot."""
        stats = self.stats.snapshot()
        return {
            "version": __version__,
            "workers": [os.getpid()],
            "listening": ", ".join(self.urls),
            "uptime": stats["uptime"],
            "counters": stats["counters"],
            "gauges": stats["gauges"],
            "resources": self.resources(),
            "pool": self.pool.usage(),
            "tunnels": self.hub.open_tunnels(),
            "closed_tunnels": self.hub.closed_tunnels(),
            "process": {"open_fds": _open_fds(), "threads": threading.active_count()},
        }

    # The hub's epoll object and its wake-up socket pair, and one per listening socket.
    _HUB_FDS = 3

    def resources(self) -> dict[str, int]:
        """Live objects by kind, and how many file descriptors they account for.

        Compare `fds_accounted` with the process's open descriptors (minus those it had
        before the proxy started) to detect a leak: the difference must not grow.
        """
        gauges = self.stats.snapshot()["gauges"]
        pool_idle = sum(usage["idle"] for usage in self.pool.usage().values())
        pool_open = gauges.get("pool_open", 0)
        counts = {
            "clients": gauges.get("clients", 0),
            "handler_threads": gauges.get("handler_threads", 0),
            "idle_handler_threads": gauges.get("idle_handler_threads", 0),  # end after a few idle seconds
            "requests_in_flight": gauges.get("requests_in_flight", 0),
            "tunnels": self.hub.count,
            "pool_open": pool_open,
            "pool_idle": pool_idle,
            "pool_in_use": pool_open - pool_idle,
        }
        fixed = self._HUB_FDS + len(self.addresses)
        counts["fds_accounted"] = fixed + counts["clients"] + 2 * counts["tunnels"] + pool_open
        return counts


def _url(address: tuple[str, int], tls: bool) -> str:
    return ("https://" if tls else "http://") + join_host_port(*address)


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1  # no /proc: not Linux


def _add_up(snapshots: list[Snapshot]) -> Snapshot:
    """One snapshot for several workers: counts summed, tunnels listed together."""
    total = snapshots[0].copy()
    total["counters"] = _sum_maps(s["counters"] for s in snapshots)
    total["gauges"] = _sum_maps(s["gauges"] for s in snapshots)
    total["resources"] = _sum_maps(s["resources"] for s in snapshots)
    total["process"] = _sum_maps(s["process"] for s in snapshots)
    pool: dict[str, dict[str, int]] = {}
    for snapshot in snapshots:
        for origin, usage in snapshot["pool"].items():
            pool[origin] = _sum_maps([pool.get(origin, {}), usage])
    total["pool"] = pool
    total["workers"] = [pid for s in snapshots for pid in s["workers"]]
    total["tunnels"] = [t for s in snapshots for t in s["tunnels"]]
    total["closed_tunnels"] = [t for s in snapshots for t in s["closed_tunnels"]][:50]
    total["uptime"] = max(s["uptime"] for s in snapshots)
    return total


def _sum_maps(maps: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for mapping in maps:
        for key, value in mapping.items():
            total[key] = total.get(key, 0) + value
    return total
