"""The app's learner on a real project: hymenoptera's train folder imported (labelled), its val folder as the pool.

One learner for the module (the first fit extracts every image's feature on the CPU: the slow part); the tests run
in order on it: a ranked queue, then a refit after ``retrain_every`` labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow
RETRAIN_EVERY = 5


@pytest.fixture(scope="module")
def project(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from graft.commands.app.store import Store

    store = Store(tmp_path_factory.mktemp("app") / "project")
    store.import_data(hymenoptera / "train")
    store.import_pool(hymenoptera / "val")
    yield store
    store.close()


@pytest.fixture(scope="module")
def learner(project: Any) -> Iterator[Any]:
    from graft.commands.app.learner import Learner

    events: list[tuple[str, dict[str, Any]]] = []
    learner = Learner(
        project,
        retrain_every=RETRAIN_EVERY,
        cache_dir=Path(os.environ["GRAFT_CACHE_DIR"]),  # the session's (hermetic) cache, where training looks too
        on_event=lambda kind, data: events.append((kind, data)),
        device="cpu",
    )
    learner.events = events  # type: ignore[attr-defined]
    learner.start()
    assert learner.wait(1, timeout=900), learner.status()
    yield learner
    learner.stop()


def test_queue_before_a_model_is_the_pool_by_id(project: Any) -> None:
    from graft.commands.app.learner import Learner

    fresh = Learner(project, device="cpu")  # not started: no head
    items = fresh.queue(10)
    ids = sorted(r.id for r in project.pool())[:10]
    assert [i["id"] for i in items] == ids
    assert all(i["suggestion"] is None and i["confidence"] is None for i in items)
    assert fresh.status()["status"] == "none"


def test_first_model_ranks_the_pool(learner: Any, project: Any) -> None:
    status = learner.status()
    assert status["status"] == "ready" and status["version"] == 1
    train = [r for r in project.labelled() if r.split == "train"]
    assert status["labelled"] == len(train)
    assert status["accuracy"] > 0.8  # a linear head on pretrained features separates ants from bees
    kinds = [k for k, _ in learner.events]
    assert kinds == ["model"] and learner.events[0][1]["version"] == 1

    pool = project.pool()
    items = learner.queue(len(pool) + 10)
    assert sorted(i["id"] for i in items) == sorted(r.id for r in pool)  # every pool image once
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
    assert all(i["suggestion"] in ("ants", "bees") for i in items)
    conf = np.array([i["confidence"] for i in items])
    assert np.all(np.diff(conf) >= -1e-9)  # two classes: the smallest margin is the least confident first
    assert conf[0] < 0.9 < conf[-1]
    first = items[0]
    assert learner.suggestion(first["id"]) == (first["suggestion"], first["confidence"])
    assert learner.queue(3) == items[:3]


def test_refits_after_retrain_every_labels(learner: Any, project: Any) -> None:
    before = learner.status()
    picked = learner.queue(RETRAIN_EVERY)
    for item in picked[:-1]:
        project.set_label(item["id"], item["suggestion"], source="suggestion")
        learner.note_labels()
    assert not learner.wait(2, timeout=2)  # one label short: no refit
    last = picked[-1]
    project.set_label(last["id"], last["suggestion"], source="suggestion")
    learner.note_labels()
    assert learner.wait(2, timeout=300), learner.status()
    after = learner.status()
    newly_train = sum(project.image(i["id"]).split == "train" for i in picked)
    assert after["labelled"] == before["labelled"] + newly_train
    queued = {i["id"] for i in learner.queue(1000)}
    assert not queued & {i["id"] for i in picked}  # labelled images leave the pool
    assert learner.events[-1] == ("model", {"version": 2, "labelled": after["labelled"], "accuracy": after["accuracy"]})


def test_refresh_refits_and_counts_an_upload(learner: Any, project: Any, tmp_path: Path, hymenoptera: Path) -> None:
    import shutil

    copy = tmp_path / "upload.jpg"
    shutil.copyfile(next((hymenoptera / "val" / "bees").iterdir()), copy)
    (new_id,) = project.add_images([copy], source="upload")
    version = learner.status()["version"]
    learner.refresh()
    assert learner.wait(version + 1, timeout=300), learner.status()
    assert learner.suggestion(new_id) is not None  # features of an image added since the last fit
    assert new_id in {i["id"] for i in learner.queue(1000)}
