"""tinyproxy.conf(5)-style files and TINYPROXY_PY_* variables, parsed into Config fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyproxy_py import Config
from tinyproxy_py.settings import conffile
from tinyproxy_py.settings.conffile import ConfigFileError, from_environment, load_file, parse

DEBIAN_DEFAULT = """\
##
## tinyproxy.conf -- tinyproxy daemon configuration file
##
User tinyproxy
Group tinyproxy
Port 8888
Timeout 600
DefaultErrorFile "/usr/share/tinyproxy/default.html"
StatFile "/usr/share/tinyproxy/stats.html"
LogFile "/var/log/tinyproxy/tinyproxy.log"
LogLevel Info
PidFile "/run/tinyproxy/tinyproxy.pid"
MaxClients 100
Allow 127.0.0.1
Allow ::1
ViaProxyName "tinyproxy"
#ConnectPort 443
#ConnectPort 563
"""


def test_debian_default_config_maps_onto_our_settings() -> None:
    settings = parse(DEBIAN_DEFAULT, "tinyproxy.conf")
    config = Config(**settings.values)
    assert config.port == 8888 and config.max_clients == 100
    assert config.allow == ("127.0.0.1", "::1")
    assert config.via_name == "tinyproxy"
    assert config.connect_ports == (0,)  # no ConnectPort line: every port, as in tinyproxy
    assert config.log_file == "/var/log/tinyproxy/tinyproxy.log"
    assert config.pid_file == "/run/tinyproxy/tinyproxy.pid"
    assert config.log_level == "info"
    # tinyproxy's one idle Timeout becomes our three idle-type timeouts.
    assert (config.read_timeout, config.client_idle_timeout, config.tunnel_idle_timeout) == (600, 600, 600)
    assert config.connect_timeout == 10.0  # not an idle timeout: untouched


def test_unsupported_directives_warn_with_file_and_line() -> None:
    warnings = parse(DEBIAN_DEFAULT, "tinyproxy.conf").warnings
    assert (
        warnings[0]
        == "tinyproxy.conf:8: DefaultErrorFile: not supported, ignored (custom error pages are not supported)"
    )
    assert [w.split(":")[1] for w in warnings] == ["8", "9"]
    values = parse(DEBIAN_DEFAULT, "tinyproxy.conf").values
    assert (values["user"], values["group"]) == ("tinyproxy", "tinyproxy")  # dropped to, as root


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Port 8888\nAlow 10.0.0.0/8\n", "f.conf:2: Alow: unknown directive; did you mean Allow?"),
        ("MaxClient 5\n", "f.conf:1: MaxClient: unknown directive; did you mean MaxClients?"),
        ("TlsCrt proxy.pem\n", "f.conf:1: TlsCrt: unknown directive; did you mean TlsCert?"),
        ("Frobnicate yes\n", "f.conf:1: Frobnicate: unknown directive"),
    ],
)
def test_a_directive_nobody_knows_stops_the_start_with_a_guess(text: str, message: str) -> None:
    """tinyproxy refuses it too; starting without the rule the user meant would be worse."""
    with pytest.raises(ConfigFileError) as refused:
        parse(text, "f.conf")
    assert str(refused.value) == message


def test_explicit_timeouts_win_over_timeout_in_any_order() -> None:
    values = parse("ReadTimeout 5\nTimeout 100\nTunnelIdleTimeout 7\n").values
    assert (values["read_timeout"], values["client_idle_timeout"], values["tunnel_idle_timeout"]) == (
        5,
        100,
        7,
    )


def test_keywords_any_case_quotes_and_comments() -> None:
    values = parse('lIsTeN "::1"   # trailing comment\nMAXCLIENTS 7\n\n   # indented comment\n').values
    assert values == {"host": ("::1",), "max_clients": 7, "connect_ports": (0,)}  # no ConnectPort: any


def test_tinyproxy_shaped_directives() -> None:
    text = (
        'BasicAuth alice "s3cret pass"\nBasicAuthRealm "Corp proxy"\nAddHeader "X-Env" "dev box"\n'
        'DisableViaHeader Yes\nXTinyproxy Yes\nLogLevel Connect\nStatHost "stats.local"\nDeny 10.0.0.0/8\n'
    )
    config = Config(**parse(text).values)
    assert config.basic_auth == ("alice:s3cret pass",)
    assert config.auth_realm == "Corp proxy"
    assert config.add_headers == ("X-Env: dev box",)
    assert config.via_name == "" and config.x_tinyproxy is True
    assert config.log_level == "info" and config.stat_host == "stats.local"
    assert config.deny == ("10.0.0.0/8",)


def test_our_own_limits_have_keywords() -> None:
    text = "ConnectTimeout 3\nPoolIdleTimeout 20\nMaxTunnels 50\nTunnelLinger 4\nForwardedFor yes\n"
    config = Config(**parse(text).values)
    assert (config.connect_timeout, config.pool_idle_timeout, config.max_tunnels) == (3, 20, 50)
    assert config.tunnel_linger == 4 and config.forwarded_for is True


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Port eighty\n", "f.conf:1: Port: takes a whole number, got 'eighty'"),
        ("Port 80\nMaxClients\n", "f.conf:2: MaxClients: needs a value"),
        ("Listen ::1\nListen ::1\n", "f.conf:2: Listen: lists '::1' twice"),
        ("BasicAuth onlyuser\n", "f.conf:1: BasicAuth: takes a user and a password"),
        ('ViaProxyName "unclosed\n', "f.conf:1: No closing quotation"),
        ("LogLevel Loud\n", "f.conf:1: LogLevel: unknown level"),
        ("DisableViaHeader maybe\n", "f.conf:1: DisableViaHeader: takes yes or no"),
        # Values Config refuses are named by the line too, as written, never the field name:
        ("Port 1\nAllow 10.0.0.0/33\n", "f.conf:2: Allow: '10.0.0.0/33' is not an address or CIDR block"),
        ("Timeout -5\n", "f.conf:1: Timeout: must be a non-negative number, got -5.0"),
        ("Timeout nan\n", "f.conf:1: Timeout: must be a finite number, got nan"),
        ("BasicAuthRealm 'a\\b'\n", "f.conf:1: BasicAuthRealm: must be printable ASCII"),
        ('ViaProxyName "v w"\n', "f.conf:1: ViaProxyName: must be a token"),
        (
            'AddHeader "X-A" "1"\nAddHeader "Content-Length" "5"\n',
            "f.conf:2: AddHeader: cannot set Content-Length",
        ),
        ("ConnectPort 443\nConnectPort 70000\n", "f.conf:2: ConnectPort: must be ports"),
        # A line ends at LF alone: a lone CR or U+0085 does not start a directive.
        ("Allow 10.0.0.1\rAllow 0.0.0.0/0\n", "f.conf:1: Allow: 'Allow' is not an address"),
        ("Port 1\nAllow 10.0.0.1\x85Allow 0.0.0.0/0\n", "f.conf:2: Allow: '10.0.0.1"),
        ("HttpPort 80\nHttpPort 90-80\n", "f.conf:2: HttpPort: must be ports or ranges of ports"),
        ("MaxClients 0\n", "f.conf:1: MaxClients: must be at least 1"),
        ("ReadTimeout 0\n", "f.conf:1: ReadTimeout: must be greater than 0"),
    ],
)
def test_bad_values_name_file_line_and_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigFileError, match=reason.replace("(", r"\(")):
        parse(text, "f.conf")


@pytest.mark.parametrize(
    ("filter_type", "lines", "blocked", "passed"),
    [
        ("", ["ads\\.example\\.com", "^tracker"], "ads.example.com", "example.com"),
        ("FilterType ere\n", ["^tracker[0-9]+\\."], "tracker7.net", "mytracker7.net"),
        ("FilterType fnmatch\n", ["*.doubleclick.net"], "ad.doubleclick.net", "doubleclick.net.evil"),
    ],
)
def test_filter_files(tmp_path: Path, filter_type: str, lines: list[str], blocked: str, passed: str) -> None:
    from tinyproxy_py.settings.policy import Policy

    (tmp_path / "filter").write_text("# blocked hosts\n" + "\n".join(lines) + "\n")
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f'Filter "filter"\n{filter_type}')
    policy = Policy(Config(**load_file(str(conf)).values))
    policy.check_host(passed)
    with pytest.raises(Exception, match="blocked by filter"):
        policy.check_host(blocked)


def test_filter_default_deny_turns_the_list_into_an_allow_list(tmp_path: Path) -> None:
    (tmp_path / "filter").write_text("^localhost$\n")
    conf = tmp_path / "c.conf"
    conf.write_text('Filter "filter"\nFilterDefaultDeny Yes\n')
    assert Config(**load_file(str(conf)).values).filter_mode == "allow"


def test_missing_filter_file_names_the_line(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text('Port 1\nFilter "nope"\n')
    with pytest.raises(ConfigFileError, match=r"c.conf:2: Filter: cannot read"):
        load_file(str(conf))


def test_environment_variables() -> None:
    values = from_environment(
        {"TINYPROXY_PY_PORT": "9000", "TINYPROXY_PY_ALLOW": "10.0.0.0/8, 192.168.0.0/16", "OTHER": "x"}
    )
    assert values == {"port": 9000, "allow": ("10.0.0.0/8", "192.168.0.0/16")}
    with pytest.raises(ValueError, match=r"^TINYPROXY_PY_MAX_CLIENTS: takes a whole number, got 'many'$"):
        from_environment({"TINYPROXY_PY_MAX_CLIENTS": "many"})
    assert from_environment({"TINYPROXY_PY_CONNECT_PORTS": "443,8443"}) == {"connect_ports": (443, 8443)}
    with pytest.raises(ValueError, match=r"^TINYPROXY_PY_READ_TIMEOUT: must be a finite number, got nan$"):
        from_environment({"TINYPROXY_PY_READ_TIMEOUT": "nan"})


def test_crlf_files_read_as_lf_files() -> None:
    assert parse("Port 8\r\nAllow 10.0.0.1\r\nAllow ::1\r\n").values["allow"] == ("10.0.0.1", "::1")


def test_repeated_directives_cost_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line's values are checked once, and the whole list once at the end: a file
    of n Allow lines must not re-check the list on every line (8,000 lines took 109 s)."""
    checks: list[int] = []
    real = conffile.check_setting

    def counting(name: str, value: object) -> None:
        checks.append(len(value) if isinstance(value, tuple) else 1)
        real(name, value)

    monkeypatch.setattr(conffile, "check_setting", counting)
    lines = 2000
    result = parse("".join(f"Allow 10.0.{i // 256}.{i % 256}\n" for i in range(lines)))
    assert len(result.values["allow"]) == lines
    assert sum(checks) <= 2 * lines + 10, sum(checks)


def test_tls_listener_directives() -> None:
    config = Config(**parse("Port 8888\nTlsPort 8443\nTlsCert proxy.pem\nTlsKey proxy-key.pem\n").values)
    assert (config.port, config.tls_port, config.tls_cert, config.tls_key) == (
        8888,
        8443,
        "proxy.pem",
        "proxy-key.pem",
    )
    with pytest.raises(ConfigFileError, match=r"f\.conf:1: TlsPort: takes a whole number, got 'https'"):
        parse("TlsPort https\n", "f.conf")


def test_files_that_cannot_be_read_are_named_in_words(tmp_path: Path) -> None:
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"Port 80\n\xd0\xcf\x11\xe0")
    with pytest.raises(ConfigFileError, match=r"bin\.conf: not a text file \(byte 8 is not UTF-8\)$"):
        load_file(str(binary))
    with pytest.raises(OSError, match=r"^cannot read the auth file .*nope\.txt: No such file or directory$"):
        conffile.load_credentials(str(tmp_path / "nope.txt"))
    (tmp_path / "hosts.txt").write_text("ok\\.example\n(bad\n")
    conf = tmp_path / "c.conf"
    conf.write_text('Filter "hosts.txt"\n')
    with pytest.raises(
        ConfigFileError, match=r"c\.conf:1: Filter: .*hosts\.txt:2: bad regular expression '\(bad'"
    ):
        load_file(str(conf))
