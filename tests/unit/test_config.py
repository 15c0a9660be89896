"""Config: defaults (docs/architecture.md#limits-and-their-defaults), validation that names the field."""

from __future__ import annotations

import pytest

from tinyproxy_py import Config
from tinyproxy_py.settings.config import describe


def test_defaults_match_the_design_table() -> None:
    config = Config()
    assert (config.host, config.port) == (("127.0.0.1",), 8888)
    assert Config(host="::1").host == ("::1",)  # one address as a string, as before
    assert config.connect_timeout == 10 and config.read_timeout == 60
    assert config.pool_idle_timeout == 90 and config.pool_hosts == 100 and config.pool_idle_per_host == 10
    assert config.header_timeout == 10 and config.client_idle_timeout == 30
    assert config.tunnel_idle_timeout == 300 and config.tunnel_linger == 30
    assert config.max_clients == 256 and config.max_tunnels == 10_000
    assert config.max_head_bytes == 64 * 1024 and config.max_headers == 100
    assert config.shutdown_grace == 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"read_timeout": 0.0}, "read_timeout must be greater than 0"),
        ({"connect_timeout": -1.0}, "connect_timeout must be a non-negative number"),
        ({"port": 70000}, "port must be within"),
        ({"max_clients": 0}, "max_clients must be at least 1"),
        ({"pool_idle_per_host": 0}, "pool_idle_per_host must be at least 1"),
        ({"max_head_bytes": 100}, "max_head_bytes must be at least max_line_bytes"),
        ({"max_tunnels": True}, "max_tunnels must be a non-negative number"),
        # Settings that would otherwise break every request, refused when Config is built:
        ({"header_timeout": float("nan")}, "header_timeout must be a finite number"),
        ({"read_timeout": float("inf")}, "read_timeout must be a finite number"),
        ({"auth_realm": "a\r\nb"}, "auth_realm must be printable ASCII"),
        ({"auth_realm": "r\u00e9alm"}, "auth_realm must be printable ASCII"),
        ({"auth_realm": 'say "hi"'}, "auth_realm must be printable ASCII"),
        ({"via_name": "v\nX: 1"}, "via_name must be a token"),
        ({"via_name": "v\u00efa"}, "via_name must be a token"),
        ({"add_headers": ("Content-Length: 5",)}, "add_headers cannot set Content-Length"),
        ({"add_headers": ("transfer-encoding: chunked",)}, "add_headers cannot set transfer-encoding"),
        ({"add_headers": ("Host: other",)}, "add_headers cannot set Host"),
        ({"add_headers": ("Connection: close",)}, "add_headers cannot set Connection"),
    ],
)
def test_invalid_values_are_refused_with_the_field_name(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config(**changes)  # type: ignore[arg-type]


def test_every_setting_is_described() -> None:
    names = [name for name, _, _, help_text in describe() if help_text]
    assert names == list(Config.__dataclass_fields__)


def test_proxy_protocol_needs_the_balancers_named() -> None:
    with pytest.raises(ValueError, match="proxy_protocol needs --proxy-protocol-from"):
        Config(proxy_protocol="v2")
    assert Config(proxy_protocol="any", proxy_protocol_from=("10.0.0.0/8",)).proxy_protocol == "any"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tls_port": 8443}, "tls_port needs --tls-cert"),
        ({"tls_key": "k.pem"}, "tls_key needs --tls-cert"),
        ({"tls_cert": "c.pem", "tls_port": 8888}, "tls_port must differ from --port"),
        ({"tls_cert": "c.pem", "tls_port": 70000}, "tls_port must be within 0..65535"),
    ],
)
def test_a_tls_listener_needs_its_certificate_and_a_port_of_its_own(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Config(**changes)  # type: ignore[arg-type]
    assert Config(tls_cert="c.pem", tls_port=0).tls_port == 0  # 0: a free port, as --port
