"""The project store of ``graft app``: one SQLite file (PROJECT/project.db) holding the classes, the images (where
they are on disk, never moved), their labels, split, excluded and reviewed flags, the training runs, and an
append-only log of every change.

Every write is one transaction, committed (WAL, ``synchronous=FULL``) before the call returns, so a label the page
shows as saved survives a kill -9. The log is complete: :meth:`Store.replay` folds it from empty to the same labels,
flags and classes as the tables hold. Undo appends the inverse of the newest change made by one call (a merge is
one change) and never deletes a row; imports are not undone (their images would fall back into the pool).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.commands.app.database import Database
from graft.commands.app.records import (
    ACTION_COLUMNS,
    IMAGE_COLUMNS,
    Action,
    AppError,
    ClassInfo,
    ImageRow,
    ImportReport,
    NotFoundError,
    State,
    action_of,
    check_class_name,
    fold,
    hash_split,
    image_of,
)
from graft.commands.app.records import RunRow as RunRow  # the store's rows, one import for its users

if TYPE_CHECKING:
    from graft.commands.app.importing import Found

#: where an image comes from, and what made a change
IMAGE_SOURCES = ("data", "pool", "upload", "webcam")
SOURCES = ("import", "upload", "webcam", "keyboard", "suggestion", "doctor", "data", "undo")
#: label sources that come with adding images: undo leaves them (they would only push the images to the pool)
NOT_UNDONE = ("import",)


def _flag(value: bool) -> str:
    return "1" if value else "0"


class Store(Database):
    """The project at ``project`` (created when missing). Thread-safe: one connection behind a lock; several
    :class:`Store` objects (or processes) may open the same project, each sees the others' committed writes."""

    def _log(
        self,
        kind: str,
        image_id: int | None,
        old: str | None,
        new: str | None,
        source: str,
        grp: list[int],
        undoes: int | None = None,
    ) -> Action:
        """Append one action; ``grp`` holds the group id of the calling write (its first action's id)."""
        if source not in SOURCES:
            raise AppError(f"unknown source {source!r}: one of {', '.join(SOURCES)}")
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO actions(time, kind, image_id, old, new, source, grp, undoes) VALUES (?,?,?,?,?,?,?,?)",
            (now, kind, image_id, old, new, source, grp[0] if grp else 0, undoes),
        )
        aid = int(cur.lastrowid or 0)
        if not grp:
            grp.append(aid)
            self._db.execute("UPDATE actions SET grp=? WHERE id=?", (aid, aid))
        return Action(aid, now, kind, image_id, old, new, source)

    def _relabel(
        self, image_id: int, old: str | None, new: str | None, source: str, grp: list[int], undoes: int | None = None
    ) -> Action:
        self._db.execute("UPDATE images SET label=? WHERE id=?", (new, image_id))
        return self._log("label", image_id, old, new, source, grp, undoes)

    # ------------------------------------------------------------------------------------------------------------
    # classes

    def classes(self) -> list[ClassInfo]:
        rows = self._read(
            "SELECT c.name, (SELECT COUNT(*) FROM images i WHERE i.label=c.name AND i.excluded=0) "
            "FROM classes c ORDER BY c.position"
        )
        return [ClassInfo(name, count) for name, count in rows]

    def class_names(self) -> list[str]:
        return [r[0] for r in self._read("SELECT name FROM classes ORDER BY position")]

    def _has_class(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM classes WHERE name=?", (name,)).fetchone() is not None

    def _insert_class(self, name: str, source: str, grp: list[int], undoes: int | None = None) -> Action:
        position = self._db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM classes").fetchone()[0]
        self._db.execute("INSERT INTO classes VALUES (?, ?)", (name, position))
        return self._log("class", None, None, name, source, grp, undoes)

    def _need_class(self, name: str) -> None:
        if not self._has_class(name):
            known = ", ".join(self.class_names()) or "none yet"
            raise NotFoundError(f"there is no class {name!r} (classes: {known}): add it first, or check the spelling")

    def add_class(self, name: str, *, source: str = "data") -> Action:
        name = check_class_name(name)
        with self._write():
            if self._has_class(name):
                raise AppError(f"there is already a class {name!r}: pick another name")
            return self._insert_class(name, source, [])

    def rename_class(self, old: str, new: str, *, source: str = "data") -> Action:
        new = check_class_name(new)
        with self._write():
            self._need_class(old)
            if new == old:
                return Action(0, time.time(), "class", None, old, new, source)
            if self._has_class(new):
                raise AppError(f"there is already a class {new!r}: merge {old!r} into it instead of renaming")
            return self._rename(old, new, source, [])

    def _rename(self, old: str, new: str, source: str, grp: list[int], undoes: int | None = None) -> Action:
        self._db.execute("UPDATE classes SET name=? WHERE name=?", (new, old))
        self._db.execute("UPDATE images SET label=? WHERE label=?", (new, old))
        return self._log("class", None, old, new, source, grp, undoes)

    def merge_class(self, src: str, dst: str, *, source: str = "data") -> Action:
        """Every image of ``src`` labelled ``dst`` (one label action each), then ``src`` deleted."""
        with self._write():
            self._need_class(src)
            self._need_class(dst)
            if src == dst:
                raise AppError(f"cannot merge {src!r} into itself: pick another class to merge into")
            return self._move_and_delete(src, dst, source, [])

    def delete_class(self, name: str, *, source: str = "data") -> Action:
        """Delete a class; its images go back to the pool (unlabelled), nothing is deleted from disk."""
        with self._write():
            self._need_class(name)
            return self._move_and_delete(name, None, source, [])

    def _move_and_delete(
        self, name: str, to: str | None, source: str, grp: list[int], undoes: int | None = None
    ) -> Action:
        ids = [r[0] for r in self._db.execute("SELECT id FROM images WHERE label=? ORDER BY id", (name,))]
        for image_id in ids:
            self._relabel(image_id, name, to, source, grp, undoes)
        self._db.execute("DELETE FROM classes WHERE name=?", (name,))
        return self._log("class", None, name, None, source, grp, undoes)

    # ------------------------------------------------------------------------------------------------------------
    # images

    def add_images(
        self, paths: Iterable[str | Path], *, source: str, label: str | None = None, split: str | None = None
    ) -> list[int]:
        """The id of each path (resolved); paths already in the project are left as they are. ``source``: data,
        pool, upload or webcam. A ``label`` not yet a class becomes one; each new labelled image logs a label action
        (source ``import`` for data, else ``source``)."""
        return self._add(paths, source=source, label=label, split=split)[0]

    def _add(
        self,
        paths: Iterable[str | Path],
        *,
        source: str,
        label: str | None,
        split: str | None,
        labels: Iterable[str | None] | None = None,
        splits: Iterable[str | None] | None = None,
    ) -> tuple[list[int], int]:
        """(ids, how many were new) of ``paths``, each with its own label and split when ``labels``/``splits``
        are given."""
        paths = [str(Path(p).expanduser().resolve()) for p in paths]
        labels = list(labels) if labels is not None else [label] * len(paths)
        splits = list(splits) if splits is not None else [split] * len(paths)
        labels = [check_class_name(x) if x is not None else None for x in labels]
        if any(s not in (None, "train", "val") for s in splits):
            raise AppError("a split is train or val")
        if source not in IMAGE_SOURCES:
            raise AppError(f"unknown image source {source!r}: one of {', '.join(IMAGE_SOURCES)}")
        logged = "import" if source in ("data", "pool") else source
        ids: list[int] = []
        new = 0
        grp: list[int] = []
        with self._write():
            now = time.time()
            for path, label, split in zip(paths, labels, splits, strict=True):
                found = self._db.execute("SELECT id FROM images WHERE path=?", (path,)).fetchone()
                if found is not None:
                    ids.append(found[0])
                    continue
                cur = self._db.execute(
                    "INSERT INTO images(path, source, label, split, added) VALUES (?,?,?,?,?)",
                    (path, source, label, split or hash_split(path), now),
                )
                image_id = int(cur.lastrowid or 0)
                if label is not None:
                    if not self._has_class(label):
                        self._insert_class(label, logged, grp)
                    self._log("label", image_id, None, label, logged, grp)
                ids.append(image_id)
                new += 1
        return ids, new

    def image(self, image_id: int) -> ImageRow:
        rows = self._read(f"SELECT {IMAGE_COLUMNS} FROM images WHERE id=?", (image_id,))
        if not rows:
            raise NotFoundError(f"there is no image {image_id} in this project: reload the page")
        return image_of(rows[0])

    def images(
        self,
        *,
        label: str | None = None,
        pool: bool = False,
        excluded: bool = False,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[int, list[ImageRow]]:
        """(how many match, one page of them by id): a class's images, the pool (unlabelled), or the excluded
        ones (of ``label`` when given); with no filter every image. Excluded images show only under ``excluded``."""
        where, args = [], []
        if label is not None:
            where.append("label=?")
            args.append(label)
        elif pool:
            where.append("label IS NULL")
        if label is not None or pool or excluded:
            where.append("excluded=?")
            args.append(int(excluded))
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        total = self._read(f"SELECT COUNT(*) FROM images{sql_where}", args)[0][0]
        page = self._read(
            f"SELECT {IMAGE_COLUMNS} FROM images{sql_where} ORDER BY id LIMIT ? OFFSET ?",
            [*args, max(0, int(limit)), max(0, int(offset))],
        )
        return total, [image_of(r) for r in page]

    def labelled(self) -> list[ImageRow]:
        """Labelled images that are not excluded, by id."""
        rows = self._read(f"SELECT {IMAGE_COLUMNS} FROM images WHERE label IS NOT NULL AND excluded=0 ORDER BY id")
        return [image_of(r) for r in rows]

    def pool(self) -> list[ImageRow]:
        """Unlabelled images that are not excluded, by id."""
        rows = self._read(f"SELECT {IMAGE_COLUMNS} FROM images WHERE label IS NULL AND excluded=0 ORDER BY id")
        return [image_of(r) for r in rows]

    def counts(self) -> dict[str, int]:
        ((total, excluded, labelled, pool, train, val),) = self._read(
            "SELECT COUNT(*), COALESCE(SUM(excluded), 0), "
            "COALESCE(SUM(label IS NOT NULL AND excluded=0), 0), COALESCE(SUM(label IS NULL AND excluded=0), 0), "
            "COALESCE(SUM(label IS NOT NULL AND excluded=0 AND split='train'), 0), "
            "COALESCE(SUM(label IS NOT NULL AND excluded=0 AND split='val'), 0) FROM images"
        )
        return {"labelled": labelled, "pool": pool, "excluded": excluded, "total": total, "train": train, "val": val}

    def set_label(self, image_id: int, label: str | None, *, source: str) -> Action:
        """Label one image (None: back to the pool). An unchanged label logs nothing (the action's id is 0)."""
        with self._write():
            old = self._current(image_id, "label")
            if label is not None:
                label = label.strip() if isinstance(label, str) else label
                self._need_class(label)
            if old == label:
                return Action(0, time.time(), "label", image_id, old, label, source)
            return self._relabel(image_id, old, label, source, [])

    def set_excluded(self, image_id: int, excluded: bool, *, source: str) -> Action:
        with self._write():
            old = _flag(bool(self._current(image_id, "excluded")))
            if old == _flag(excluded):
                return Action(0, time.time(), "exclude", image_id, old, old, source)
            self._db.execute("UPDATE images SET excluded=? WHERE id=?", (int(excluded), image_id))
            return self._log("exclude", image_id, old, _flag(excluded), source, [])

    def set_reviewed(self, image_ids: Iterable[int], *, source: str, reviewed: bool = True) -> Action | None:
        """Mark images reviewed (a finding kept as it is); one undo step. The last action, or None if none
        changed."""
        last = None
        grp: list[int] = []
        with self._write():
            for image_id in dict.fromkeys(image_ids):
                old = _flag(bool(self._current(image_id, "reviewed")))
                if old != _flag(reviewed):
                    self._db.execute("UPDATE images SET reviewed=? WHERE id=?", (int(reviewed), image_id))
                    last = self._log("review", image_id, old, _flag(reviewed), source, grp)
        return last

    def _current(self, image_id: int, column: str) -> Any:
        row = self._db.execute(f"SELECT {column} FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"there is no image {image_id} in this project: reload the page")
        return row[0]

    # ------------------------------------------------------------------------------------------------------------
    # the log: undo, replay

    def undo(self, source: str = "undo") -> Action | None:
        """Undo the newest change not yet undone (all the actions of one call: a merge is one change), by
        appending its inverse; None when there is nothing to undo. Returns the last inverse action."""
        with self._write():
            placeholders = ",".join("?" * len(NOT_UNDONE))
            row = self._db.execute(
                "SELECT MAX(grp) FROM actions WHERE undoes IS NULL AND source != 'undo' "
                f"AND source NOT IN ({placeholders}) "
                "AND grp NOT IN (SELECT undoes FROM actions WHERE undoes IS NOT NULL)",
                NOT_UNDONE,
            ).fetchone()
            if row is None or row[0] is None:
                return None
            group = row[0]
            done = self._db.execute(
                f"SELECT {ACTION_COLUMNS} FROM actions WHERE grp=? ORDER BY id DESC", (group,)
            ).fetchall()
            grp: list[int] = []
            last = None
            for action in map(action_of, done):
                last = self._inverse(action, source, grp, group) or last
            if last is None:  # nothing could be reverted: mark the change undone all the same
                last = self._log(done[0][2], None, None, None, source, grp, group)
            return last

    def _inverse(self, a: Action, source: str, grp: list[int], group: int) -> Action | None:
        """Revert one action as far as the project now allows (a class added back only if absent...)."""
        if a.kind == "label" and a.image_id is not None:
            if a.old is not None and not self._has_class(a.old):
                return None
            return self._relabel(a.image_id, a.new, a.old, source, grp, group)
        if a.kind in ("exclude", "review") and a.image_id is not None:
            column = "excluded" if a.kind == "exclude" else "reviewed"
            self._db.execute(f"UPDATE images SET {column}=? WHERE id=?", (int(a.old == "1"), a.image_id))
            return self._log(a.kind, a.image_id, a.new, a.old, source, grp, group)
        if a.kind != "class":
            return None
        if a.old is None and a.new is not None:  # added: delete it again (its images to the pool)
            return self._move_and_delete(a.new, None, source, grp, group) if self._has_class(a.new) else None
        if a.old is not None and a.new is None:  # deleted: add it back (the label actions before bring its images)
            return None if self._has_class(a.old) else self._insert_class(a.old, source, grp, group)
        if a.old is not None and a.new is not None and self._has_class(a.new):  # renamed: back
            if self._has_class(a.old):
                return self._move_and_delete(a.new, a.old, source, grp, group)
            return self._rename(a.new, a.old, source, grp, group)
        return None

    def actions(self, limit: int = 50) -> list[Action]:
        """The newest ``limit`` actions, newest first."""
        rows = self._read(f"SELECT {ACTION_COLUMNS} FROM actions ORDER BY id DESC LIMIT ?", (max(0, int(limit)),))
        return [action_of(r) for r in rows]

    def version(self) -> int:
        """The newest action's id (0 before any): it changes with every logged change."""
        return int(self._read("SELECT COALESCE(MAX(id), 0) FROM actions")[0][0])

    def replay(self) -> State:
        """The labels, flags and classes that the log folds to, from empty (every image starts in the pool)."""
        ids = [r[0] for r in self._read("SELECT id FROM images")]
        return fold(ids, map(action_of, self._read(f"SELECT {ACTION_COLUMNS} FROM actions ORDER BY id")))

    def state(self) -> State:
        """The labels, flags and classes as the tables hold them (what :meth:`replay` must equal)."""
        rows = self._read("SELECT id, label, excluded, reviewed FROM images")
        return State(
            {r[0]: r[1] for r in rows}, {r[0] for r in rows if r[2]}, {r[0] for r in rows if r[3]}, self.class_names()
        )

    # ------------------------------------------------------------------------------------------------------------
    # imports

    def import_data(self, data: str | Path) -> ImportReport:
        """Import a labelled folder (class folders, or train/ val/) or a .csv/.tsv table, read by graft's own
        scanner; unreadable images are skipped and listed. Its folder becomes a root."""
        from graft.commands.app.importing import find_data

        return self._import(find_data(Path(data)), "data")

    def import_pool(self, folder: str | Path) -> ImportReport:
        """Import a folder of unlabelled images (walked recursively); unreadable images are skipped and listed."""
        from graft.commands.app.importing import find_pool

        return self._import(find_pool(Path(folder)), "pool")

    def _import(self, found: Found, source: str) -> ImportReport:
        ids, new = self._add(
            found.paths, source=source, label=None, split=None, labels=found.labels, splits=found.splits
        )
        found.report.added, found.report.existing = new, len(ids) - new
        self.add_root(found.root)
        return found.report
