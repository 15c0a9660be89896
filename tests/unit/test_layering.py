"""The dependency direction, checked on the source: parsing knows no sockets, the core no click."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tinyproxy_py"
PURE = {
    "http1",
    "http1_response",
    "config",
    "errors",
    "stats",
    "policy",
    "routes",
    "accesslog",
    "statspage",
}
IO_MODULES = {"socket", "selectors", "ssl", "urllib3", "click"}


def imports(module: str) -> tuple[set[str], set[str]]:
    """(absolute top-level imports, relative imports) of tinyproxy_py/<module>.py."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    absolute, relative = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative.add(node.module or "")
            else:
                absolute.add((node.module or "").split(".")[0])
    return absolute, relative


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_do_no_io(module: str) -> None:
    absolute, _ = imports(module)
    assert not absolute & IO_MODULES


@pytest.mark.parametrize("module", MODULES)
def test_only_cli_imports_click_and_nothing_imports_cli(module: str) -> None:
    absolute, relative = imports(module)
    if module != "cli":
        assert "click" not in absolute
    if module != "__main__":
        assert "cli" not in relative


@pytest.mark.parametrize("module", MODULES)
def test_package_imports_itself_only_relatively(module: str) -> None:
    absolute, _ = imports(module)
    assert "tinyproxy_py" not in absolute


def test_http1_depends_only_on_errors_and_config() -> None:
    _, relative = imports("http1")
    assert relative <= {"errors", "config"}


def test_http1_response_builds_only_on_http1() -> None:
    _, relative = imports("http1_response")
    assert relative <= {"errors", "config", "http1"}


def test_only_the_pool_knows_urllib3() -> None:
    """urllib3 owns the connections; the proxy's own code speaks HTTP on them. pool.py
    names it for types only (test_footprint.py: it loads when first needed)."""
    users = {m for m in MODULES if "urllib3" in imports(m)[0]}
    assert users == {"pool", "connections"}


def runtime_relative_imports(module: str) -> set[str]:
    """Package modules `module` imports when it runs (imports under TYPE_CHECKING left out)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in typing_only:
            # `from .x import y` names x; `from . import x` names x itself
            found.update([node.module.split(".")[0]] if node.module else (a.name for a in node.names))
    return {name for name in found if not name.startswith("__")}  # __version__ is the package's


# The header's last sentence, up to the docstring's end (it may wrap).
DECLARED = {
    m: re.search(r'^Imports: (.*?)\n"""', (PACKAGE / f"{m}.py").read_text(), re.M | re.S) for m in MODULES
}


@pytest.mark.parametrize("module", sorted(m for m, found in DECLARED.items() if found))
def test_the_imports_line_of_a_module_header_is_true(module: str) -> None:
    """STYLE.md: a module's header says what it may import; this keeps the sentence true."""
    line = DECLARED[module].group(1).replace("\n", " ")  # type: ignore[union-attr]
    package_part, _, outside = re.sub(r"\(.*?\)", "", line).rstrip(".").partition(";")
    declared = set() if "stdlib only" in package_part else {name.strip() for name in package_part.split(",")}
    assert runtime_relative_imports(module) == declared
    third_party = imports(module)[0] & {"urllib3", "certifi", "click", "pytest"}
    assert third_party <= {name.strip() for name in outside.split(",")}


def test_handler_and_server_do_not_import_each_other() -> None:
    """The server builds handlers; a handler knows it only as handler.Services (no cycle)."""
    assert "server" not in imports("handler")[1]
    assert "handler" in runtime_relative_imports("server")
