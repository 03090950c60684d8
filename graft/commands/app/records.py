"""The rows and reports of ``graft app``'s project store, its error, and the rules of a class name and a split."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.core.errors import GraftError

MAX_CLASS_NAME = 100
#: characters a class name may not hold: path separators, and the separators a graft table reads as several labels
FORBIDDEN = "/\\;|,"


class AppError(GraftError):
    """A request the app cannot do as asked (bad class name, unknown class...); the message says what to do."""


class NotFoundError(AppError):
    """An image, class or run id the project does not have (the API answers 404)."""


@dataclass(frozen=True)
class ClassInfo:
    name: str
    count: int  # labelled images, excluded ones left out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count}


@dataclass(frozen=True)
class ImageRow:
    id: int
    path: Path
    source: str
    label: str | None
    split: str
    excluded: bool
    reviewed: bool
    added: float

    @property
    def name(self) -> str:
        return self.path.name

    def to_dict(self) -> dict[str, Any]:
        """As the API lists it (no path: a client sees images by id)."""
        keys = ("id", "name", "label", "split", "source", "excluded", "reviewed")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Action:
    id: int  # 0: nothing changed, nothing was logged
    time: float
    kind: str  # label | exclude | review | class
    image_id: int | None
    old: str | None
    new: str | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "time", "kind", "image_id", "old", "new", "source")}


@dataclass(frozen=True)
class RunRow:
    name: str
    dir: Path
    created: float
    status: str
    settings: dict[str, Any]
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        keys = ("name", "status", "created", "settings", "metrics")
        return {k: getattr(self, k) for k in keys}


@dataclass
class ImportReport:
    """What an import did: images added, already in the project, and skipped (path, reason)."""

    source: str
    added: int = 0
    existing: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "added": self.added,
            "existing": self.existing,
            "skipped": [{"name": p, "reason": r} for p, r in self.skipped],
            "classes": self.classes,
        }

    def format(self) -> str:
        skipped = f", {len(self.skipped)} skipped (unreadable)" if self.skipped else ""
        return f"{self.source}: {self.added} images added, {self.existing} already in the project{skipped}"


@dataclass
class State:
    """Labels, flags and classes: what :meth:`Store.replay` folds from the log and :meth:`Store.state` reads."""

    labels: dict[int, str | None]
    excluded: set[int]
    reviewed: set[int]
    classes: list[str]


def check_class_name(name: Any) -> str:
    """``name`` stripped, or an :class:`AppError` saying what a class name may be."""
    if not isinstance(name, str) or not name.strip():
        raise AppError("a class name cannot be empty: type a name such as 'cat'")
    name = name.strip()
    if len(name) > MAX_CLASS_NAME:
        raise AppError(f"a class name has at most {MAX_CLASS_NAME} characters (got {len(name)}): shorten it")
    bad = sorted({c for c in name if c in FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise AppError(f"a class name cannot hold {shown} (path and label separators): use letters, - or _ instead")
    return name


def hash_split(path: str) -> str:
    """``val`` for one image in five, by a hash of its file name: stable whatever else is in the project, and where
    the folder is (a dataset moved or copied elsewhere keeps its split)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()
    return "val" if int(digest[:8], 16) % 5 == 0 else "train"


def fold(image_ids: Iterable[int], actions: Iterable[Action]) -> State:
    """The labels, flags and classes that ``actions`` (oldest first) fold to, from every image in the pool."""
    state = State(dict.fromkeys(image_ids), set(), set(), [])
    for a in actions:
        if a.kind == "label" and a.image_id is not None:
            state.labels[a.image_id] = a.new
        elif a.kind in ("exclude", "review") and a.image_id is not None:
            flags = state.excluded if a.kind == "exclude" else state.reviewed
            (flags.add if a.new == "1" else flags.discard)(a.image_id)
        elif a.kind == "class" and a.old is None and a.new is not None:
            state.classes.append(a.new)
        elif a.kind == "class" and a.old is not None and a.new is None:
            state.classes.remove(a.old)
        elif a.kind == "class" and a.old is not None and a.new is not None:
            state.classes[state.classes.index(a.old)] = a.new
            state.labels = {i: a.new if label == a.old else label for i, label in state.labels.items()}
    return state


IMAGE_COLUMNS = "id, path, source, label, split, excluded, reviewed, added"
ACTION_COLUMNS = "id, time, kind, image_id, old, new, source"
RUN_COLUMNS = "name, dir, created, status, settings, metrics"


def image_of(r: tuple[Any, ...]) -> ImageRow:
    return ImageRow(r[0], Path(r[1]), r[2], r[3], r[4], bool(r[5]), bool(r[6]), r[7])


def action_of(r: tuple[Any, ...]) -> Action:
    return Action(*r)


def run_of(r: tuple[Any, ...]) -> RunRow:
    return RunRow(r[0], Path(r[1]), r[2], r[3], json.loads(r[4] or "{}"), json.loads(r[5] or "{}"))
