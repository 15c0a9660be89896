"""The docs cannot drift: the configuration reference is generated, and links resolve."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from gen_docs import regenerate  # noqa: E402

from tinyproxy_py.errors import Cause  # noqa: E402

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_configuration_reference_matches_the_code() -> None:
    path = ROOT / "docs" / "configuration.md"
    assert path.read_text() == regenerate(path.read_text()), "run scripts/gen_docs.py"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        assert (doc.parent / target.split("#", 1)[0]).exists(), f"{doc.name} links to missing {target}"


def test_the_causes_table_lists_exactly_the_causes_in_the_code() -> None:
    """Causes are public (log, header, metrics labels): one enumeration, one table."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("### Causes", 1)[1].split("\n\n| cause |", 1)[1].split("\n\n", 1)[0]
    documented = re.findall(r"^\| `([a-z-]+)` \|", "| cause |" + table, re.M)
    assert len(documented) == len(set(documented)), "a cause is listed twice"
    assert set(documented) == {cause.value for cause in Cause}


def test_a_cause_formats_as_its_token() -> None:
    assert f"{Cause.ORIGIN_ABORT}" == str(Cause.ORIGIN_ABORT) == "origin-abort"


def test_the_public_face_is_exactly_what_the_embedding_guide_lists() -> None:
    import tinyproxy_py

    text = (ROOT / "docs" / "embedding.md").read_text()
    table = text.split("## The public face", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([A-Za-z_]+)` \|", table, re.M)
    assert sorted(documented) == sorted(tinyproxy_py.__all__)
    assert all(hasattr(tinyproxy_py, name) for name in tinyproxy_py.__all__)
