"""Upstream rules as plain function calls: parsing, precedence, NO_PROXY, secrets kept out of text."""

from __future__ import annotations

import base64

import pytest

from tinyproxy_py.settings.routes import (
    Parent,
    Routes,
    Rule,
    no_upstream_option,
    parse_no_proxy,
    parse_parent_url,
    parse_rule,
    parse_rules,
    parse_site_spec,
    redact,
    rule_from_words,
    rules_from_env,
    rules_from_options,
    upstream_option,
)

PROXY = Parent("http", "proxy.example", 3128)
SOCKS = Parent("socks5", "socks.example", 1080)


# --- Upstream ------------------------------------------------------------------------------


def test_str_repr_and_url_never_show_the_password() -> None:
    up = Parent("http", "proxy.example", 3128, "alice", "s3cret")
    assert str(up) == "http://alice:***@proxy.example:3128"
    assert up.url == "http://alice@proxy.example:3128"
    assert "s3cret" not in repr(up) and "s3cret" not in str(Rule(up))
    assert "s3cret" not in str(Routes((Rule(up),)))


def test_ipv6_parent_is_bracketed_and_user_name_is_quoted() -> None:
    up = Parent("socks5", "::1", 1080, "a b@c", "x")
    assert str(up) == "socks5://a%20b%40c:***@[::1]:1080"
    assert up.authority == "[::1]:1080"
    assert up.address == ("::1", 1080)


def test_proxy_authorization_is_basic_for_http_only() -> None:
    up = Parent("http", "p", 1, "alice", "pä:ss")
    scheme, token = up.proxy_authorization().split(" ")  # type: ignore[union-attr]
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == "alice:pä:ss"
    assert Parent("http", "p", 1).proxy_authorization() is None
    assert Parent("socks5", "p", 1, "alice", "x").proxy_authorization() is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("https", "p", 1), "unsupported upstream scheme"),
        (("http", "", 1), "bad upstream host"),
        (("http", "[::1]", 1), "bad upstream host"),
        (("http", "p", 0), "port"),
        (("http", "p", 70000), "port"),
        (("http", "p", True), "port"),
        (("http", "p", 1, None, "x"), "needs a user name"),
        (("http", "p", 1, "", "x"), "must not be empty"),
        (("http", "p", 1, "a:b", "x"), "cannot contain ':'"),
        (("socks5", "p", 1, "a" * 256, "x"), "at most 255 bytes"),
        (("socks5", "p", 1, "a", "é" * 128), "at most 255 bytes"),
    ],
)
def test_bad_parents_are_refused(fields: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Parent(*fields)  # type: ignore[arg-type]


# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://proxy.example:3128", PROXY),
        ("proxy.example:3128", PROXY),
        ("http://proxy.example:3128/", PROXY),
        ("HTTP://Proxy.Example:3128", PROXY),
        ("http://proxy.example", Parent("http", "proxy.example", 80)),
        ("socks5://socks.example", SOCKS),
        ("socks5h://socks.example:1080", SOCKS),
        ("http://[::1]:8080", Parent("http", "::1", 8080)),
        ("http://al%40ice:p%3As%40s@p:1", Parent("http", "p", 1, "al@ice", "p:s@s")),
        ("http://alice:p@ss@p:1", Parent("http", "p", 1, "alice", "p@ss")),
        ("http://alice@p:1", Parent("http", "p", 1, "alice", None)),
    ],
)
def test_parent_urls(text: str, expected: Parent) -> None:
    assert parse_parent_url(text) == expected
    assert parse_parent_url(text).password == expected.password


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://u:hunter2@p:1", "unsupported upstream scheme"),
        ("socks4://u:hunter2@p:1", "unsupported upstream scheme"),
        ("http://u:hunter2@p:99999", "port"),
        ("http://u:hunter2@p:1/path", "no path"),
        ("http://u:hunter2@p:1?q", "no path"),
        ("http://u:hunter2@:1", "no host"),
        ("http://u:hunter2@p :1", "bad upstream URL"),
        ("", "bad upstream URL"),
    ],
)
def test_bad_urls_are_refused_without_echoing_the_password(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_parent_url(text)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://u:pw@h:1", "http://u:***@h:1"),
        ("u:p@ss@h:1", "u:***@h:1"),
        ("Upstream http u:pw@h:1 x", "Upstream http u:***@h:1 x"),
        ("http://u:a://b@h", "http://u:***@h"),
        ("http://u@h:1 mail@x socks5://h:1", "http://u@h:1 mail@x socks5://h:1"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


# --- tinyproxy.conf lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "upstream", "site"),
    [
        ('Upstream http user:pass@proxy.example:3128 ".example.com"',
         Parent("http", "proxy.example", 3128, "user", "pass"), ".example.com"),
        ("Upstream socks5 socks.example:1080", SOCKS, None),
        ("Upstream http proxy.example:3128", PROXY, None),
        ("  upstream HTTP proxy.example:3128   example.com ", PROXY, "example.com"),
        ('Upstream http u:p:q@x@[::1]:3128 "10.0.0.0/8"',
         Parent("http", "::1", 3128, "u", "p:q@x"), "10.0.0.0/8"),
        ('Upstream none ".intranet"', None, ".intranet"),
        ('No Upstream ".intranet"', None, ".intranet"),
        ('no   upstream "."', None, "."),
        (r"Upstream socks5 u:p\q#r@s.example:1080",
         Parent("socks5", "s.example", 1080, "u", r"p\q#r"), None),
    ],
)  # fmt: skip
def test_rule_lines(line: str, upstream: Parent | None, site: str | None) -> None:
    rule = parse_rule(line)
    assert rule.parent == upstream
    assert (rule.site.text if rule.site else None) == site
    if upstream is not None and rule.parent is not None:
        assert rule.parent.password == upstream.password


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Upstream socks4 h:1080", "socks4 upstreams are not supported"),
        ("Upstream ftp h:21", "unknown upstream type"),
        ("Upstream http h", "expected host:port"),
        ("Upstream http ::1:3128", "brackets"),
        ("Upstream http user@h:1", "user:password@host:port"),
        ('Upstream http h:1 "a" "b"', "not an upstream rule"),
        ("No Upstream", "not an upstream rule"),
        ("Upstream none h:1", "neither a host name nor an address block"),
        ('Upstream http h:1 "*.example.com"', "no wildcards"),
        ("Upstream http u:hunter2@h:1 a b", "not an upstream rule"),
        ('Upstream http u:hunter2@h:1 "a', "unbalanced quotes"),
        ('Upstream http h:1 "a b"', "bad site spec"),
    ],
)
def test_bad_rule_lines(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_rule(line)
    assert "hunter2" not in str(caught.value)


def test_rules_from_words_of_a_shlex_config_reader() -> None:
    assert rule_from_words(["No", "Upstream", ".lan"]) == parse_rule('No Upstream ".lan"')
    assert rule_from_words(["upstream", "http", "h:1", "x.example"]) == parse_rule(
        'Upstream http h:1 "x.example"'
    )


def test_rule_files_skip_comments_and_name_the_bad_line() -> None:
    rules = parse_rules(["# chaining", "", "Upstream http proxy.example:3128", '  No Upstream ".lan"'])
    assert len(rules.rules) == 2
    with pytest.raises(ValueError, match="line 2: socks4"):
        parse_rules(["Upstream http p:1", "Upstream socks4 s:1"])


# --- site specs (tinyproxy's meaning) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "host", "matches"),
    [
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com.", True),
        ("example.com", "www.example.com", False),  # tinyproxy: a name matches that host only
        ("example.com", "notexample.com", False),
        (".example.com", "www.example.com", True),
        (".example.com", "a.b.example.com", True),
        (".example.com", "example.com", False),  # tinyproxy: ".name" is the hosts below name
        (".example.com", "badexample.com", False),
        (".", "intranet", True),
        (".", "intranet.lan", False),
        (".", "::1", False),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.0.0.0/255.0.0.0", "10.9.9.9", True),
        ("192.168.1.5/24", "192.168.1.200", True),  # host bits are masked off, as tinyproxy does
        ("192.168.1.7", "192.168.1.7", True),
        ("fd00::/8", "[fd12::1]", True),
        ("fd00::/8", "fd12::1", True),
        ("::1", "127.0.0.1", False),
        ("10.0.0.0/8", "ten.example", False),  # names are never resolved to match
        ("example.com", "93.184.216.34", False),
    ],
)
def test_site_spec_matching(spec: str, host: str, matches: bool) -> None:
    assert parse_site_spec(spec).matches(host, 443) is matches


# --- precedence -------------------------------------------------------------------------------

A = Parent("http", "a.proxy", 1)
B = Parent("http", "b.proxy", 2)


def test_last_matching_site_rule_wins_and_the_default_only_when_none_matches() -> None:
    rules = parse_rules(
        [
            "Upstream http a.proxy:1",  # the default, wherever it stands
            'Upstream http b.proxy:2 ".example.com"',
            'No Upstream ".internal.example.com"',
            'Upstream http b.proxy:2 "build.internal.example.com"',
        ]
    )
    assert rules.choose("elsewhere.org", 80, "http") == A
    assert rules.choose("www.example.com", 443, "https") == B
    assert rules.choose("db.internal.example.com", 443, "https") is None
    assert rules.choose("build.internal.example.com", 443, "https") == B


def test_order_decides_between_no_upstream_and_upstream() -> None:
    upstream_last = parse_rules(['No Upstream ".example.com"', 'Upstream http a.proxy:1 ".example.com"'])
    direct_last = parse_rules(['Upstream http a.proxy:1 ".example.com"', 'No Upstream ".example.com"'])
    assert upstream_last.choose("x.example.com", 80, "http") == A
    assert direct_last.choose("x.example.com", 80, "http") is None


def test_no_rules_means_direct_and_a_second_default_is_refused() -> None:
    assert Routes().choose("example.com", 80, "http") is None
    with pytest.raises(ValueError, match="more than one default upstream"):
        parse_rules(["Upstream http a.proxy:1", "Upstream socks5 b.proxy:2"])


def test_choose_accepts_only_request_schemes() -> None:
    with pytest.raises(ValueError, match="scheme"):
        Routes().choose("example.com", 80, "ftp")


def test_command_line_no_upstream_wins_whatever_the_order() -> None:
    rules = rules_from_options(["http://a.proxy:1", 'http://b.proxy:2 ".example.com"'], ["www.example.com"])
    assert rules.choose("www.example.com", 443, "https") is None
    assert rules.choose("api.example.com", 443, "https") == B
    assert rules.choose("example.org", 80, "http") == A


def test_command_line_forms() -> None:
    assert upstream_option("socks5://u:p@s:1080") == Rule(Parent("socks5", "s", 1080, "u", "p"))
    assert upstream_option("http://b.proxy:2 .example.com").site == parse_site_spec(".example.com")
    assert no_upstream_option('".lan"') == Rule(None, parse_site_spec(".lan"))
    for bad in ("", "http://a.proxy:1 x y"):
        with pytest.raises(ValueError, match="--upstream"):
            upstream_option(bad)


def test_then_lets_later_rules_win_and_replace_defaults() -> None:
    file = parse_rules(["Upstream http a.proxy:1", 'No Upstream ".example.com"'])
    cli = rules_from_options(["http://b.proxy:2"], [])
    env = rules_from_env({"https_proxy": "http://b.proxy:2"})
    assert file.then(cli).choose("example.org", 80, "http") == B
    assert file.then(cli).choose("www.example.com", 80, "http") is None
    merged = file.then(env)  # env replaces the default for https only
    assert merged.choose("example.org", 443, "https") == B
    assert merged.choose("example.org", 80, "http") == A
    assert (
        file.then(parse_rules(['Upstream http b.proxy:2 "www.example.com"'])).choose(
            "www.example.com", 80, "http"
        )
        == B
    )


# --- the environment ----------------------------------------------------------------------------

HTTP = Parent("http", "h.proxy", 3128)
HTTPS = Parent("http", "s.proxy", 3129)


def test_http_and_https_proxies_apply_to_their_scheme_only() -> None:
    rules = rules_from_env({"HTTP_PROXY": "h.proxy:3128", "HTTPS_PROXY": "http://s.proxy:3129"})
    assert rules.choose("example.com", 80, "http") == HTTP
    assert rules.choose("example.com", 443, "https") == HTTPS
    only_http = rules_from_env({"http_proxy": "h.proxy:3128"})
    assert only_http.choose("example.com", 443, "https") is None  # no fallback to HTTP_PROXY


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"http_proxy": "h.proxy:3128", "HTTP_PROXY": "other:1"}, HTTP),  # lower case wins
        ({"HTTP_PROXY": "h.proxy:3128"}, HTTP),  # upper case alone is honoured
        ({"http_proxy": "", "HTTP_PROXY": "h.proxy:3128"}, HTTP),  # empty counts as unset
        ({"http_proxy": "  "}, None),
        ({"HTTP_PROXY": "h.proxy:3128", "REQUEST_METHOD": "GET"}, None),  # httpoxy
        ({"http_proxy": "h.proxy:3128", "REQUEST_METHOD": "GET"}, HTTP),
        ({}, None),
    ],
)
def test_env_variable_case_and_cgi(environ: dict[str, str], expected: Parent | None) -> None:
    assert rules_from_env(environ).choose("example.com", 80, "http") == expected


def test_https_proxy_in_upper_case_is_honoured_even_under_cgi() -> None:
    rules = rules_from_env({"HTTPS_PROXY": "http://s.proxy:3129", "REQUEST_METHOD": "GET"})
    assert rules.choose("example.com", 443, "https") == HTTPS


def test_bad_env_proxy_names_the_variable_not_the_password() -> None:
    with pytest.raises(ValueError, match=r"^HTTPS_PROXY: unsupported") as caught:
        rules_from_env({"HTTPS_PROXY": "ftp://u:hunter2@p:1"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypass"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "www.example.com", 443, True),  # a name covers its subdomains
        ("example.com", "notexample.com", 443, False),  # ... at a label boundary only
        (".example.com", "example.com", 443, True),  # leading dot ignored, as curl and Python
        (".example.com", "a.b.example.com", 443, True),
        ("*.example.com", "example.com", 443, True),
        ("*.example.com", "www.example.com", 443, True),
        ("example.com.", "www.example.com", 443, True),
        ("EXAMPLE.com", "www.Example.COM.", 443, True),
        ("*", "anything.example", 1, True),
        ("foo, *", "anything.example", 1, True),  # "*" anywhere in the list, as Go
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        ("localhost 127.0.0.1", "127.0.0.1", 80, True),  # white space separates too
        ("127.0.0.1", "127.0.0.1", 80, True),
        ("127.0.0.1:8080", "127.0.0.1", 80, False),
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("10.0.0.0/8", "10.20.30.40", 80, True),
        ("10.0.0.0/8", "11.0.0.1", 80, False),
        ("10.1.2.3/8", "10.9.9.9", 80, True),  # host bits masked off, as curl and Go do
        ("10.0.0.0/8", "ten.example", 80, False),  # no DNS: names never match addresses
        ("::1", "::1", 80, True),
        ("::1", "[::1]", 80, True),
        ("[::1]", "::1", 80, True),
        ("[::1]:443", "[::1]", 443, True),
        ("[::1]:443", "::1", 80, False),
        ("fd00::/8", "[fd00::5]", 443, True),
        ("fd00::/8", "fe80::1", 443, False),
        ("0.0.1", "10.0.0.1", 80, False),  # addresses never suffix-match names (Go would)
        ("localhost", "127.0.0.1", 80, False),  # no implicit loopback bypass (Go has one)
        ("", "example.com", 80, False),
        (",,", "example.com", 80, False),
    ],
)
def test_no_proxy_entries(no_proxy: str, host: str, port: int, bypass: bool) -> None:
    rules = rules_from_env(
        {"HTTP_PROXY": "h.proxy:3128", "HTTPS_PROXY": "s.proxy:3129", "NO_PROXY": no_proxy}
    )
    for scheme, proxy in (("http", HTTP), ("https", HTTPS)):  # the same for plain and CONNECT
        assert rules.choose(host, port, scheme) == (None if bypass else proxy)


def test_lower_case_no_proxy_wins() -> None:
    rules = rules_from_env({"http_proxy": "h.proxy:3128", "no_proxy": "a.example", "NO_PROXY": "b.example"})
    assert rules.choose("a.example", 80, "http") is None
    assert rules.choose("b.example", 80, "http") == HTTP


def test_malformed_no_proxy_entries_are_ignored_and_reported() -> None:
    sites, ignored = parse_no_proxy("good.example, bad/entry, host:0, host:http, [::1]x, *:443, .")
    assert [site.text for site in sites] == ["good.example"]
    assert ignored == ("bad/entry", "host:0", "host:http", "[::1]x", "*:443", ".")
    assert rules_from_env({"no_proxy": "bad/entry"}).ignored == ("bad/entry",)
