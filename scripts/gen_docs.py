#!/usr/bin/env python3
"""Regenerate the generated block of docs/configuration.md from Config (the one source of truth).

tests/unit/test_docs.py fails when the block is stale; run this to fix it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinyproxy_py.settings.conffile import reference_table  # noqa: E402

BEGIN, END = "<!-- BEGIN GENERATED: scripts/gen_docs.py -->\n", "<!-- END GENERATED -->\n"


def regenerate(text: str) -> str:
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    return before + BEGIN + reference_table() + END + after


if __name__ == "__main__":
    path = ROOT / "docs" / "configuration.md"
    path.write_text(regenerate(path.read_text()))
    print(f"updated {path.relative_to(ROOT)}")
