"""Fault rules as text and keywords, matching order, counts and seeded probability."""

from __future__ import annotations

import pytest

from tinyproxy_py.settings.conffile import parse
from tinyproxy_py.settings.config import Config, SettingError
from tinyproxy_py.settings.faults import MAX_RULES, FaultError, Faults, from_json, parse_rule


def test_text_and_keywords_make_the_same_rule() -> None:
    text = parse_rule("host=api.test kind=latency ms=300 jitter=20 direction=both port=8080")
    words = parse_rule(host="api.test", kind="latency", ms=300, jitter=20, direction="both", port=8080)
    assert (text.kind, text.settings, text.host, text.port) == (
        words.kind,
        words.settings,
        words.host,
        words.port,
    )
    assert parse_rule(text.text).settings == text.settings  # the text round-trips


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("host=a kind=nope", "kind must be one of"),
        ("host=a kind=latency", "latency needs ms="),
        ("host=a kind=latency ms=fast", "ms must be a number"),
        ("host=a kind=latency ms=-1", "ms must be between 0 and 8.64e"),
        ("host=a kind=latency ms=nan", "ms must be between"),
        ("host=a kind=slow_head ms=1e300", "ms must be between"),
        ("host=a kind=bandwidth rate=inf", "rate must be between"),
        ("host=a kind=limit_data bytes=1e999", "bytes must be a number"),
        ("host=a kind=latency ms=1 status=503", "not status"),
        ("host=a kind=latency ms=1 direction=sideways", "direction must be"),
        ("host=a kind=status status=999", "status must be between 0 and 599"),
        ("host=a kind=status status=101", "status must be 200-599"),
        ("host=a kind=status status=304", "not 204 or 304"),
        ("host=a kind=status 'retry_after=1\r\nSet-Cookie: a=b'", "printable text on one line"),
        ("host=a kind=status p=2", "p must be between 0 and 1"),
        ("host=a kind=refuse oops", "is not key=value"),
        ("host=a kind='refuse", "cannot split"),
    ],
)
def test_a_bad_rule_says_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(FaultError, match=complaint):
        parse_rule(text)


def test_the_first_rule_that_matches_and_fires_wins() -> None:
    faults = Faults()
    faults.add("host=*.api.test kind=fail_first n=1")
    faults.add("host=*.api.test kind=latency ms=5 method=GET path=/slow")
    faults.add("host=* kind=refuse port=9")
    assert faults.match("eu.api.test", 80, "GET", "/slow").kind == "fail_first"  # type: ignore[union-attr]
    assert faults.match("eu.api.test", 80, "GET", "/slow").kind == "latency"  # type: ignore[union-attr]
    assert faults.match("eu.api.test", 80, "POST", "/slow") is None
    assert faults.match("api.test", 80, "GET", "/slow") is None  # *.api.test names subdomains
    assert faults.match("other", 9, "CONNECT", None).kind == "refuse"  # type: ignore[union-attr]
    assert faults.match("other", 10, "GET", "/") is None


def test_a_tunnel_matches_only_kinds_that_apply_to_bytes() -> None:
    faults = Faults()
    faults.add("host=t kind=slow_head")
    assert faults.match("t", 443, "CONNECT", None) is None
    faults.add("host=t kind=latency ms=1")
    assert faults.match("t", 443, "CONNECT", None).kind == "latency"  # type: ignore[union-attr]
    faults.add("host=t kind=latency ms=1 path=/x")  # a path never matches a tunnel
    assert [r.matched for r in faults.rules()] == [0, 1, 0]


def test_a_2xx_status_never_answers_a_connect() -> None:
    faults = Faults()
    faults.add("host=t kind=status status=200")
    assert faults.match("t", 443, "CONNECT", None) is None
    assert faults.match("t", 80, "GET", "/") is not None


def test_the_rules_are_bounded() -> None:
    faults = Faults()
    for _ in range(MAX_RULES):
        faults.add("host=h kind=refuse")
    with pytest.raises(FaultError, match="remove some first"):
        faults.add("host=h kind=refuse")


def test_first_and_after_count_matches() -> None:
    faults = Faults()
    handle = faults.add("host=h kind=status after=2 first=3")
    outcomes = [faults.match("h", 80, "GET", "/") is not None for _ in range(7)]
    assert outcomes == [False, False, True, True, True, False, False]
    assert (handle.rule.matched, handle.applied) == (7, 3)


def test_a_seeded_probability_repeats_its_sequence() -> None:
    def run() -> list[bool]:
        faults = Faults()
        faults.add("host=h kind=status p=0.3 seed=42")
        return [faults.match("h", 80, "GET", "/") is not None for _ in range(200)]

    first, second = run(), run()
    assert first == second
    assert 40 <= sum(first) <= 80  # about 30 %
    unseeded = Faults()
    unseeded.add("host=h kind=status p=0.3 seed=7")
    assert [unseeded.match("h", 80, "GET", "/") is not None for _ in range(200)] != first


def test_removing_a_rule_ends_it_and_reports_the_fire() -> None:
    fired: list[str] = []
    faults = Faults(on_fire=lambda rule, what, count: fired.append(f"{rule.kind} {what} #{count}"))
    with faults.add("host=h kind=refuse") as handle:
        assert faults.match("h", 80, "GET", "/a") is not None
    assert not handle.rule.active and faults.match("h", 80, "GET", "/a") is None
    assert fired == ["refuse GET h:80/a #1"]
    assert faults.remove(handle.rule.id) is False


def test_json_documents_and_config_sources() -> None:
    assert from_json({"rule": "host=h kind=latency", "ms": 7}).settings["ms"] == 7
    with pytest.raises(FaultError):
        from_json({"rule": 3})
    faults = Faults()
    faults.add("host=mine kind=refuse")
    faults.replace_config_rules(("host=a kind=refuse",))
    faults.replace_config_rules(("host=b kind=refuse",))
    assert [(r.host, r.source) for r in faults.rules()] == [("mine", "api"), ("b", "config")]


def test_config_and_config_file_take_rules() -> None:
    assert Config(faults=("host=a kind=refuse",)).faults == ("host=a kind=refuse",)
    with pytest.raises(SettingError, match="kind must be one of"):
        Config(faults=("host=a kind=nope",))
    read = parse('Fault host=a kind=status body="be right back"\nFault "host=b kind=latency ms=3"\n')
    rules = [parse_rule(text) for text in read.values["faults"]]
    assert [(r.host, r.kind) for r in rules] == [("a", "status"), ("b", "latency")]
    assert rules[0].settings["body"] == "be right back"
