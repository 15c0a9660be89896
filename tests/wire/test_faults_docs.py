"""docs/faults.md as written: its pytest examples run in a user's suite of their own, and
every rule, table and JSON body it shows is one the code accepts."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tinyproxy_py.settings.conffile import parse as parse_config_file
from tinyproxy_py.settings.faults import KINDS, SELECTORS, from_json, parse_rule

from ..kit.waits import MUST_NOT_EXPIRE
from ..support import client_env

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "faults.md"
# A python block run by the test follows a line `<!-- tested -->` (a test file of its
# own) or `<!-- tested: NAME.py -->` (written as NAME.py, e.g. the suite's conftest.py).
TESTED = re.compile(r"^<!-- tested(?:: ([\w.]+))? -->\n```python\n(.*?)^```", re.M | re.S)
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def marked_blocks(text: str) -> list[tuple[str, str]]:
    """(file name, code) of the marked blocks, in the doc's order."""
    return [
        (name or f"test_faults_doc_{number}.py", code)
        for number, (name, code) in enumerate(TESTED.findall(text))
    ]


def run_suite(folder: Path) -> subprocess.CompletedProcess[str]:
    """pytest in `folder` as a user's own suite: the plugin comes from the installed
    package's pytest11 entry point (nothing here names it), no proxy variables, warnings
    are errors (an example that leaks a socket fails)."""
    env = client_env(PYTHONPATH=str(ROOT))
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=MUST_NOT_EXPIRE * 3,
        env=env,
    )


def test_the_pytest_examples_pass_in_a_suite_of_their_own(tmp_path: Path) -> None:
    blocks = marked_blocks(doc())
    names = [name for name, _ in blocks]
    assert names.count("conftest.py") == 1 and len(blocks) == 3, names
    expected = sum(len(re.findall(r"^def test_", code, re.M)) for _, code in blocks)
    assert expected == 2  # the retrying client and the read timeout
    for name, code in blocks:
        (tmp_path / name).write_text(code, encoding="utf-8")
    result = run_suite(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{expected} passed in [\d.]+s( \([\d:]+\))?", summary), output


def test_every_rule_the_doc_shows_is_accepted() -> None:
    text = doc()
    command_line = re.findall(r"--fault '([^']*)'", text)
    assert len(command_line) >= len(KINDS)  # one example per kind at least
    for rule in command_line:
        parse_rule(rule)

    blocks = FENCED.findall(text)
    config_lines = [
        line for lang, code in blocks if not lang for line in code.splitlines() if line.startswith("Fault ")
    ]
    assert config_lines
    assert len(parse_config_file("\n".join(config_lines)).values["faults"]) == len(config_lines)

    calls = [call for lang, code in blocks if lang == "python" for call in _faults_add_calls(code)]
    assert len(calls) >= len(KINDS)
    for args, keywords in calls:
        parse_rule(*args, **keywords)

    bodies = re.findall(r"-d '(\{.*?\})'", text)
    assert bodies
    for body in bodies:
        from_json(json.loads(body))


def test_the_tables_name_the_kinds_settings_and_selectors_of_the_code() -> None:
    text = doc()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \| (?:TCP|HTTP|answered by the proxy) \|$", text, re.M))
    assert sorted(rows) == sorted(KINDS)
    for kind, cell in rows.items():
        shown = dict(re.findall(r"`(\w+)(?:=([^`]*))?`", cell))
        assert sorted(shown) == sorted(KINDS[kind]), kind
        for key, default in shown.items():
            code_default = KINDS[kind][key]
            if code_default is None:
                assert f"`{key}` (required)" in cell, (kind, key)
            elif default:
                assert str(default) == str(code_default) or float(default) == code_default, (kind, key)
            else:
                assert code_default == "", (kind, key)
        assert f"\n### {kind}\n" in text, f"no section for {kind}"
    selectors = re.findall(r"^\| `(\w+)` \| [^|]* \| [^|]* \|$", text, re.M)
    assert sorted(set(selectors) - set(KINDS)) == sorted(SELECTORS)


def _faults_add_calls(code: str) -> list[tuple[list[Any], dict[str, Any]]]:
    """The literal arguments of each `<...faults>.add(...)` call in a code block."""
    calls = []
    for node in ast.walk(ast.parse(code)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if node.func.attr == "add" and name.endswith("faults"):
            args = [ast.literal_eval(arg) for arg in node.args]
            calls.append((args, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}))
    return calls
