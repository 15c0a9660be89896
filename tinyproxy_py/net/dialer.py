"""Every outgoing TCP connection: origins, CONNECT targets and parent proxies.

One lookup (A and AAAA together), host overrides applied first (curl's --resolve and
--connect-to), every address judged before it is dialled (the destination policy and
loop detection, settings/policy.py) and the connection made to exactly the address judged, so a
second lookup cannot move it (DNS rebinding). Addresses are tried as RFC 8305 (Happy
Eyeballs v2) says: families interleaved, the first family first, the next attempt
started `attempt_delay` after the previous one while it is still pending; the first to
connect wins and the others are closed at once. The connect timeout bounds the whole,
the lookup too when a running proxy gives the dialer its lookup threads (net/lookups.py).

A failed connect raises the ProxyError the table in net/stream.py gives: a client's
origin or target fails as an origin, a parent proxy as a parent.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import itertools
import logging
import select
import selectors
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from ..errors import EXHAUSTED, Forbidden, ProxyError, exhausted
from ..observe.stats import Stats
from ..settings.policy import is_loopback_name
from ..settings.routes import join_host_port
from .stream import ORIGIN_CONNECT, ORIGIN_DNS, PARENT_CONNECT, PARENT_DNS, Failure

if TYPE_CHECKING:
    from .lookups import Lookups

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SockAddr = tuple[str, int] | tuple[str, int, int, int]
Resolver = Callable[[str, int], list[tuple[socket.AddressFamily, SockAddr]]]
Judge = Callable[[Address, int], None]  # raises a ProxyError for an address it refuses


def system_resolver(host: str, port: int) -> list[tuple[socket.AddressFamily, SockAddr]]:
    """getaddrinfo, A and AAAA at once, in the system's preferred order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(socket.AddressFamily(family), sockaddr[:4]) for family, _, _, _, sockaddr in infos]  # type: ignore[misc]


@dataclass(frozen=True)
class Dialer:
    """How this proxy connects: the attempt delay, the host overrides, the resolver.

    `resolve` maps (host, port) to (host, port, [address, ...]) from --resolve lines;
    `connect_to` maps (host, port) to (host2, port2) from --connect-to lines (curl's
    meaning: connect there instead, keep the name for Host and TLS). `resolver` is
    getaddrinfo; tests put a function of their own in its place.
    """

    attempt_delay: float = 0.25
    resolve: Mapping[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    connect_to: Mapping[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    resolver: Resolver = system_resolver
    stats: Stats | None = None
    judge: Judge | None = None  # one client's destination policy: see judging()
    recheck: bool = True  # judge pooled connections again (False: the judge only finds loops)
    lookups: Lookups | None = None

    def judging(self, judge: Judge | None, recheck: bool = True) -> Dialer:
        """This dialer, judging every address for one client (`recheck`: also the pooled
        connections it is given, which were judged for another client when dialled)."""
        # Not dataclasses.replace: it inspects the fields on every call, once per connection.
        return type(self)(**{**self.__dict__, "judge": judge, "recheck": recheck})

    def check(self, sock: socket.socket) -> None:
        """Judge a connection made for someone else (a pooled one) before this client uses
        it; OSError if it has just been reset (the caller dials anew)."""
        if self.judge is not None and self.recheck:
            host, port = sock.getpeername()[:2]
            self.judge(_parsed(host), port)

    def same_overrides(self, other: Dialer) -> bool:
        """Whether a connection this dialer made still goes where `other` would dial."""
        if self.resolve is other.resolve and self.connect_to is other.connect_to:
            return True
        return (self.resolve, self.connect_to) == (other.resolve, other.connect_to)

    def judge_before_parent(self, host: str, port: int) -> None:
        """Judge a target a parent proxy will dial, as far as this proxy can tell where it
        leads: an address in any spelling (127.1 too), a name --connect-to or --resolve
        maps, a name for this host (localhost, *.localhost, its own host name). A parent on
        this host must not open its loopback to others. Any other name is the parent's
        to resolve, and to judge."""
        if self.judge is None:
            return
        shown = f"{host}:{port}"
        name, port = key = (host.lower().rstrip("."), port)
        if self.connect_to:
            name, port = key = self.connect_to.get(key, key)
        addresses = self.resolve.get(key) if self.resolve else None
        if addresses is None and _names_this_host(name):
            addresses = ("127.0.0.1", "::1")  # whatever resolves them (RFC 6761 §6.3)
        if addresses is None:
            try:
                infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
            except (OSError, UnicodeError):
                return  # a name
            addresses = tuple(str(info[4][0]) for info in infos)
        for address in addresses:  # the parent may pick any of them
            _judged([(_family(address), (address, port))], self.judge, shown)

    def dial(
        self,
        address: tuple[str, int],
        timeout: float,
        *,
        name: str = "",
        to_parent: bool = False,
        blocking: bool = True,
    ) -> socket.socket:
        """A connected socket with TCP_NODELAY, or the ProxyError the client should see.

        `name` is how errors call the peer (default host:port): a parent's, with its
        password masked, never the raw error text. The judge sees every address before
        it is dialled, unless `to_parent` (a parent proxy the operator configured: its
        failures are a parent's too).
        The socket has `timeout` for a handshake to come (TLS, a parent's), or with
        `blocking` False is left non-blocking, as the tunnel hub wants it.
        """
        judge = None if to_parent else self.judge
        deadline = time.monotonic() + timeout
        host, port = address
        name = name or f"{host}:{port}"
        lookup, connect = (PARENT_DNS, PARENT_CONNECT) if to_parent else (ORIGIN_DNS, ORIGIN_CONNECT)
        candidates = self._addresses(host, port, name, lookup, deadline)
        attempt = _Attempts([], self.attempt_delay, deadline)
        try:
            if judge is not None:
                candidates = _judged(candidates, judge, name)
            attempt.candidates = _interleaved(candidates)
            sock = attempt.run()
        except OSError as exc:  # no selector, no socket (EMFILE): the connect failed here
            raise exhausted(exc) or connect.error(f"cannot connect to {name}") from exc
        finally:
            self._count(attempt)
        if sock is None:
            failures = "; ".join(f"{join_host_port(a[0], a[1])}: {why}" for a, why in attempt.failures)
            log.debug("connecting to %s failed: %s", name, failures or "timed out")
            if attempt.timed_out:
                raise connect.error(f"connecting to {name} timed out", timed_out=True)
            raise connect.error(f"cannot connect to {name}")
        try:
            if blocking:
                sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    def _addresses(
        self, host: str, port: int, name: str, lookup: Failure, deadline: float
    ) -> list[tuple[socket.AddressFamily, SockAddr]]:
        if self.connect_to:  # overrides are rare: no key to spell without them
            host, port = self.connect_to.get((host.lower().rstrip("."), port), (host, port))
        pinned = self.resolve.get((host.lower().rstrip("."), port)) if self.resolve else None
        if pinned is not None:
            return [(_family(a), (a, port)) for a in pinned]
        family = _literal_family(host)
        if family is not None:  # nothing to look up (getaddrinfo would say the same)
            return [(family, (host, port))]
        try:
            if self.lookups is None:
                found = self.resolver(host, port)
            else:
                found = self.lookups.run(self.resolver, host, port, deadline)
        except TimeoutError as exc:  # before OSError: it is one
            raise lookup.error(f"looking up {name} timed out", timed_out=True) from exc
        except (OSError, UnicodeError) as exc:  # gaierror; the IDNA codec refusing a name
            raise lookup.error(f"cannot resolve {name}") from exc
        if not found:
            raise lookup.error(f"cannot resolve {name}")
        return found

    def _count(self, attempt: _Attempts) -> None:
        if self.stats is None:
            return
        self.stats.count("connect_attempts", attempt.started)
        if attempt.fell_back:
            self.stats.count("connect_fallbacks")


def is_local_address(address: Address) -> bool:
    """Whether `address` is one of this host's: the kernel routes to it from itself (a
    UDP connect sends nothing). Binding would not tell: ip_nonlocal_bind allows any."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(address), 9))
            return bool(ipaddress.ip_address(probe.getsockname()[0].split("%", 1)[0]) == address)
    except OSError:
        return False


@functools.cache
def _host_name() -> str:
    return socket.gethostname().lower().rstrip(".")


def _names_this_host(name: str) -> bool:
    """Whether `name` means this host wherever it is resolved: its own name too."""
    return is_loopback_name(name) or name == _host_name()


@functools.lru_cache(maxsize=1024)
def _parsed(address: str) -> Address:
    """An address from getaddrinfo or getpeername, its zone dropped. Cached: the same
    few addresses come back on every connection, and parsing one costs microseconds."""
    return ipaddress.ip_address(address.split("%", 1)[0])


def _nonblocking_socket(family: socket.AddressFamily) -> socket.socket:
    """A TCP socket made non-blocking by socket(2) itself, where the flag exists: Python
    then knows it is (timeout 0.0) without an ioctl of its own."""
    if hasattr(socket, "SOCK_NONBLOCK"):
        return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _literal_family(host: str) -> socket.AddressFamily | None:
    """The family of an IP address written as getaddrinfo would give it back (no zone,
    no shorthand such as 127.1), or None: a name, to be looked up."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return family
        except (OSError, ValueError):
            continue
    return None


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _judged(
    candidates: list[tuple[socket.AddressFamily, SockAddr]], judge: Judge, name: str
) -> list[tuple[socket.AddressFamily, SockAddr]]:
    """The addresses the judge lets through; if it refuses all, its first refusal."""
    allowed, refusals = [], []
    for family, sockaddr in candidates:
        try:
            judge(_parsed(sockaddr[0]), sockaddr[1])
        except ProxyError as refusal:
            refusals.append(refusal)
            continue
        allowed.append((family, sockaddr))
    if not allowed:
        raise _naming(refusals[0], name)
    return allowed


def _naming(refusal: ProxyError, name: str) -> ProxyError:
    """A 403 as the client sees it: naming the target it asked for, not the address a
    name resolved to (a remote client has no business learning internal addresses)."""
    if not isinstance(refusal, Forbidden):
        return refusal  # 508: the proxy's own address, which the client dialled already
    log.debug("refused %s: %s", name, refusal.message)
    named = Forbidden(f"connecting to {name} is not allowed", cause=refusal.cause)
    named.__cause__ = refusal
    return named


def _interleaved(
    candidates: Iterable[tuple[socket.AddressFamily, SockAddr]],
) -> list[tuple[socket.AddressFamily, SockAddr]]:
    """RFC 8305 §4: alternate the families, starting with the one the resolver put first."""
    unique = list(candidates)
    if len(unique) == 1:  # an address literal, mostly
        return unique
    unique = list(dict.fromkeys(unique))
    if not unique:
        return []
    first = unique[0][0]
    preferred = [c for c in unique if c[0] == first]
    others = [c for c in unique if c[0] != first]
    mixed = itertools.chain.from_iterable(itertools.zip_longest(preferred, others))
    return [c for c in mixed if c is not None]


class _Attempts:
    """One Happy Eyeballs race: non-blocking connects started `delay` apart, or at once
    when the previous one failed; the first to connect wins. Every socket it opened and
    did not return is closed before run() returns or raises."""

    def __init__(
        self, candidates: list[tuple[socket.AddressFamily, SockAddr]], delay: float, deadline: float
    ) -> None:
        self.candidates, self.delay, self.deadline = candidates, delay, deadline
        self.failures: list[tuple[SockAddr, str]] = []
        self.started = 0
        self.timed_out = False
        self.fell_back = False  # the winner is not of the first family

    def run(self) -> socket.socket | None:
        if len(self.candidates) == 1:
            return self._only()
        pending: dict[socket.socket, tuple[socket.AddressFamily, SockAddr]] = {}
        # poll(2): no kernel object to create and close per dial, unlike epoll
        with selectors.PollSelector() as selector:
            try:
                return self._race(selector, pending)
            finally:
                for sock in pending:
                    sock.close()

    def _race(
        self,
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, tuple[socket.AddressFamily, SockAddr]],
    ) -> socket.socket | None:
        next_start = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                self.timed_out = bool(pending) or self.started < len(self.candidates)
                return None
            if self.started < len(self.candidates) and (now >= next_start or not pending):
                self._start(selector, pending)
                next_start = now + self.delay
                continue
            if not pending:
                return None  # every address failed
            until = self.deadline if self.started == len(self.candidates) else min(next_start, self.deadline)
            for key, _ in selector.select(max(until - now, 0.0)):
                sock = cast(socket.socket, key.fileobj)  # what _start registered
                selector.unregister(sock)
                candidate = pending.pop(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error == 0:
                    self.fell_back = candidate[0] != self.candidates[0][0]
                    return sock
                self.failures.append((candidate[1], errno.errorcode.get(error, str(error))))
                sock.close()
                next_start = time.monotonic()  # a failure starts the next attempt at once

    def _only(self) -> socket.socket | None:
        """One address: nothing to race, a connect and a poll under the deadline (the
        common case, at the cost of one socket and one connect)."""
        family, sockaddr = self.candidates[0]
        self.started = 1
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.timed_out = True
            return None
        try:
            sock = _nonblocking_socket(family)
        except OSError as exc:
            if exc.errno in EXHAUSTED:
                raise  # no other address fares better: a 503, not a 502
            self.failures.append((sockaddr, exc.strerror or str(exc)))
            return None
        try:
            error = sock.connect_ex(sockaddr)
            if error in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                if not poller.poll(remaining * 1000):
                    sock.close()
                    self.timed_out = True
                    return None
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except BaseException:
            sock.close()
            raise
        if error:
            sock.close()
            self.failures.append((sockaddr, errno.errorcode.get(error, str(error))))
            return None
        return sock

    def _start(
        self,
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, tuple[socket.AddressFamily, SockAddr]],
    ) -> None:
        family, sockaddr = candidate = self.candidates[self.started]
        self.started += 1
        try:
            sock = _nonblocking_socket(family)  # EAFNOSUPPORT without IPv6
        except OSError as exc:
            if exc.errno in EXHAUSTED:
                raise
            self.failures.append((sockaddr, exc.strerror or str(exc)))
            return
        try:
            error = sock.connect_ex(sockaddr)
        except OSError as exc:
            sock.close()
            self.failures.append((sockaddr, exc.strerror or str(exc)))
            return
        if error not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self.failures.append((sockaddr, errno.errorcode.get(error, str(error))))
            return
        pending[sock] = candidate
        selector.register(sock, selectors.EVENT_WRITE)


DIRECT = Dialer()  # no overrides, no stats: for callers outside a running proxy
