"""Committed docs and results name files relative to the repository, never by one machine's path."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = {".md", ".json", ".csv", ".txt", ".html"}
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home|Users|mnt|opt)/[^\s\"'`)]*")


def test_no_machine_paths_in_committed_docs_and_results():
    files = [REPO / "README.md", *(p for p in (REPO / "docs").rglob("*") if p.suffix in TEXT)]
    found = [
        f"{path.relative_to(REPO)}: {match.group(0)}"
        for path in files
        for match in MACHINE_PATH.finditer(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not found, "machine paths in committed docs:\n" + "\n".join(found[:20])
