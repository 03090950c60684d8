"""The map and the territory: NOTES.md's module table names every module of the package, and only modules that
exist, so the table a newcomer reads first cannot drift from the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_paths(notes: str) -> set[str]:
    """The paths named in the first column of the "Layout" table. A bare file name (``loaders.py``) is in the folder
    of the path before it in the same cell, as the table writes ``graft/core/device.py``, ``loaders.py``."""
    section = notes.split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        folder = ""
        for token in re.findall(r"`([^`]+)`", row.split("|")[1]):
            if token.startswith("graft/"):
                folder = token if token.endswith("/") else token.rsplit("/", 1)[0] + "/"
                paths.add(token)
            else:
                paths.add(folder + token)
    return paths


def covered(module: str, paths: set[str]) -> bool:
    return module in paths or any(p.endswith("/") and module.startswith(p) for p in paths)


def test_the_layout_table_names_only_files_that_exist() -> None:
    missing = sorted(
        p for p in layout_paths((ROOT / "NOTES.md").read_text(encoding="utf-8")) if not (ROOT / p).exists()
    )
    assert missing == [], f"NOTES.md's Layout table names files that do not exist: {missing}"


def test_every_module_has_a_row_in_the_layout_table() -> None:
    paths = layout_paths((ROOT / "NOTES.md").read_text(encoding="utf-8"))
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "graft").rglob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    )
    assert [m for m in modules if not covered(m, paths)] == []


def test_the_table_reader_follows_the_tables_shorthand() -> None:
    notes = "## Layout\n| `graft/core/device.py`, `loaders.py` | x |\n| `graft/core/config/` | y |\n## Decisions\n"
    paths = layout_paths(notes)
    assert paths == {"graft/core/device.py", "graft/core/loaders.py", "graft/core/config/"}
    assert covered("graft/core/config/fields.py", paths) and not covered("graft/core/other.py", paths)
