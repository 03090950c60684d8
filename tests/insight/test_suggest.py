"""``graft suggest``: the ranking on synthetic pools, and the command on a real frozen run (CPU, as it was
trained) with hymenoptera's val folder as the pool."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import graft
from graft.commands.cli import main
from graft.core.config import SuggestConfig
from graft.core.config.insight import STRATEGY_NAMES
from graft.core.errors import ConfigError, DataError
from graft.insight.suggest import STRATEGIES, margins, rank
from graft.insight.suggest_run import COLUMNS, pool_paths


def _pool(rows: int = 50, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, classes)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, rng.normal(size=(rows, 16))


def test_strategy_names_match() -> None:
    """The config's names are the ones rank knows: each ranks, and any other name is refused."""
    assert STRATEGY_NAMES == STRATEGIES
    probs, feats = _pool()
    for name in STRATEGY_NAMES:
        assert len(rank(probs, feats, strategy=name, n=5)) == len(probs)
    with pytest.raises(ValueError, match="unknown strategy"):
        rank(probs, feats, strategy="confidence")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_a_permutation(strategy: str) -> None:
    probs, feats = _pool()
    labelled = np.random.default_rng(1).normal(size=(20, 16))
    order = rank(probs, feats, strategy=strategy, n=10, labelled=labelled)
    assert sorted(order.tolist()) == list(range(len(probs)))


def test_margin_puts_the_tie_first() -> None:
    probs, _ = _pool()
    probs[17] = [0.45, 0.45, 0.10]
    assert rank(probs, strategy="margin")[0] == 17


def test_diverse_spreads_a_cluster_of_near_copies() -> None:
    """Ten near-copies of one image are the most uncertain: margin picks them all, diverse one at most."""
    rng = np.random.default_rng(0)
    rows, n = 60, 8
    feats = rng.normal(size=(rows, 32))
    probs = np.tile([0.9, 0.1], (rows, 1)) - rng.uniform(0, 0.3, (rows, 1)) * [1, -1]
    cluster = np.arange(10)
    feats[cluster] = feats[0] + rng.normal(scale=1e-3, size=(10, 32))
    probs[cluster] = [[0.5 + 0.001 * i, 0.5 - 0.001 * i] for i in range(10)]
    by_margin = rank(probs, feats, strategy="margin", n=n)
    assert len(set(by_margin[:n].tolist()) & set(cluster.tolist())) >= 5
    diverse = rank(probs, feats, strategy="diverse", n=n)
    first = diverse[:n].tolist()
    assert len(set(first) & set(cluster.tolist())) <= 1
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sims = unit[first] @ unit[first].T
    assert (sims[~np.eye(n, dtype=bool)] < 0.99).all()  # no two near-identical
    assert np.all(np.diff(margins(probs)[diverse[n:]]) >= 0)  # the rest by margin


def test_random_is_seeded() -> None:
    probs, _ = _pool()
    a, b = rank(probs, strategy="random", seed=5), rank(probs, strategy="random", seed=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, rank(probs, strategy="random", seed=6))


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="--strategy must be one of"):
        SuggestConfig(run=Path("r"), pool=Path("p"), strategy="bogus")
    with pytest.raises(ConfigError, match="no pool given"):
        SuggestConfig(run=Path("r"))
    with pytest.raises(ConfigError, match="--n must be >= 1"):
        SuggestConfig(run=Path("r"), pool=Path("p"), n=0)


def test_pool_table_paths(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id,Path\n1,a/x.jpg\n2,b.png\n")
    assert pool_paths(tmp_path / "t.csv") == [tmp_path / "a/x.jpg", tmp_path / "b.png"]
    (tmp_path / "bad.csv").write_text("id,name\n1,x\n")
    with pytest.raises(DataError, match="no path column"):
        pool_paths(tmp_path / "bad.csv")


def test_missing_run_is_one_error_line(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "pool").mkdir()
    assert main(["suggest", str(tmp_path / "nope"), str(tmp_path / "pool")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run directory") and "graft train" in err[0]


# ----------------------------------------------------------------------------------------------------------------
# the command on a real run


@pytest.mark.slow
def test_val_folder_is_ranked(frozen_run: Any, hymenoptera: Path, tmp_path: Path) -> None:
    out = tmp_path / "order.csv"
    rows = graft.suggest(frozen_run.run_dir, hymenoptera / "val", n=10, out=out, device="cpu")
    assert len(rows) == 153 and [r.rank for r in rows] == list(range(1, 154))
    assert {r.suggested for r in rows} <= {"ants", "bees"}
    assert all(0.5 <= r.confidence <= 1 for r in rows)
    assert len({r.path for r in rows}) == 153
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS
    assert [t["path"] for t in table] == [r.path for r in rows]
    by_margin = graft.suggest(frozen_run.run_dir, hymenoptera / "val", strategy="margin", device="cpu")
    confidence = [r.confidence for r in by_margin]
    assert confidence == sorted(confidence)  # two classes: least confident is smallest margin


@pytest.mark.slow
def test_cli_prints_the_batch(frozen_run: Any, hymenoptera: Path, capsys: Any) -> None:
    assert main(["suggest", str(frozen_run.run_dir), str(hymenoptera / "val"), "--n", "5", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "suggested", "confidence", "path"]
    assert len(lines) == 7 and lines[-1].startswith("5 of 153 images shown")


@pytest.mark.slow
def test_train_folder_is_all_left_out(frozen_run: Any, hymenoptera: Path, capsys: Any) -> None:
    assert main(["suggest", str(frozen_run.run_dir), str(hymenoptera / "train"), "--device", "cpu"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "images the run trained on" in err[0]
