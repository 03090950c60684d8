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


@pytest.mark.slow
def test_queue_before_a_model_is_the_pool_by_id(project: Any) -> None:
    from graft.commands.app.learner import Learner

    fresh = Learner(project, device="cpu")  # not started: no head
    items = fresh.queue(10)
    ids = sorted(r.id for r in project.pool())[:10]
    assert [i["id"] for i in items] == ids
    assert all(i["suggestion"] is None and i["confidence"] is None for i in items)
    assert fresh.status()["status"] == "none"


@pytest.mark.slow
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


@pytest.mark.slow
def test_refits_after_retrain_every_labels(learner: Any, project: Any) -> None:
    before = learner.status()
    picked = learner.queue(RETRAIN_EVERY)
    for item in picked[:-1]:
        project.set_label(item["id"], item["suggestion"], source="suggestion")
        learner.note_labels()
    assert not learner.wait(2, timeout=2)  # one label short: no refit
    page = learner.queue(2)  # read from the old ranking, skipping what was labelled since
    assert page == learner.queue(1000)[:2] and page[0]["id"] == picked[-1]["id"]
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


@pytest.mark.slow
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


def test_fit_head_converges_whatever_the_order() -> None:
    from graft.insight.suggest import fit_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int64)
    head = fit_head(x, y, 2)
    assert head.accuracy(x, y) > 0.95
    again = fit_head(x[::-1], y[::-1], 2)
    np.testing.assert_allclose(again.probs(x), head.probs(x), atol=1e-5)
    warm = fit_head(x, y, 2, init=head)  # from the previous head: already converged
    np.testing.assert_allclose(warm.w, head.w, atol=1e-6)
    np.testing.assert_allclose(head.probs(x).sum(1), 1)


@pytest.mark.slow
def test_a_head_comes_before_the_whole_pool_has_features(
    learner: Any, project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import graft.commands.app.learner as module

    monkeypatch.setattr(module, "CHUNK", 16)  # the pool is then "large": a head first, then one with every image
    published: list[int] = []
    fresh = module.Learner(
        project,
        cache_dir=Path(os.environ["GRAFT_CACHE_DIR"]),
        on_event=lambda kind, data: published.append(data["version"]),
        device="cpu",
    )
    fresh.fit()  # in this thread; the features are stored by now: read back, not computed
    assert published == [1, 2]
    mine, theirs = fresh.queue(1000), learner.queue(1000)
    assert sorted(i["id"] for i in mine) == sorted(i["id"] for i in theirs)
    # same features and labels; the heads differ only by where L-BFGS started (the learner's from its last head)
    theirs_by_id = {i["id"]: i["suggestion"] for i in theirs}
    assert sum(i["suggestion"] == theirs_by_id[i["id"]] for i in mine) >= 0.95 * len(mine)
