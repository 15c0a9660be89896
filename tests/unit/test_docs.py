"""The docs cannot drift: the configuration reference is generated, and links resolve."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from gen_docs import regenerate  # noqa: E402

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
