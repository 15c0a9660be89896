"""Policy decisions as plain function calls: no sockets, no threads."""

from __future__ import annotations

import base64
import hmac
import ipaddress
from pathlib import Path

import pytest

from tinyproxy_py import Config
from tinyproxy_py.errors import Forbidden, LoopDetected, ProxyAuthRequired, ProxyError
from tinyproxy_py.settings.conffile import load_file
from tinyproxy_py.settings.config import SettingError
from tinyproxy_py.settings.policy import Policy, check_exposure, parse_host_patterns, parse_networks


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"])
def test_default_acl_admits_loopback(address: str) -> None:
    Policy(Config()).check_client(address)


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.2", "2001:db8::1", "::ffff:10.0.0.1"])
def test_default_acl_refuses_everyone_else(address: str) -> None:
    with pytest.raises(Forbidden, match="not in the allow list"):
        Policy(Config()).check_client(address)


def test_deny_is_checked_before_allow_and_allow_replaces_the_default() -> None:
    policy = Policy(Config(allow=("10.0.0.0/8", "2001:db8::/32"), deny=("10.0.0.5", "2001:db8::bad")))
    policy.check_client("10.0.0.4")
    policy.check_client("2001:db8::1")
    for refused in ("10.0.0.5", "2001:db8::bad", "127.0.0.1"):
        with pytest.raises(Forbidden):
            policy.check_client(refused)


def test_rules_written_as_ipv4_mapped_addresses_match_ipv4_clients_and_destinations() -> None:
    """A dual-stack listener reports ::ffff:a.b.c.d, and addresses are judged as IPv4: a
    rule spelled the same way must not silently never match."""
    assert parse_networks(["::ffff:10.0.0.0/104", "::ffff:127.0.0.2"]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.2/32"),
    )
    policy = Policy(Config(deny=("::ffff:127.0.0.2",), deny_destinations=("::ffff:10.0.0.0/104",)))
    for client in ("127.0.0.2", "::ffff:127.0.0.2"):
        with pytest.raises(Forbidden):
            policy.check_client(client)
    judge = policy.destination_judge("127.0.0.1", [])
    with pytest.raises(Forbidden):
        judge(ipaddress.ip_address("10.1.2.3"), 80)


def test_bad_acl_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="not an address or CIDR block"):
        parse_networks(["10.0.0.0/33"])


def test_no_users_means_no_authentication() -> None:
    Policy(Config()).check_credentials(None)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        basic("u", "wrong"),
        basic("x", "p"),
        "Basic !!!notbase64",
        "Bearer abc",
        basic("u", "p")[:-2],
    ],
)
def test_missing_or_wrong_credentials_get_407_with_a_challenge(header: str | None) -> None:
    policy = Policy(Config(basic_auth=("u:p", "other:secret"), auth_realm="corp"))
    with pytest.raises(ProxyAuthRequired) as info:
        policy.check_credentials(header)
    assert info.value.status == 407
    assert info.value.headers == (("Proxy-Authenticate", 'Basic realm="corp"'),)


@pytest.mark.parametrize("credential", ["bob:", "bob", ":secret"])
def test_credentials_without_a_user_or_a_password_are_refused(credential: str) -> None:
    with pytest.raises(ValueError, match=r"empty|USER:PASSWORD"):
        Policy(Config(basic_auth=(credential,)))


def test_right_credentials_pass_for_any_configured_user() -> None:
    policy = Policy(Config(basic_auth=("u:p",)), users=[("file-user", "pa:ss")])
    policy.check_credentials(basic("u", "p"))
    policy.check_credentials(basic("file-user", "pa:ss"))
    policy.check_credentials(basic("u", "p").replace("Basic", "basic"))


def test_credentials_are_compared_in_constant_time_against_every_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    policy = Policy(Config(basic_auth=("first:1", "second:2", "third:3")))
    for header in (basic("first", "1"), basic("third", "3"), basic("nobody", "x")):
        calls.clear()
        try:
            policy.check_credentials(header)
        except ProxyAuthRequired:
            pass
        # Every user is compared, with equal-length digests, whichever matched.
        assert len(calls) == 3
        assert {len(a) for a, _ in calls} == {32}


def test_loop_by_our_via_token() -> None:
    policy = Policy(Config(), via_token="tinyproxy-py (abcd1234)")
    policy.check_loop("example.org", 80, ["1.1 tinyproxy-py (ffff0000)"], [("127.0.0.1", 8888)])
    with pytest.raises(LoopDetected):
        policy.check_loop("example.org", 80, ["1.0 a", "1.1 tinyproxy-py (abcd1234)"], [("127.0.0.1", 8888)])


@pytest.mark.parametrize(
    ("host", "listening", "loops"),
    [
        ("127.0.0.1", ("127.0.0.1", 8888), True),
        ("localhost", ("127.0.0.1", 8888), True),
        ("127.0.0.2", ("127.0.0.1", 8888), True),
        ("::1", ("::1", 8888), True),
        ("127.0.0.1", ("0.0.0.0", 8888), True),
        ("10.1.1.1", ("10.1.1.1", 8888), True),
        ("10.1.1.2", ("10.1.1.1", 8888), False),
        ("example.org", ("127.0.0.1", 8888), False),
    ],
)
def test_loop_by_target_address(host: str, listening: tuple[str, int], loops: bool) -> None:
    policy = Policy(Config())
    also = ("192.0.2.1", 8888)  # a second listener elsewhere changes nothing
    policy.check_loop(host, listening[1] + 1, [], [listening, also])
    if loops:
        with pytest.raises(LoopDetected):
            policy.check_loop(host, listening[1], [], [also, listening])
    else:
        policy.check_loop(host, listening[1], [], [also, listening])


def test_connect_ports_auto_any_and_listed() -> None:
    """'auto' (the default): every port while only this machine's clients may connect;
    443 and 563 once others may (an allow rule beyond them, or credentials)."""
    Policy(Config()).check_connect_port(8443)  # loopback clients only
    Policy(Config(allow=("127.0.0.1", "::1"))).check_connect_port(8443)
    for opened in (Config(allow=("10.0.0.0/8",)), Config(basic_auth=("u:p",))):
        policy = Policy(opened)
        policy.check_connect_port(443)
        with pytest.raises(
            Forbidden, match=r"port 8443 is not allowed \(allowed: 443, 563; see --connect-port\)"
        ):
            policy.check_connect_port(8443)
    Policy(Config(allow=("10.0.0.0/8",), connect_ports=(0,))).check_connect_port(8443)
    with pytest.raises(Forbidden, match="port 443 is not allowed"):
        Policy(Config(connect_ports=(8443,))).check_connect_port(443)


def test_plain_requests_reach_web_ports_only_by_default() -> None:
    default = Policy(Config())
    for port in (80, 443, 591, 777, 1025, 8080, 11211, 65535):
        default.check_http_port(port)
    for port in (1, 22, 25, 110, 143, 1024):
        with pytest.raises(Forbidden, match=f"port {port} are not allowed") as refused:
            default.check_http_port(port)
        assert refused.value.cause == "http-port"
    Policy(Config(http_ports=("any",))).check_http_port(25)
    narrow = Policy(Config(http_ports=("80", "8000-8999")))
    for port in (80, 8000, 8999):
        narrow.check_http_port(port)
    for port in (443, 7999, 9000):
        with pytest.raises(Forbidden):
            narrow.check_http_port(port)


@pytest.mark.parametrize("text", ["0", "65536", "9-1", "80-", "http", "1-2-3", ""])
def test_a_bad_http_port_is_refused(text: str) -> None:
    with pytest.raises(SettingError, match="must be ports or ranges of ports"):
        Config(http_ports=("80", text))


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com.", True),
        ("example.com", "www.example.com", False),
        ("*.example.com", "www.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        (r"re:^ads\d+\.", "ads12.tracker.net", True),
        (r"re:^ads\d+\.", "myads1.tracker.net", False),
    ],
)
def test_host_patterns(pattern: str, host: str, matches: bool) -> None:
    assert parse_host_patterns([pattern])[0].matches(host) is matches


def test_filter_modes_name_the_rule() -> None:
    deny = Policy(Config(filter_hosts=("*.ads.example",)))
    deny.check_host("example.org")
    with pytest.raises(Forbidden, match=r"blocked by filter '\*\.ads\.example'"):
        deny.check_host("x.ads.example")
    allow = Policy(Config(filter_hosts=("127.0.0.1", "localhost"), filter_mode="allow"))
    allow.check_host("localhost")
    with pytest.raises(Forbidden, match="not in the allowed host filters"):
        allow.check_host("accounts.example.com")


def test_bad_regex_filter_is_refused() -> None:
    with pytest.raises(ValueError, match="bad regular expression"):
        parse_host_patterns(["re:(unclosed"])


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_open_listener_without_allow_rule_or_auth_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="--allow CIDR"):
        check_exposure(Config(host=host))


@pytest.mark.parametrize(
    "config",
    [
        Config(host="127.0.0.1"),
        Config(host="::1"),
        Config(host="0.0.0.0", allow=("10.0.0.0/8",)),
        Config(host="0.0.0.0", basic_auth=("u:p",)),
    ],
)
def test_loopback_or_deliberately_opened_listener_is_accepted(config: Config) -> None:
    check_exposure(config)


def test_credentials_without_an_allow_list_let_any_address_try() -> None:
    """As the README says: credentials alone open the proxy; they still have to be right."""
    guarded = Policy(Config(host="0.0.0.0", basic_auth=("u:p",)))
    guarded.check_client("192.0.2.7")
    with pytest.raises(ProxyError) as refused:
        guarded.check_credentials(None)
    assert refused.value.status == 407
    with pytest.raises(ProxyError, match="not in the allow list"):
        Policy(Config()).check_client("192.0.2.7")  # no credentials: loopback only
    with pytest.raises(ProxyError, match="not in the allow list"):  # an explicit list still rules
        Policy(Config(allow=("10.0.0.0/8",), basic_auth=("u:p",))).check_client("192.0.2.7")


OWN = [("127.0.0.1", 8888), ("::", 3128)]


@pytest.mark.parametrize(
    ("client", "address", "port", "verdict"),
    [
        # Loops: any address that reaches a listener, with its port, for any client.
        ("127.0.0.1", "127.0.0.1", 8888, LoopDetected),
        ("127.0.0.1", "0.0.0.0", 8888, LoopDetected),  # dialling 0.0.0.0 reaches loopback
        ("127.0.0.1", "::ffff:127.0.0.1", 8888, LoopDetected),
        ("127.0.0.1", "::1", 3128, LoopDetected),  # the wildcard listener answers on ::1
        ("127.0.0.1", "127.0.0.1", 8889, None),
        # A client on this machine may reach its local services.
        ("127.0.0.1", "127.0.0.1", 80, None),
        ("::1", "169.254.1.1", 80, None),
        # Another machine may not: loopback, link-local (metadata), unspecified.
        ("10.0.0.7", "127.0.0.1", 80, Forbidden),
        ("10.0.0.7", "::1", 80, Forbidden),
        ("10.0.0.7", "169.254.169.254", 80, Forbidden),
        ("10.0.0.7", "fe80::1", 80, Forbidden),
        ("10.0.0.7", "fd00:ec2::254", 80, Forbidden),  # metadata outside link-local
        ("10.0.0.7", "100.100.100.200", 80, Forbidden),
        ("127.0.0.1", "100.100.100.200", 80, None),
        ("10.0.0.7", "100.100.100.201", 80, None),
        ("10.0.0.7", "0.0.0.0", 80, Forbidden),
        ("10.0.0.7", "93.184.215.14", 80, None),
        ("10.0.0.7", "10.0.0.8", 80, None),
    ],
)
def test_destination_judge(client: str, address: str, port: int, verdict: type[Exception] | None) -> None:
    judge = Policy(Config()).destination_judge(client, OWN)
    if verdict is None:
        judge(ipaddress.ip_address(address), port)
    else:
        with pytest.raises(verdict):
            judge(ipaddress.ip_address(address), port)


def test_destination_settings_deny_more_and_allow_what_the_default_refuses() -> None:
    config = Config(deny_destinations=("10.0.0.0/8",), allow_destinations=("169.254.169.254",))
    judge = Policy(config).destination_judge("192.0.2.9", OWN)
    with pytest.raises(Forbidden):
        judge(ipaddress.ip_address("10.1.2.3"), 80)
    judge(ipaddress.ip_address("169.254.169.254"), 80)
    with pytest.raises(Forbidden):
        Policy(config).destination_judge("127.0.0.1", OWN)(ipaddress.ip_address("10.1.2.3"), 80)


def test_a_wildcard_listener_answers_on_every_address_of_this_host() -> None:
    """Own addresses come from the dialer (it can bind only local ones): the policy asks."""
    lan = ipaddress.ip_address("192.0.2.5")
    policy = Policy(Config())
    judge = policy.destination_judge("127.0.0.1", [("0.0.0.0", 8888)], is_local=lambda a: a == lan)
    with pytest.raises(LoopDetected):
        judge(lan, 8888)
    judge(lan, 80)  # a local client may reach the host's other services
    with pytest.raises(Forbidden):
        policy.destination_judge("10.0.0.7", [("0.0.0.0", 8888)], is_local=lambda a: a == lan)(lan, 80)


def test_an_ipv4_wildcard_does_not_answer_on_ipv6_loopback() -> None:
    judge = Policy(Config()).destination_judge("127.0.0.1", [("0.0.0.0", 8888)])
    judge(ipaddress.ip_address("::1"), 8888)  # nothing listens there: no loop
    with pytest.raises(LoopDetected):
        judge(ipaddress.ip_address("127.0.0.9"), 8888)
    with pytest.raises(LoopDetected):
        Policy(Config()).destination_judge("127.0.0.1", [("::", 8888)])(
            ipaddress.ip_address("127.0.0.1"), 8888
        )


def test_a_filter_files_glob_line_is_named_as_written_when_it_blocks(tmp_path: Path) -> None:
    (tmp_path / "filter").write_text("*.doubleclick.net\n")
    conf = tmp_path / "c.conf"
    conf.write_text('Filter "filter"\nFilterType fnmatch\n')
    policy = Policy(Config(**load_file(str(conf)).values))
    with pytest.raises(
        Forbidden, match=r"^host ad\.doubleclick\.net is blocked by filter 'glob:\*\.doubleclick\.net'$"
    ):
        policy.check_host("ad.doubleclick.net")
    policy.check_host("doubleclick.net.evil")
