"""The files a command is given: image files as they are, folders walked recursively, in a stable order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from graft.core.errors import GraftError

#: what a walk is told about a folder link it does not follow: (the link, why)
OnSkip = Callable[[Path, str], None]


def expand_paths(
    paths: Sequence[str | os.PathLike[str]], *, follow_links: bool = False, on_skip: OnSkip | None = None
) -> list[Path]:
    """Files as given, folders walked recursively (sorted, hidden entries left out): ``list(iter_paths(paths))``."""
    return list(iter_paths(paths, follow_links=follow_links, on_skip=on_skip))


def iter_paths(
    paths: Sequence[str | os.PathLike[str]], *, follow_links: bool = False, on_skip: OnSkip | None = None
) -> Iterator[Path]:
    """Files as given, folders walked recursively, lazily: one folder's entries in memory at a time.

    Entries are sorted by name within each folder (the same order as sorting the full paths); hidden entries are
    left out; a folder reached twice is walked once; a broken link is yielded (reading it then says why it fails).
    A symbolic link to a folder is followed while it stays inside the folder given; one that leads out of it (a
    link to ``/`` would walk the whole machine) is passed over and reported to ``on_skip``, unless
    ``follow_links``. Links to files are read where they point. A path that does not exist raises
    :class:`GraftError` before anything is yielded; one that may not be looked at is yielded as it is.
    """
    given = [Path(p) for p in paths]
    for p in given:
        try:
            present = p.exists() or p.is_symlink()
        except OSError:  # there, but not to be looked at (EACCES): reading it then says why
            present = True
        if not present:
            raise GraftError(f"{p} does not exist; pass image files or folders of images")
    return _walk_given(given, follow_links, on_skip)


def _walk_given(given: list[Path], follow_links: bool, on_skip: OnSkip | None) -> Iterator[Path]:
    for p in given:
        try:
            is_dir = p.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk_folder(p, set(), None if follow_links else p.resolve(), on_skip)
        else:
            yield p


def _walk_folder(
    folder: Path, seen: set[tuple[int, int]], inside: Path | None, on_skip: OnSkip | None
) -> Iterator[Path]:
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
        if is_dir and inside is not None and e.is_symlink():
            target = (folder / e.name).resolve()
            if not target.is_relative_to(inside):
                if on_skip is not None:
                    on_skip(folder / e.name, f"a link to {target}, outside {inside}: not followed (--follow-links)")
                continue
        if is_dir:
            yield from _walk_folder(folder / e.name, seen, inside, on_skip)
        elif e.is_file() or e.is_symlink():
            yield folder / e.name
