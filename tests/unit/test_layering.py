"""The dependency direction, checked on the source.

Each layer folder imports only the layers below it (type-only and function-level imports
count too), no module imports itself back through others, the pure layers know no
sockets, only the command line knows click, and only the pool's adapter knows urllib3.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tinyproxy_py"
# Lower numbers are lower layers. Two folders of one rank may not import each other.
LAYERS = {
    "errors": 0,
    "version": 0,
    "wire": 1,
    "observe": 1,
    "settings": 2,
    "net": 3,
    "tunnel": 4,
    "origin": 5,
    "server": 6,
    "app": 7,
}
PURE = {"errors", "wire", "observe", "settings"}
IO_MODULES = {"socket", "selectors", "ssl", "urllib3", "click"}
MAX_NONBLANK_LINES = 450


def module_paths() -> dict[str, Path]:
    """Dotted name inside the package (net.clientconn, errors, __init__) → its file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts)] = path
    return found


MODULES = module_paths()


def import_nodes(name: str) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def package_imports(name: str) -> set[str]:
    """The package modules `name` imports, wherever the import statement is."""
    folder = name.split(".")[:-1]
    found = set()
    for node in import_nodes(name):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = folder[: len(folder) - (node.level - 1)]
        target = base + (node.module.split(".") if node.module else [])
        if ".".join(target) in MODULES and node.module:
            found.add(".".join(target))
            continue
        for alias in node.names:  # from . import x, or from .folder import x: modules
            candidate = ".".join([*target, alias.name])
            found.add(candidate if candidate in MODULES else ".".join(target) or "__init__")
    return {module for module in found if module in MODULES or module == "__init__"}


def outside_imports(name: str) -> set[str]:
    """Top-level names of what `name` imports from outside the package."""
    found: set[str] = set()
    for node in import_nodes(name):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif not node.level:
            found.add((node.module or "").split(".")[0])
    return found


def layer(module: str) -> str | None:
    """The layer of a module: its folder, or errors; None for the package's own face."""
    top = module.split(".")[0]
    return top if top in LAYERS else None


def graph() -> dict[str, set[str]]:
    return {module: package_imports(module) for module in MODULES}


def reversed_arrows(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a layer that is not below the importer's (within a folder: fine)."""
    wrong = []
    for source, targets in edges.items():
        for target in targets:
            here, there = layer(source), layer(target)
            if here is None or there is None or here == there:
                continue
            if LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{source} imports {target} ({here} may not import {there})")
    return sorted(wrong)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, each as the path that closes it (depth-first)."""
    found, done, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            found.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        path.append(module)
        for target in sorted(edges.get(module, ())):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    return found


def test_every_module_lives_in_a_layer_or_is_the_package_face() -> None:
    strays = [m for m in MODULES if layer(m) is None and m not in ("__init__", "__main__")]
    assert strays == []


def test_each_layer_imports_only_the_layers_below_it() -> None:
    assert reversed_arrows(graph()) == []


def test_a_reversed_arrow_is_caught() -> None:
    """The rule above can fail: a parser that reached for a socket would be reported."""
    edges = graph()
    edges["wire.request"] = edges["wire.request"] | {"net.stream"}
    assert reversed_arrows(edges) == ["wire.request imports net.stream (wire may not import net)"]
    edges["observe.stats"] = {"wire.request"}  # one rank, two folders: no arrow either way
    assert "observe.stats imports wire.request (observe may not import wire)" in reversed_arrows(edges)


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]  # the check can fail


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in PURE))
def test_pure_layers_do_no_io(module: str) -> None:
    assert not outside_imports(module) & IO_MODULES


def test_only_the_command_line_imports_click_and_nothing_but_main_imports_the_app() -> None:
    assert {m for m in MODULES if "click" in outside_imports(m)} == {"app.cli"}
    importers = {m for m, targets in graph().items() if any(layer(t) == "app" for t in targets)}
    assert importers - {m for m in MODULES if layer(m) == "app"} == {"__main__"}


def test_only_the_urllib3_adapter_knows_urllib3() -> None:
    """urllib3 owns the connections; the proxy's own code speaks HTTP on them."""
    assert {m for m in MODULES if "urllib3" in outside_imports(m)} == {"origin.connections"}


def test_the_package_imports_itself_only_relatively() -> None:
    """So the folder can be vendored under another name."""
    assert [m for m in MODULES if "tinyproxy_py" in outside_imports(m)] == []


def test_handler_and_proxy_server_do_not_import_each_other() -> None:
    """The server builds handlers; a handler knows it only as handler.Services."""
    assert "server.proxy" not in package_imports("server.handler")
    assert "server.handler" in package_imports("server.listener")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_too_long_to_read_in_one_sitting(module: str) -> None:
    lines = [line for line in MODULES[module].read_text().splitlines() if line.strip()]
    assert len(lines) <= MAX_NONBLANK_LINES


def test_an_installed_copy_has_every_folder() -> None:
    """`pip install .` installs what setup.cfg lists: every layer folder must match it
    (a plain `packages = tinyproxy_py` would install the top folder alone)."""
    cfg = configparser.ConfigParser()
    cfg.read(PACKAGE.parent / "setup.cfg")
    assert cfg["options"]["packages"].strip() == "find:"
    patterns = cfg["options.packages.find"]["include"].replace(",", " ").split()
    folders = [path.parent for path in PACKAGE.rglob("__init__.py")]
    names = [".".join(("tinyproxy_py", *folder.relative_to(PACKAGE).parts)) for folder in folders]
    assert len(names) == len(LAYERS) - 1  # every folder but errors and version, plus the top
    assert all(any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns) for name in names)
