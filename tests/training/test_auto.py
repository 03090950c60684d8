"""``graft train --auto``: the cross-validated search on the train split's stored features (val never read for
choosing: planted val changes leave the leaderboard as it is), leaderboard.csv and the record of the search (the
``--ensemble K`` run is tested in tests/inference/test_ensemble.py)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import graft

SEARCH = ["arch", "hidden", "dropout", "lr", "weight_decay", "balance", "metric", "cv_mean", "cv_sd", "folds"]


def dataset(root: Path, hymenoptera: Path, *, swap_val: bool) -> Path:
    """The real train split (linked: the same files, so the same stored features) and a small val split: five
    images per class, or with ``swap_val`` the other class's images and an unreadable file."""
    root.mkdir()
    (root / "train").symlink_to(hymenoptera / "train")
    for cls, other in (("ants", "bees"), ("bees", "ants")):
        (root / "val" / cls).mkdir(parents=True)
        source = sorted((hymenoptera / "val" / (other if swap_val else cls)).glob("*.jpg"))[:5]
        for p in source:
            shutil.copyfile(p, root / "val" / cls / p.name)
    if swap_val:
        (root / "val" / "ants" / "broken.jpg").write_bytes(b"")
    return root


def leaderboard(run_dir: Path) -> dict[tuple[str, ...], dict[str, str]]:
    with open(run_dir / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(set(SEARCH) <= set(r) for r in rows)
    return {tuple(r[k] for k in SEARCH[:6]): {k: r[k] for k in SEARCH} for r in rows}


OPTIONS = {"auto": True, "time_budget": 1.0, "epochs": 2, "device": "cpu", "seed": 0}


@pytest.mark.slow
def test_auto_chooses_on_train_only_and_records_the_search(hymenoptera, tmp_path) -> None:
    plain = graft.train(dataset(tmp_path / "a", hymenoptera, swap_val=False), out=tmp_path / "runs", **OPTIONS)
    planted = graft.train(dataset(tmp_path / "b", hymenoptera, swap_val=True), out=tmp_path / "runs", **OPTIONS)
    first, second = leaderboard(plain.run_dir), leaderboard(planted.run_dir)
    # the budget decides how many candidates were drawn; those drawn in both scored alike, whatever val holds
    common = first.keys() & second.keys()
    default = ("mobilenet_v2", "linear", "0.0", "0.001", "0.0001", "none")
    assert default in common
    assert all(first[k] == second[k] for k in common)
    # val was read only after the search: the final training saw the swapped labels
    assert plain.metrics["best_val_acc"] >= 0.8 and planted.metrics["best_val_acc"] <= 0.5

    auto = plain.metrics["auto"]
    assert auto["folds"] == 5 and auto["candidates"] == len(first) and auto["time_budget"] == 1.0
    assert auto["search_seconds"] > 0 and auto["final_seconds"] > 0
    assert json.loads((plain.run_dir / "metrics.json").read_text())["auto"] == auto
    config = json.loads((plain.run_dir / "config.json").read_text())
    assert config["auto_search"] == {"auto": True, "time_budget": 1.0, "ensemble": None}
    winner = auto["winner"]
    assert config["arch"] == winner["arch"] and config["lr"] == winner["lr"] and config["auto"] is False
    assert "5-fold CV on train" in (plain.run_dir / "report.html").read_text()
