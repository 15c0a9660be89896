"""Routes: which parent proxy (an upstream proxy, `--upstream`), if any, a request goes through.

Rules come from tinyproxy.conf(5)-style lines, from the command line, or from
HTTP_PROXY / HTTPS_PROXY / NO_PROXY; docs/upstream.md gives the syntax and the reasons.

Precedence (tinyproxy's, src/upstream.c): among the rules that name sites, the LAST one
that matches wins; a default rule (no site) applies only when no site rule matched; no
match and no default means direct. `No Upstream` is a site rule whose answer is
"direct". A scheme ("http" for plain requests, "https" for CONNECT) has at most one default.

Pure: no sockets and no DNS. A host name never matches an address rule and an address
never matches a name rule, so nothing here needs a lookup. Passwords never appear in
str(), repr() or error messages. Imports: stdlib only.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

REQUEST_SCHEMES = frozenset({"http", "https"})  # plain requests, CONNECT
# Default upstream ports when a URL names none: Go's httpproxy and urllib3 use 80 for
# http://, and 1080 is the SOCKS port (RFC 1928). curl uses 1080 for every scheme.
DEFAULT_PORTS = {"http": 80, "socks5": 1080}
_SCHEME_ALIASES = {"socks5h": "socks5"}  # curl's "SOCKS server resolves": we always do that
_MAX_SOCKS_CREDENTIAL = 255  # RFC 1929: one length octet


@dataclass(frozen=True)
class Parent:
    """A parent proxy: where to connect, and the credentials it wants.

    str() and repr() show "***" in place of the password; `url` leaves it out.
    """

    scheme: str  # "http" or "socks5"
    host: str  # a name or an address literal, without brackets
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_parent(self)

    def __str__(self) -> str:
        return self._render("***")

    def __repr__(self) -> str:
        return f"Parent({self})"

    @property
    def url(self) -> str:
        return self._render(None)

    @property
    def authority(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def proxy_authorization(self) -> str | None:
        """The Proxy-Authorization value for an http parent with credentials, else None."""
        if self.scheme != "http" or self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _render(self, secret: str | None) -> str:
        userinfo = ""
        if self.username is not None:
            userinfo = quote(self.username, safe="")
            if secret is not None and self.password is not None:
                userinfo += ":" + secret
            userinfo += "@"
        return f"{self.scheme}://{userinfo}{self.authority}"


def _check_parent(parent: Parent) -> None:
    if parent.scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported upstream scheme {parent.scheme!r} (use http or socks5)")
    if not parent.host or re.search(r"[\s/@\[\]]", parent.host) or not parent.host.isascii():
        raise ValueError(f"bad upstream host {parent.host!r}")
    if isinstance(parent.port, bool) or not 0 < parent.port <= 65535:
        raise ValueError(f"upstream port must be within 1..65535, got {parent.port!r}")
    if parent.password is not None and parent.username is None:
        raise ValueError("an upstream password needs a user name")
    if parent.username is not None:
        _check_username(parent)


def _check_username(parent: Parent) -> None:
    assert parent.username is not None
    if not parent.username:
        raise ValueError("an upstream user name must not be empty")
    if parent.scheme == "http" and ":" in parent.username:
        raise ValueError("an http upstream's user name cannot contain ':' (RFC 7617)")
    if parent.scheme == "socks5":
        for what, value in (("user name", parent.username), ("password", parent.password or "")):
            if len(value.encode()) > _MAX_SOCKS_CREDENTIAL:
                raise ValueError(f"a SOCKS5 {what} is at most 255 bytes (RFC 1929)")


def join_host_port(host: str, port: int) -> str:
    """'host:port', with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- site patterns -------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One site pattern, normalised. `text` is the pattern as written (for logs).

    A name pattern matches `name` itself (`itself`) and/or the names below it (`below`);
    an address pattern matches request hosts that are address literals inside `network`.
    """

    text: str
    name: str = ""
    itself: bool = False
    below: bool = False
    network: Network | None = None
    dotless: bool = False  # tinyproxy's ".": names without a dot
    everything: bool = False  # NO_PROXY's "*"
    port: int | None = None  # NO_PROXY's host:port; None matches every port

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.everything:
            return True
        name, ip = _host_key(host)
        if self.network is not None:
            return ip is not None and ip in self.network
        if ip is not None:
            return False
        if self.dotless:
            return "." not in name
        if name == self.name:
            return self.itself
        return self.below and name.endswith("." + self.name)


def _host_key(host: str) -> tuple[str, Address | None]:
    """(lower-case name without brackets or trailing dot, the address if it is a literal)."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return name, ipaddress.ip_address(name)
    except ValueError:
        return name.rstrip("."), None


def _network(text: str) -> Network | None:
    """An address, CIDR block or IPv4 address/netmask, or None if `text` is not one."""
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or rest[:1] not in ("", "/"):
            return None  # '[v6]:port' is an address and a port, not a network
        text = inside + rest
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def parse_site_spec(text: str) -> Site:
    """A tinyproxy site_spec: 'name' (that host only), '.name' (hosts below name, not name
    itself), '.' (names without a dot), or an address, CIDR block or IPv4 address/mask."""
    spec = text.strip()
    if not spec or re.search(r"[\s\"]", spec):
        raise ValueError(f"bad site spec {text!r}")
    if spec == ".":
        return Site(spec, dotless=True)
    network = _network(spec)
    if network is not None:
        return Site(spec, network=network)
    if "*" in spec:
        raise ValueError(f"site spec {spec!r}: no wildcards; '.example.com' matches the hosts below it")
    if "/" in spec or ":" in spec:
        raise ValueError(f"site spec {spec!r} is neither a host name nor an address block")
    name = spec.lower().rstrip(".")
    if name.startswith("."):
        return Site(spec, name=name[1:], below=True)
    return Site(spec, name=name, itself=True)


def parse_no_proxy(value: str) -> tuple[tuple[Site, ...], tuple[str, ...]]:
    """NO_PROXY entries, split on commas and white space: (sites, entries ignored as malformed).

    'example.com', '.example.com' and '*.example.com' all match example.com and every
    name below it; 'host:port' and '[v6]:port' match that port only; '*' matches all.
    """
    parsed = [(entry, _no_proxy_entry(entry)) for entry in re.split(r"[,\s]+", value) if entry]
    ignored = tuple(entry for entry, site in parsed if site is None)
    return tuple(site for _, site in parsed if site is not None), ignored


def _no_proxy_entry(entry: str) -> Site | None:
    text = entry.lower()
    if text == "*":
        return Site(entry, everything=True)
    network = _network(text)
    if network is not None:
        return Site(entry, network=network)
    host, port = _split_entry_port(text)
    if port == 0:
        return None
    network = _network(host)
    if network is not None:
        return Site(entry, network=network, port=port)
    if host.startswith("*."):
        host = host[1:]
    name = host.strip(".")
    if not name or re.search(r"[*/:\[\]@]", name):
        return None
    return Site(entry, name=name, itself=True, below=True, port=port)


def _split_entry_port(text: str) -> tuple[str, int | None]:
    """'host:port' or '[v6]:port' → (host, port); 0 for a port that is not one."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest:
            return host, None
        return host, _entry_port(rest[1:]) if rest.startswith(":") else 0
    host, colon, port = text.rpartition(":")
    if not colon:
        return text, None
    return host, _entry_port(port)


def _entry_port(text: str) -> int:
    return int(text) if text.isdigit() and 0 < int(text) <= 65535 else 0


# --- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Use `parent` (None: go direct) for requests to `site` (None: the default rule)
    whose scheme is in `schemes`."""

    parent: Parent | None
    site: Site | None = None
    schemes: frozenset[str] = REQUEST_SCHEMES

    def __str__(self) -> str:
        target = "No Upstream" if self.parent is None else f"Upstream {self.parent}"
        site = f' "{self.site.text}"' if self.site is not None else ""
        schemes = "" if self.schemes == REQUEST_SCHEMES else f" (for {', '.join(sorted(self.schemes))})"
        return target + site + schemes


@dataclass(frozen=True)
class Routes:
    """An ordered rule list; `choose` answers which parent a request goes through.

    `ignored` lists NO_PROXY entries that were dropped as malformed, for a warning.
    """

    rules: tuple[Rule, ...] = ()
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _defaults(self.rules)  # refuses two defaults for one scheme

    def __str__(self) -> str:
        return "; ".join(map(str, self.rules)) or "direct"

    def choose(self, host: str, port: int, scheme: str) -> Parent | None:
        """The parent for a request to host:port (the port used, defaults filled in) of
        `scheme` (see REQUEST_SCHEMES); None: connect directly."""
        if scheme not in REQUEST_SCHEMES:
            raise ValueError(f"scheme must be 'http' or 'https', got {scheme!r}")
        for rule in reversed(self.rules):
            if rule.site is not None and scheme in rule.schemes and rule.site.matches(host, port):
                return rule.parent
        default = _defaults(self.rules).get(scheme)
        return default.parent if default is not None else None

    def then(self, later: Routes) -> Routes:
        """These rules followed by `later`'s: its site rules win ties, its defaults replace ours."""
        replaced = frozenset(_defaults(later.rules))
        kept = []
        for rule in self.rules:
            schemes = rule.schemes - replaced if rule.site is None else rule.schemes
            if schemes:
                kept.append(Rule(rule.parent, rule.site, schemes))
        return Routes((*kept, *later.rules), self.ignored + later.ignored)


def _defaults(rules: Iterable[Rule]) -> dict[str, Rule]:
    found: dict[str, Rule] = {}
    for rule in rules:
        if rule.site is not None:
            continue
        for scheme in rule.schemes:
            if scheme in found:
                raise ValueError(f"more than one default upstream for {scheme}: {found[scheme]} and {rule}")
            found[scheme] = rule
    return found


# --- tinyproxy.conf lines and command-line options ----------------------------------------


def parse_rule(line: str) -> Rule:
    """One tinyproxy.conf(5) rule line.

    'Upstream http user:pass@host:port "site_spec"', 'Upstream socks5 host:port' (no
    site_spec: the default), 'Upstream none "site_spec"' or 'No Upstream "site_spec"'.
    """
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    lexer.escape = ""  # tinyproxy has no escapes: a backslash in a password is a backslash
    try:
        words = list(lexer)
    except ValueError:
        raise ValueError(f"unbalanced quotes in {redact(line.strip())!r}") from None
    return rule_from_words(words)


def rule_from_words(words: Sequence[str]) -> Rule:
    """A rule from a config line already split into words, quotes removed (what a
    shlex-based config reader has): ['Upstream', 'http', 'h:3128', '.example.com']."""
    keywords = [word.lower() for word in words[:2]]
    if keywords in (["no", "upstream"], ["upstream", "none"]) and len(words) == 3:
        return Rule(None, parse_site_spec(words[2]))
    if keywords[:1] == ["upstream"] and len(words) in (3, 4) and keywords[1] != "none":
        parent = _conf_parent(keywords[1], words[2])
        return Rule(parent, parse_site_spec(words[3]) if len(words) == 4 else None)
    raise ValueError(f"not an upstream rule: {redact(' '.join(words))!r}")


def _conf_parent(kind: str, target: str) -> Parent:
    if kind == "socks4":
        raise ValueError("socks4 upstreams are not supported; use socks5")
    if kind not in DEFAULT_PORTS:
        raise ValueError(f"unknown upstream type {kind!r} (http, socks5 or none)")
    userinfo, at, hostport = target.rpartition("@")
    username = password = None
    if at:
        username, colon, password = userinfo.partition(":")
        if not colon:
            raise ValueError("upstream credentials must look like user:password@host:port")
    host, port = split_host_port(hostport)
    return Parent(kind, host, port, username, password)


def split_host_port(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port); the port is required."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port = rest[1:] if bracket and rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"put an IPv6 address in brackets: {text!r}")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host.lower(), int(port)


def parse_rules(lines: Iterable[str]) -> Routes:
    """Rule lines in file order (blank lines and # comments skipped)."""
    rules = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                rules.append(parse_rule(line))
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None
    return Routes(tuple(rules))


def parse_parent_url(text: str) -> Parent:
    """'http://user:pass@host:port', 'socks5://host' (socks5h too), or bare 'host:port' (http).

    User name and password are percent-decoded, as curl, Go and Python do.
    """
    raw = text.strip()
    if not raw or re.search(r"\s", raw):
        raise ValueError(f"bad upstream URL {redact(text)!r}")
    parts = urlsplit(raw if "://" in raw else "http://" + raw)
    scheme = _SCHEME_ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported upstream scheme {parts.scheme!r} in {redact(raw)!r} (http or socks5)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an upstream URL has no path or query: {redact(raw)!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"bad port in upstream URL {redact(raw)!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in upstream URL {redact(raw)!r}")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Parent(scheme, parts.hostname, port, username, password)


def redact(text: str) -> str:
    """`text` with the password of any 'user:password@host' replaced by '***'."""
    return re.sub(r"\S+", lambda word: _redact_word(word[0]), text)


def _redact_word(word: str) -> str:
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", word)
    prefix, rest = (scheme[0], word[scheme.end() :]) if scheme else ("", word)
    userinfo, at, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return word
    return f"{prefix}{user}:***@{host}"


def upstream_option(value: str) -> Rule:
    """--upstream URL [SITE_SPEC]: a default rule, or one for the sites SITE_SPEC names."""
    words = value.split()
    if not 1 <= len(words) <= 2:
        raise ValueError(f"--upstream takes a URL and at most one site spec, got {redact(value)!r}")
    parent = parse_parent_url(words[0])
    return Rule(parent, parse_site_spec(words[1].strip('"')) if len(words) == 2 else None)


def no_upstream_option(value: str) -> Rule:
    """--no-upstream SITE_SPEC: connect directly to the sites SITE_SPEC names."""
    return Rule(None, parse_site_spec(value.strip().strip('"')))


def rules_from_options(upstreams: Iterable[str], no_upstreams: Iterable[str]) -> Routes:
    """Command-line rules. Options of one kind keep their order; every --no-upstream comes
    after every --upstream, so it wins for the sites it names whatever the order typed."""
    rules = [upstream_option(value) for value in upstreams]
    rules += [no_upstream_option(value) for value in no_upstreams]
    return Routes(tuple(rules))


# --- the environment -----------------------------------------------------------------------


def rules_from_env(environ: Mapping[str, str]) -> Routes:
    """Rules from http_proxy / https_proxy / no_proxy, in lower or upper case.

    Plain http:// requests use HTTP_PROXY, CONNECT uses HTTPS_PROXY (no fallback between
    them), and NO_PROXY applies to both. Lower case wins when both are set, as in curl
    and Python; an empty value counts as unset. Under CGI (REQUEST_METHOD set) upper-case
    HTTP_PROXY is ignored: a client can set it with a "Proxy:" header (httpoxy).
    """
    rules = []
    for scheme, variable in (("http", "http_proxy"), ("https", "https_proxy")):
        found = _env(environ, variable)
        if found is not None:
            name, value = found
            try:
                parent = parse_parent_url(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            rules.append(Rule(parent, None, frozenset({scheme})))
    no_proxy = _env(environ, "no_proxy")
    sites, ignored = parse_no_proxy(no_proxy[1]) if no_proxy else ((), ())
    rules += [Rule(None, site) for site in sites]
    return Routes(tuple(rules), ignored)


def _env(environ: Mapping[str, str], lower: str) -> tuple[str, str] | None:
    """(variable name, value) of the first non-empty of `lower`, `LOWER`."""
    names = [lower]
    if lower != "http_proxy" or "REQUEST_METHOD" not in environ:
        names.append(lower.upper())
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None
