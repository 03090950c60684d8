"""The SQLite file under ``graft app``'s project store: the schema, transactions, and the bookkeeping beside the
labels (the folders a client may name, the training runs). :class:`graft.commands.app.store.Store` adds the
labels and their log."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graft.commands.app.records import RUN_COLUMNS, AppError, NotFoundError, RunRow, run_of

SCHEMA = 1
_TABLES = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS classes(name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, source TEXT NOT NULL, label TEXT, split TEXT NOT NULL,
    excluded INTEGER NOT NULL DEFAULT 0, reviewed INTEGER NOT NULL DEFAULT 0, added REAL NOT NULL);
CREATE INDEX IF NOT EXISTS images_label ON images(label, excluded);
CREATE TABLE IF NOT EXISTS actions(
    id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, image_id INTEGER, old TEXT, new TEXT,
    source TEXT NOT NULL, grp INTEGER NOT NULL, undoes INTEGER);
CREATE INDEX IF NOT EXISTS actions_undoes ON actions(undoes);
CREATE INDEX IF NOT EXISTS actions_grp ON actions(grp);
CREATE TABLE IF NOT EXISTS runs(
    name TEXT PRIMARY KEY, dir TEXT NOT NULL, created REAL NOT NULL, status TEXT NOT NULL, settings TEXT,
    metrics TEXT);
"""


class Database:
    """PROJECT/project.db: WAL, ``synchronous=FULL`` (a committed write survives a kill -9), one connection behind a
    lock, every write one transaction committed before the call returns."""

    def __init__(self, project: Path) -> None:
        self.project = Path(project).expanduser().resolve()
        try:
            self.project.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise AppError(f"{self.project} is a file: give a folder for the project (a new name creates it)") from None
        except OSError as e:
            raise AppError(f"cannot create the project folder {self.project}: {e.strerror}; pick another") from None
        self.path = self.project / "project.db"
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._write():
                for statement in filter(str.strip, _TABLES.split(";")):
                    self._db.execute(statement)
                found = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if found is None:
                    self._db.execute("INSERT INTO meta VALUES ('schema', ?), ('roots', '[]')", (str(SCHEMA),))
                elif int(found[0]) > SCHEMA:
                    raise AppError(f"{self.path} was written by a newer graft (schema {found[0]}): upgrade graft")
        except sqlite3.DatabaseError as e:
            raise AppError(
                f"cannot open the project database {self.path}: {e}; check the file or pick another"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------------
    # transactions and the log

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once: another writer waits, up to busy_timeout), committed on exit."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # ------------------------------------------------------------------------------------------------------------
    # roots: the folders a client may name

    def roots(self) -> list[Path]:
        return [Path(p) for p in json.loads(self._read("SELECT value FROM meta WHERE key='roots'")[0][0])]

    def add_root(self, path: str | Path) -> None:
        root = str(Path(path).expanduser().resolve())
        with self._write():
            roots = json.loads(self._db.execute("SELECT value FROM meta WHERE key='roots'").fetchone()[0])
            if root not in roots:
                self._db.execute("UPDATE meta SET value=? WHERE key='roots'", (json.dumps([*roots, root]),))

    def allowed(self, path: str | Path) -> bool:
        """Whether ``path`` resolves (links followed) under the project folder or one of :meth:`roots`."""
        try:
            resolved = Path(path).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return any(resolved.is_relative_to(root) for root in [self.project, *self.roots()])

    # ------------------------------------------------------------------------------------------------------------
    # runs

    def add_run(
        self, name: str, dir: str | Path, *, status: str = "running", settings: dict[str, Any] | None = None
    ) -> RunRow:
        with self._write():
            self._db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)",
                (name, str(dir), time.time(), status, json.dumps(settings or {}), json.dumps({})),
            )
        return self.run(name)

    def update_run(
        self,
        name: str,
        *,
        status: str | None = None,
        metrics: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> RunRow:
        with self._write():
            if self._db.execute("SELECT 1 FROM runs WHERE name=?", (name,)).fetchone() is None:
                raise NotFoundError(f"there is no run {name!r} in this project: pick one from the runs table")
            for column, value in (("status", status), ("metrics", metrics), ("settings", settings)):
                if value is not None:
                    text = value if isinstance(value, str) else json.dumps(value)
                    self._db.execute(f"UPDATE runs SET {column}=? WHERE name=?", (text, name))
        return self.run(name)

    def run(self, name: str) -> RunRow:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE name=?", (name,))
        if not rows:
            raise NotFoundError(f"there is no run {name!r} in this project: pick one from the runs table")
        return run_of(rows[0])

    def runs(self) -> list[RunRow]:
        """Every run, newest first."""
        return [run_of(r) for r in self._read(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY created DESC, name")]
