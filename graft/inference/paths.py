"""The files a command is given: image files as they are, folders walked recursively, in a stable order."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from graft.core.errors import GraftError


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders walked recursively (sorted, hidden entries left out): ``list(iter_paths(paths))``."""
    return list(iter_paths(paths))


def iter_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files as given, folders walked recursively, lazily: one folder's entries in memory at a time.

    Entries are sorted by name within each folder (the same order as sorting the full paths); hidden entries are
    left out; symbolic links are followed, a folder reached twice is walked once; a broken link is yielded (reading
    it then says why it fails). A path that does not exist raises :class:`GraftError` before anything is yielded.
    """
    given = [Path(p) for p in paths]
    for p in given:
        if not (p.exists() or p.is_symlink()):
            raise GraftError(f"{p} does not exist; pass image files or folders of images")
    return _walk_given(given)


def _walk_given(given: list[Path]) -> Iterator[Path]:
    for p in given:
        if p.is_dir():
            yield from _walk_folder(p, set())
        else:
            yield p


def _walk_folder(folder: Path, seen: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        st = folder.stat()
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:  # an unreadable folder holds nothing we can read
        return
    if (st.st_dev, st.st_ino) in seen:
        return
    seen.add((st.st_dev, st.st_ino))
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk_folder(folder / e.name, seen)
        elif e.is_file() or e.is_symlink():
            yield folder / e.name
