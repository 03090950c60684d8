"""graft app's project store: the log replays to the tables, writes are durable and shared, imports add once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from graft.commands.app.store import AppError, NotFoundError, State, Store, check_class_name, hash_split

ROOT = Path(__file__).resolve().parents[3]


def pool_store(tmp_path: Path, tmp_image_folder: Callable[..., Path], n: int = 12) -> tuple[Store, list[int]]:
    """A store with ``n`` unlabelled images, classes cat and dog."""
    pool = tmp_image_folder({"pool": n})
    store = Store(tmp_path / "project")
    ids = store.add_images(sorted((pool / "pool").iterdir()), source="pool")
    store.add_class("cat")
    store.add_class("dog")
    return store, ids


def test_replay_equals_the_tables_after_random_changes(tmp_path: Path, tmp_image_folder: Callable[..., Path]) -> None:
    store, ids = pool_store(tmp_path, tmp_image_folder)
    rng = random.Random(0)
    before: list[State] = []  # the state before each change not undone yet: what undo goes back to
    for step in range(400):
        names, state, version = store.class_names(), store.state(), store.version()
        op = rng.choice(["label", "label", "label", "undo", "undo", "exclude", "review", "add", "rename", "merge",
                         "delete"])  # fmt: skip
        if op == "label":
            store.set_label(rng.choice(ids), rng.choice([*names, None]), source="keyboard")
        elif op == "undo":
            assert (store.undo() is None) == (not before)
            if before:
                undone, now = before.pop(), store.state()
                assert now.labels == undone.labels and sorted(now.classes) == sorted(undone.classes)
                assert (now.excluded, now.reviewed) == (undone.excluded, undone.reviewed)
        elif op == "exclude":
            store.set_excluded(rng.choice(ids), rng.random() < 0.6, source="doctor")
        elif op == "review":
            store.set_reviewed(rng.sample(ids, 3), source="doctor", reviewed=rng.random() < 0.7)
        elif op == "add":
            store.add_class(f"c{step}")
        elif op == "rename" and names:
            store.rename_class(rng.choice(names), f"r{step}")
        elif op == "merge" and len(names) > 1:
            src, dst = rng.sample(names, 2)
            store.merge_class(src, dst)
        elif op == "delete" and names:
            store.delete_class(rng.choice(names))
        if op != "undo" and store.version() != version:
            before.append(state)
        assert store.replay() == store.state(), f"step {step}: {op}"
    assert store.version() > 300


def test_undo_reverts_a_merge_as_one_step_and_leaves_imports(
    tmp_path: Path, tmp_image_folder: Callable[..., Path]
) -> None:
    data = tmp_image_folder({"ants": 3, "bees": 3})
    store = Store(tmp_path / "project")
    report = store.import_data(data)
    assert (report.added, report.existing, report.classes) == (6, 0, ["ants", "bees"])
    assert store.undo() is None  # the import is no change of the user's
    store.add_class("wasps")
    store.merge_class("bees", "wasps")
    assert [(c.name, c.count) for c in store.classes()] == [("ants", 3), ("wasps", 3)]
    action = store.undo()
    assert action is not None and action.source == "undo"
    assert {c.name: c.count for c in store.classes()} == {"ants": 3, "wasps": 0, "bees": 3}
    store.undo()  # the new class
    assert store.class_names() == ["ants", "bees"]
    assert store.undo() is None
    assert store.replay() == store.state()
    assert len(store.actions(1000)) == store.version()  # the log only grows


def test_delete_moves_images_to_the_pool(tmp_path: Path, tmp_image_folder: Callable[..., Path]) -> None:
    store, ids = pool_store(tmp_path, tmp_image_folder, n=4)
    for i in ids[:3]:
        store.set_label(i, "cat", source="keyboard")
    store.set_excluded(ids[0], True, source="doctor")
    counts = store.counts()
    assert (counts["labelled"], counts["pool"], counts["excluded"], counts["total"]) == (2, 1, 1, 4)
    assert counts["train"] + counts["val"] == 2
    store.delete_class("cat")
    assert store.class_names() == ["dog"]
    total, rows = store.images(pool=True)
    assert total == 3 and all(r.label is None for r in rows)
    assert all(p.is_file() for p in (store.image(i).path for i in ids))  # nothing on disk is touched
    store.undo()
    assert store.images(label="cat")[0] == 2 and store.images(label="cat", excluded=True)[0] == 1


def test_a_write_is_seen_by_a_second_store_on_the_same_project(
    tmp_path: Path, tmp_image_folder: Callable[..., Path]
) -> None:
    first, ids = pool_store(tmp_path, tmp_image_folder, n=3)
    second = Store(tmp_path / "project")  # another tab's server, or another process
    first.set_label(ids[0], "dog", source="keyboard")
    assert second.image(ids[0]).label == "dog" and second.version() == first.version()
    second.rename_class("dog", "puppy")
    assert first.image(ids[0]).label == "puppy"
    assert first.undo() is not None  # the newest change, whichever store made it
    assert second.image(ids[0]).label == "dog"


def test_importing_twice_adds_nothing(hymenoptera: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "project")
    first = store.import_data(hymenoptera / "train")
    assert first.added > 200 and first.existing == 0
    assert len(first.skipped) == 1  # the dataset's one unreadable file
    version, counts = store.version(), store.counts()
    again = store.import_data(hymenoptera / "train")
    assert (again.added, again.existing) == (0, first.added)
    pool = store.import_pool(hymenoptera / "train")  # the same files as a pool: already there
    assert pool.added == 0 and pool.existing == first.added
    assert store.version() == version and store.counts() == counts
    assert store.allowed(hymenoptera / "train" / "ants") and not store.allowed(hymenoptera / "val")
    assert store.allowed(tmp_path / "project" / "images" / "x.jpg") and not store.allowed(tmp_path / "other")


def test_import_keeps_a_train_val_split_and_hashes_the_rest(
    tmp_path: Path, tmp_image_folder: Callable[..., Path]
) -> None:
    data = tmp_image_folder({"train/a": 3, "train/b": 3, "val/a": 2, "val/b": 2})
    store = Store(tmp_path / "project")
    store.import_data(data)
    assert {r.path.parent.parent.name: r.split for r in store.labelled()} == {"train": "train", "val": "val"}
    flat = tmp_image_folder({"a": 4, "b": 4})
    store.import_data(flat)
    rows = [r for r in store.labelled() if r.path.is_relative_to(flat.resolve())]
    assert [r.split for r in rows] == [hash_split(str(r.path)) for r in rows]
    names = [f"img{i}.jpg" for i in range(200)]  # the file name decides: a dataset moved elsewhere keeps its split
    assert [hash_split(f"/data/a/{n}") for n in names] == [hash_split(f"/mnt/copy/b/{n}") for n in names]
    assert 20 <= sum(hash_split(n) == "val" for n in names) <= 60


def test_import_skips_unreadable_images_and_says_why(tmp_path: Path, tmp_image_folder: Callable[..., Path]) -> None:
    data = tmp_image_folder({"a": 3, "b": 3})
    (data / "a" / "broken.jpg").write_bytes(b"not an image")
    pool = tmp_image_folder({"x": 2})
    (pool / "x" / "notes.txt").write_text("hello")
    store = Store(tmp_path / "project")
    report = store.import_data(data)
    assert report.added == 6 and [p for p, _ in report.skipped] == ["a/broken.jpg"]
    report = store.import_pool(pool)
    assert report.added == 2 and [p for p, _ in report.skipped] == ["x/notes.txt"]
    assert "skipped" in report.format()
    with pytest.raises(AppError, match="not a folder"):
        store.import_pool(tmp_path / "missing")


@pytest.mark.parametrize(
    ("name", "match"),
    [("", "cannot be empty"), ("   ", "cannot be empty"), ("a/b", "'/'"), ("a\\b", "cannot hold"),
     ("x" * 101, "at most 100"), ("tab\there", "cannot hold"), ("cats,dogs", "','"), ("a;b", "';'")],
)  # fmt: skip
def test_class_names_are_checked(name: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(AppError, match=match):
        check_class_name(name)
    store = Store(tmp_path / "project")
    with pytest.raises(AppError, match=match):
        store.add_class(name)
    assert store.class_names() == [] and store.version() == 0


def test_class_changes_refuse_what_cannot_be_done(tmp_path: Path) -> None:
    store = Store(tmp_path / "project")
    store.add_class(" cat ")
    assert store.class_names() == ["cat"]
    with pytest.raises(AppError, match="already a class"):
        store.add_class("cat")
    store.add_class("dog")
    with pytest.raises(AppError, match="merge"):
        store.rename_class("cat", "dog")
    with pytest.raises(AppError, match="into itself"):
        store.merge_class("cat", "cat")
    with pytest.raises(NotFoundError, match="no class 'cow'"):
        store.delete_class("cow")
    with pytest.raises(NotFoundError, match="no image 5"):
        store.set_label(5, "cat", source="keyboard")
    with pytest.raises(AppError, match="unknown source"):
        store.add_class("bird", source="robot")


def test_paging_and_unchanged_writes(tmp_path: Path, tmp_image_folder: Callable[..., Path]) -> None:
    store, ids = pool_store(tmp_path, tmp_image_folder, n=7)
    total, page = store.images(pool=True, offset=5, limit=5)
    assert total == 7 and [r.id for r in page] == ids[5:]
    assert page[0].name == "img005.jpg"
    version = store.version()
    assert store.set_label(ids[0], None, source="keyboard").id == 0  # already in the pool: nothing logged
    assert store.set_reviewed([], source="doctor") is None and store.version() == version
    assert store.add_images([store.image(ids[0]).path], source="upload", label="cat") == [ids[0]]
    assert store.image(ids[0]).label is None  # a known path is left as it is


def test_runs_are_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "project")
    store.add_run("001-mobilenet_v2-freeze", tmp_path / "runs" / "001", settings={"epochs": 3})
    store.update_run("001-mobilenet_v2-freeze", status="done", metrics={"best_val_acc": 0.9})
    (run,) = Store(tmp_path / "project").runs()
    assert (run.status, run.settings, run.metrics) == ("done", {"epochs": 3}, {"best_val_acc": 0.9})
    with pytest.raises(NotFoundError):
        store.update_run("nope", status="done")


def test_a_project_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(AppError, match="is a file"):
        Store(tmp_path / "file")


LABELLER = """
import sys
from pathlib import Path
from graft.commands.app.store import Store

store = Store(Path(sys.argv[1]))
for image_id in map(int, sys.argv[2:]):
    store.set_label(image_id, "cat" if image_id % 2 else "dog", source="keyboard")
    print(image_id, flush=True)
"""


@pytest.mark.subprocess
def test_every_label_shown_as_saved_survives_kill_9(tmp_path: Path, tmp_image_folder: Callable[..., Path]) -> None:
    store, _ = pool_store(tmp_path, tmp_image_folder, n=2)
    ids = store.add_images([tmp_path / f"missing{i}.jpg" for i in range(5000)], source="pool")  # rows, no files
    pragmas = [store._db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous")]
    assert pragmas == ["wal", 2]  # 2: FULL, each commit synced before it returns
    store.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LABELLER), str(tmp_path / "project"), *map(str, ids)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    saved = [int(proc.stdout.readline()) for _ in range(200)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved += [int(line) for line in proc.stdout.read().split()]  # printed before the kill, read after it
    assert proc.returncode == -signal.SIGKILL and len(saved) < len(ids), "the labeller finished before the kill"
    reopened = Store(tmp_path / "project")
    for image_id in saved:
        assert reopened.image(image_id).label == ("cat" if image_id % 2 else "dog")
    assert reopened.replay() == reopened.state()
