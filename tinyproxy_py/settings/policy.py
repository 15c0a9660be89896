"""Who may use the proxy, and for what: client ACL, proxy auth, CONNECT ports, host filters, loops.

Pure decisions on plain values: this module does no I/O, so every rule is tested with
plain function calls. Each check returns None to admit, or raises the ProxyError the
client should get (403, 407, 508).

Precedence, in the order the handler applies the checks:
1. client address: a matching deny rule refuses; otherwise a matching allow rule admits;
   no match refuses. With no allow list: loopback only, or any address when users are
   configured (their credentials guard the proxy).
2. credentials (when users are configured), for CONNECT as for plain requests.
3. loop: our own Via token in the request, or a target that is our own listening address.
4. CONNECT port: must be in the allowed list (0 in the list allows every port).
5. host filter: deny mode refuses listed hosts; allow mode admits only listed hosts.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import Cause, Forbidden, LoopDetected, ProxyAuthRequired
from .config import Config
from .ports import AUTO_CONNECT_PORTS, PUBLIC_CONNECT_PORTS, port_ranges

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
CLIENT_VERDICTS = 4096  # remembered client addresses; the table is emptied when full
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# Cloud metadata services outside link-local space (169.254.0.0/16 and fe80::/10 are
# refused as link-local): AWS's IPv6 endpoint, Alibaba Cloud's.
METADATA = (ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("100.100.100.200/32"))


def is_loopback_name(name: str) -> bool:
    """A name that means this host wherever it is resolved (RFC 6761 §6.3: *.localhost too)."""
    name = name.lower().rstrip(".")
    return name in LOOPBACK_NAMES or name.endswith(".localhost")


def parse_networks(rules: Iterable[str]) -> tuple[Network, ...]:
    """'10.0.0.0/8', '::1', '192.168.1.7' → networks; raises ValueError naming a bad rule."""
    networks = []
    for rule in rules:
        try:
            network = ipaddress.ip_network(rule.strip(), strict=False)
        except ValueError:
            raise ValueError(f"not an address or CIDR block: {rule!r}") from None
        mapped = network.network_address.ipv4_mapped if network.version == 6 else None
        if mapped is not None and network.prefixlen >= 96:  # ::ffff:a.b.c.d: addresses are
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")  # judged as IPv4
        networks.append(network)
    return tuple(networks)


@dataclass(frozen=True)
class HostPattern:
    """One host filter: 'example.com' (exact), '*.example.com' (subdomains), 're:REGEX',
    'glob:PATTERN' (a tinyproxy filter file's fnmatch line, shown as written)."""

    text: str

    def matches(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if self.text.startswith("re:"):
            return re.search(self.text[3:], host, re.IGNORECASE) is not None
        if self.text.startswith("glob:"):
            return fnmatch.fnmatchcase(host, self.text[5:].lower())
        pattern = self.text.lower()
        if pattern.startswith("*."):
            return host.endswith(pattern[1:])
        return host == pattern


def parse_host_patterns(patterns: Iterable[str]) -> tuple[HostPattern, ...]:
    result = []
    for text in patterns:
        if text.startswith("re:"):
            try:
                re.compile(text[3:])
            except re.error as exc:
                raise ValueError(f"bad regular expression in host filter {text!r}: {exc}") from None
        elif not text or " " in text:
            raise ValueError(f"bad host filter {text!r}")
        result.append(HostPattern(text))
    return tuple(result)


def _digest(user: str, password: str) -> bytes:
    import hashlib  # with credentials only: it loads libcrypto (4 MiB)

    return hashlib.sha256(f"{user}:{password}".encode()).digest()


class Policy:
    """The admission rules of one proxy instance, compiled once from its Config."""

    def __init__(self, config: Config, *, users: Iterable[tuple[str, str]] = (), via_token: str = "") -> None:
        self.config = config
        self.allow = parse_networks(effective_allow(config, has_users=bool(users)))
        self.deny = parse_networks(config.deny)
        self.filters = parse_host_patterns(config.filter_hosts)
        inline = tuple(parse_credential(text) for text in config.basic_auth)
        self._digests = tuple(_digest(user, password) for user, password in (*inline, *users))
        self.challenge = f'Basic realm="{config.auth_realm}"'
        self.via_token = via_token
        self._verdicts: dict[str, str] = {}  # client address -> refusal ("" admits)
        self.local_clients = parse_networks(config.local_clients)
        self.balancers = parse_networks(config.proxy_protocol_from)
        self._local_verdicts: dict[str, bool] = {}  # client address -> on this machine
        self.deny_destinations = parse_networks(config.deny_destinations)
        self.allow_destinations = parse_networks(config.allow_destinations)
        self.http_ports = port_ranges(config.http_ports)
        self.connect_ports = config.connect_ports
        if self.connect_ports == AUTO_CONNECT_PORTS:  # every port only while nobody else can ask
            local = all(any(_within(net, mine) for mine in self.local_clients) for net in self.allow)
            self.connect_ports = (0,) if local and not self._digests else PUBLIC_CONNECT_PORTS
        self._http_port_allowed: dict[int, bool] = {}
        self.stats_clients = parse_networks(config.stats_allow)

    def check_client(self, address: str) -> None:
        """Every connection asks this, so answers are remembered (a bounded table)."""
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._judge_client(address)
            if len(self._verdicts) >= CLIENT_VERDICTS:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        if verdict:
            raise Forbidden(verdict, cause=Cause.ACL)

    def _judge_client(self, address: str) -> str:
        """Why `address` is refused, or "" if it is admitted."""
        ip = _plain(address)
        for network in self.deny:
            if ip in network:
                return f"client {address} is denied by rule {network}"
        if not any(ip in network for network in self.allow):
            return f"client {address} is not in the allow list"
        return ""

    def check_credentials(self, proxy_authorization: str | None) -> None:
        """Basic credentials, compared in constant time against every configured user."""
        if not self._digests:
            return
        import hmac  # loaded already by _digest: only configured credentials need it

        offered = _decode_basic(proxy_authorization)
        digest = _digest(*offered) if offered else b""
        matched = False
        for known in self._digests:  # no early exit: timing does not tell which user matched
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise ProxyAuthRequired(
                "proxy credentials missing or wrong", headers=(("Proxy-Authenticate", self.challenge),)
            )

    def check_loop(
        self, host: str, port: int, via_values: Iterable[str], listening: Iterable[tuple[str, int]]
    ) -> None:
        if self.via_token and any(self.via_token in value for value in via_values):
            raise LoopDetected("the request has already passed through this proxy")
        if any(port == bound_port and _is_self(host, bound) for bound, bound_port in listening):
            raise LoopDetected(f"{host}:{port} is this proxy itself")

    def destination_judge(
        self,
        client: str,
        listening: Iterable[tuple[str, int]],
        is_local: Callable[[Address], bool] = lambda address: False,
    ) -> Callable[[Address, int], None]:
        """What `client` may connect to, judged on each resolved address (net/dialer.py):

        - an address this proxy listens on, with its port: 508 (any spelling of it);
        - `deny_destinations`: 403 for every client;
        - loopback, link-local, unspecified and the proxy's own addresses: 403 for a client
          that is not on this machine (`local_clients`), unless `allow_destinations` says so.

        `is_local` says whether an address belongs to this host (net.dialer.is_local_address):
        a wildcard listener answers on all of them.
        """
        local = self.is_local_client(client)
        own = tuple((_plain(bound), port) for bound, port in listening)

        def judge(address: Address, port: int) -> None:
            address = _plain(address)
            for bound, bound_port in own:
                if port != bound_port:
                    continue
                if _same_host(address, bound) or (bound.is_unspecified and is_local(address)):
                    raise LoopDetected(f"{address} port {port} is this proxy itself")
            if any(address in network for network in self.deny_destinations):
                raise Forbidden(f"connecting to {address} is not allowed", cause=Cause.DESTINATION)
            if local or any(address in network for network in self.allow_destinations):
                return
            if _on_this_host(address) or address.is_link_local or is_local(address) or _metadata(address):
                raise Forbidden(
                    f"connecting to {address} is not allowed from {client}", cause=Cause.DESTINATION
                )

        return judge

    def is_local_client(self, client: str) -> bool:
        """A client on this machine (`local_clients`): it may reach its local services."""
        local = self._local_verdicts.get(client)
        if local is None:
            local = any(_plain(client) in network for network in self.local_clients)
            if len(self._local_verdicts) >= CLIENT_VERDICTS:
                self._local_verdicts.clear()
            self._local_verdicts[client] = local
        return local

    def check_stats_client(self, client: str) -> None:
        """The stats pages show every client's traffic: only `stats_allow` may read them."""
        if not any(_plain(client) in network for network in self.stats_clients):
            raise Forbidden(f"the stats pages are not open to {client} (see --stats-allow)", cause=Cause.ACL)

    def may_send_proxy_header(self, peer: str) -> bool:
        """Whether `peer` is a load balancer trusted to name the client (--proxy-protocol-from)."""
        return any(_plain(peer) in network for network in self.balancers)

    def only_loops(self, client: str) -> bool:
        """Whether `client`'s destination judge can refuse nothing but loops (which do not
        depend on the client): then a pooled connection need not be judged again."""
        return self.is_local_client(client) and not self.deny_destinations

    def check_connect_port(self, port: int) -> None:
        """0 in the list allows every port; an empty list refuses CONNECT (ConnectPort 0)."""
        ports = self.connect_ports
        if not ports:
            raise Forbidden("CONNECT is disabled on this proxy", cause=Cause.CONNECT_PORT)
        if 0 not in ports and port not in ports:
            allowed = ", ".join(map(str, ports))
            raise Forbidden(
                f"CONNECT to port {port} is not allowed (allowed: {allowed}; see --connect-port)",
                cause=Cause.CONNECT_PORT,
            )

    def describe_connect_ports(self) -> str:
        """For the start-up log and check-config."""
        if not self.connect_ports:
            return "no port (CONNECT refused)"
        if 0 in self.connect_ports:
            return "any port"
        return "ports " + ", ".join(map(str, self.connect_ports))

    def check_http_port(self, port: int) -> None:
        """A plain request carries whatever body the client writes to whatever listens:
        only to the ports web servers use (`http_ports`), not to mail or cache servers."""
        allowed_here = self._http_port_allowed.get(port)
        if allowed_here is None:  # at most 65,535 entries
            allowed_here = self._http_port_allowed[port] = self.http_ports is None or any(
                first <= port <= last for first, last in self.http_ports
            )
        if not allowed_here:
            allowed = ", ".join(self.config.http_ports)
            raise Forbidden(
                f"requests to port {port} are not allowed (allowed: {allowed})", cause=Cause.HTTP_PORT
            )

    def check_host(self, host: str) -> None:
        if not self.filters:
            return
        matched = next((p for p in self.filters if p.matches(host)), None)
        if self.config.filter_mode == "deny" and matched is not None:
            raise Forbidden(f"host {host} is blocked by filter {matched.text!r}", cause=Cause.FILTERED)
        if self.config.filter_mode == "allow" and matched is None:
            raise Forbidden(f"host {host} is not in the allowed host filters", cause=Cause.FILTERED)


def _decode_basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


@functools.lru_cache(maxsize=1024)
def _plain(address: str | Address) -> Address:
    """An address without zone, an IPv4-mapped IPv6 address as the IPv4 one (a dual-stack
    listener sees IPv4 clients so). Cached: parsing costs more than the rest of judging a
    connection, and addresses repeat."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    ip = ipaddress.ip_address(str(address).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _same_host(address: Address, bound: Address) -> bool:
    """Whether dialling `address` reaches a socket bound to `bound` on this host: the same
    address, anything local for a wildcard listener, loopback for a wildcard dial."""
    if address == bound:
        return True
    if bound.is_unspecified:  # an IPv4 wildcard does not answer on ::1; `::` answers both
        return _on_this_host(address) and (bound.version == 6 or address.version == 4)
    return address.is_unspecified and bound.is_loopback and address.version == bound.version


def _metadata(address: Address) -> bool:
    return any(address in network for network in METADATA)


def _on_this_host(address: Address) -> bool:
    """Loopback, or unspecified (0.0.0.0 and :: reach this host when dialled)."""
    return address.is_loopback or address.is_unspecified


def _is_self(host: str, listening_host: str) -> bool:
    """Whether `host` names the address we listen on (without asking DNS)."""
    if is_loopback_name(host):
        host = "127.0.0.1"
    try:
        ip = _plain(host)
        bound = ipaddress.ip_address(listening_host)
    except ValueError:
        return False
    if bound.is_unspecified:
        return ip.is_loopback or ip.is_unspecified
    return ip == bound or (ip.is_loopback and bound.is_loopback)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: resolved by the OS when binding; nothing to judge here


LOOPBACK = ("127.0.0.0/8", "::1")
ANYWHERE = ("0.0.0.0/0", "::/0")


def effective_allow(config: Config, *, has_users: bool = False) -> tuple[str, ...]:
    """The allow list in force (rule 1 of the module docstring)."""
    if config.allow:
        return config.allow
    return ANYWHERE if config.basic_auth or has_users else LOOPBACK


def check_exposure(config: Config, *, has_users: bool = False) -> None:
    """Refuse a listener beyond loopback that only loopback clients could use and nobody guards.

    Binding 0.0.0.0 while the allow list is loopback only is almost always a mistake, and
    opening it wider must be a deliberate choice: an --allow rule, or authentication.
    """
    exposed = [host for host in config.host if not _is_loopback(host)]
    if not exposed:
        return
    wider = any(not network.is_loopback for network in parse_networks(effective_allow(config)))
    if not wider and not (config.basic_auth or has_users):
        raise ValueError(
            f"refusing to listen on {exposed[0]}: only loopback clients are allowed and no "
            "authentication is configured. Open it deliberately with --allow CIDR for the "
            "clients that may use it (--allow 0.0.0.0/0 for everyone) and/or --basic-auth USER:PASSWORD."
        )


def parse_credential(text: str) -> tuple[str, str]:
    user, colon, password = text.partition(":")
    if not colon or not user:
        raise ValueError("credentials must look like USER:PASSWORD")
    if not password:  # `--basic-auth bob:` is a slip, not a wish for a door without a lock
        raise ValueError(f"the password for {user} is empty")
    return user, password


def _within(network: Network, other: Network) -> bool:
    return network.version == other.version and network.subnet_of(other)  # type: ignore[arg-type]
