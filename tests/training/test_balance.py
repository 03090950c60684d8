"""Accuracy levers of training: class weights, the class-balanced sampler, best-epoch selection, the per-epoch
balanced accuracy and macro-F1, and real runs with every option (recorded in config.json; defaults unchanged)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

import graft
import graft.training.loop as loop
from graft.core import distributed as dist
from graft.core.config import TrainConfig
from graft.core.loaders import train_loader
from graft.core.preprocess import Preprocess
from graft.data.device import DeviceBatches
from graft.training.balance import (
    balance_used,
    class_weights,
    make_criterion,
    sample_weights,
    select_metric,
    selector,
)

CPU = torch.device("cpu")


def test_balance_weights_are_inverse_frequency() -> None:
    w = class_weights([123, 24])
    assert torch.allclose(w, torch.tensor([147 / (2 * 123), 147 / (2 * 24)]))
    assert torch.allclose(class_weights([50, 50, 50]), torch.ones(3))  # balanced data: plain cross-entropy
    cfg = TrainConfig(data="x", balance="weights", label_smoothing=0.1)
    train, val = make_criterion(cfg, [123, 24])
    assert torch.allclose(train.weight, w) and train.label_smoothing == 0.1
    assert val.weight is None and val.label_smoothing == 0.1  # the val loss stays comparable between runs
    train, val = make_criterion(TrainConfig(data="x", balance="none"), [123, 24])
    assert train.weight is None and val is None


def test_balance_auto_weights_imbalanced_classes_only() -> None:
    auto = TrainConfig(data="x")
    assert auto.balance == "auto"
    assert balance_used(auto, [123, 24]) == "weights"  # 5.1x
    assert torch.allclose(make_criterion(auto, [123, 24])[0].weight, class_weights([123, 24]))
    assert balance_used(auto, [123, 121]) == "none"  # balanced: the plain loss, as before --balance existed
    assert make_criterion(auto, [123, 121])[0].weight is None
    assert balance_used(auto, [60, 21]) == "none"  # 2.9x: under the threshold
    assert balance_used(TrainConfig(data="x", balance="sampler"), [123, 24]) == "sampler"


def _class_one_share(indices: list[int], labels: torch.Tensor) -> float:
    return float(labels[torch.tensor(indices)].float().mean())


@pytest.mark.parametrize("where", ["loader", "shard", "device"])
def test_the_sampler_draws_classes_about_equally(where: str) -> None:
    labels = torch.tensor([0] * 900 + [1] * 100)
    weights = sample_weights(labels, 2)
    g = torch.Generator().manual_seed(0)
    if where == "loader":
        loader = train_loader(torch.utils.data.TensorDataset(labels), batch_size=100, workers=0, generator=g,
                              weights=weights)  # fmt: skip
        drawn = torch.cat([b[0] for b in loader])
        assert len(drawn) == len(labels)  # the epoch keeps its length
        share = float(drawn.float().mean())
    elif where == "shard":  # torchrun's sampler (one process here): same draw rule, from the run's generator
        drawn = list(dist.ShardSampler(len(labels), shuffle=True, generator=g, weights=weights))
        assert len(drawn) == len(labels)
        share = _class_one_share(drawn, labels)
    else:  # the GPU-resident batches' order (on the CPU here)
        images = [torch.zeros(3, 4, 4, dtype=torch.uint8)] * len(labels)
        batches = DeviceBatches(images, labels.tolist(), preprocess=Preprocess(input_size=4, resize_size=4),
                                batch_size=100, device=CPU, augment=True, generator=g, weights=weights)  # fmt: skip
        drawn_labels = torch.cat([y for _, y in batches])
        assert len(drawn_labels) == len(labels)
        share = float(drawn_labels.float().mean())
    # 1000 draws of p = 0.5: sd 0.016; 4 sd of room (unbalanced shuffling would give 0.1)
    assert abs(share - 0.5) < 0.064


def test_select_auto_follows_the_imbalance() -> None:
    assert select_metric(TrainConfig(data="x"), [123, 24]) == "balanced_acc"
    assert select_metric(TrainConfig(data="x"), [123, 121]) == "acc"
    assert select_metric(TrainConfig(data="x", select_by="macro_f1"), [123, 121]) == "macro_f1"


def test_select_by_picks_the_best_balanced_accuracy(monkeypatch) -> None:
    """Crafted val phases: epoch 2 has the best accuracy (majority class always right), epoch 3 the best balanced
    accuracy; the loop keeps epoch 3's weights with select=balanced_acc, epoch 2's with acc."""
    val = {  # confusion matrices: 90 of class 0, 10 of class 1
        1: [[80, 10], [5, 5]],  # acc 0.85, balanced 0.694
        2: [[90, 0], [8, 2]],  # acc 0.92, balanced 0.6
        3: [[78, 12], [1, 9]],  # acc 0.87, balanced 0.883
        4: [[85, 5], [6, 4]],  # acc 0.89, balanced 0.672
    }
    calls = {"n": 0}

    def run_epoch(model, loader, criterion, device, *, optimizer=None, desc="", precision="auto"):
        if optimizer is not None:
            with torch.no_grad():
                model.weight.add_(1.0)  # the weights tell the epochs apart
            return loop.Phase(0.5, 0.5)
        calls["n"] += 1
        cm = torch.tensor(val[calls["n"]])
        return loop.Phase(0.3, float(cm.trace()) / 100, cm)

    monkeypatch.setattr(loop, "run_epoch", run_epoch)
    for metric, epoch in (("balanced_acc", 3), ("acc", 2)):
        calls["n"] = 0
        model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(model.weight)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        result = loop.fit(model, None, None, optimizer=opt, scheduler=None, criterion=nn.CrossEntropyLoss(),
                          epochs=4, device=CPU, select=selector(metric))  # fmt: skip
        assert result.best_epoch == epoch
        assert float(model.weight.detach()) == epoch  # that epoch's weights restored
        record = result.history[epoch - 1]
        assert result.best_score == getattr(record, {"acc": "val_acc"}.get(metric, f"val_{metric}"))
    assert result.history[2].val_balanced_acc == pytest.approx((78 / 90 + 9 / 10) / 2)


def _rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_default_run_is_unchanged_by_the_lever_options(frozen_run, hymenoptera, tmp_path) -> None:
    defaults = {"balance": "auto", "select_by": "auto", "augment": "standard", "mixup": 0.0, "cutmix": 0.0,
                "random_erasing": 0.0}  # fmt: skip
    run = graft.train(hymenoptera, mode="freeze", epochs=5, device="cpu", out=tmp_path, seed=0, **defaults)
    # identical by construction: same process, same stored feature rows, same seed and batches
    assert _rows(run.run_dir) == _rows(frozen_run.run_dir)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert (metrics["selected_by"], metrics["balance"]) == ("acc", "none")  # hymenoptera is balanced (123 / 121)
    rows = _rows(run.run_dir)
    best = rows[metrics["best_epoch"] - 1]
    assert float(best["val_balanced_acc"]) == pytest.approx(metrics["best_val_balanced_acc"], abs=1e-6)
    evaluation = json.loads((frozen_run.run_dir / "evaluation.json").read_text())
    assert metrics["best_val_balanced_acc"] == pytest.approx(evaluation["balanced_accuracy"], abs=1e-9)
    assert metrics["best_val_macro_f1"] == pytest.approx(evaluation["macro_f1"], abs=1e-9)


@pytest.mark.slow
def test_frozen_run_with_balance_and_selection(hymenoptera, tmp_path, capsys) -> None:
    for balance in ("weights", "sampler"):
        run = graft.train(hymenoptera, mode="freeze", epochs=2, device="cpu", out=tmp_path, balance=balance,
                          select_by="macro_f1")  # fmt: skip
        config = json.loads((run.run_dir / "config.json").read_text())
        assert (config["balance"], config["select_by"]) == (balance, "macro_f1")
        assert run.metrics["selected_by"] == "macro_f1"
        assert not math.isnan(run.metrics["best_val_macro_f1"])
    assert "best epoch by val macro f1 (--select-by macro_f1" in capsys.readouterr().out


@pytest.mark.slow
def test_image_stage_with_every_augmentation_lever(tmp_image_folder, tmp_path) -> None:
    data = tmp_image_folder({"train/a": 6, "train/b": 2, "val/a": 2, "val/b": 2}, size=(48, 40))
    options = {"augment": "autoaugment", "mixup": 0.2, "cutmix": 1.0, "random_erasing": 0.25, "balance": "sampler"}
    run = graft.train(data, mode="freeze", cache_features=False, epochs=1, batch_size=4, device="cpu",
                      pretrained="none", out=tmp_path, **options)  # fmt: skip
    config = json.loads((run.run_dir / "config.json").read_text())
    assert {k: config[k] for k in options} == options
    assert run.metrics["selected_by"] == "balanced_acc"  # 6 vs 2 train images: 3x
    assert len(_rows(run.run_dir)) == 1


def test_weighted_shard_sampler_is_one_draw_shared_by_the_ranks(monkeypatch) -> None:
    """Under torchrun every rank draws the same weighted sequence from the run's generator and takes its stride: the
    ranks' shares interleave back into the one-process sequence (padded to a multiple of the world size)."""
    labels = torch.tensor([0] * 30 + [1] * 3)
    weights = sample_weights(labels, 2)

    def draw(rank: int, world: int) -> list[int]:
        monkeypatch.setattr(dist, "rank", lambda: rank)
        monkeypatch.setattr(dist, "world_size", lambda: world)
        g = torch.Generator().manual_seed(0)  # every rank seeds the run's generator alike
        return list(dist.ShardSampler(len(labels), shuffle=True, generator=g, weights=weights))

    alone = draw(0, 1)
    shares = [draw(r, 2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 17  # DDP: every rank the same number of batches
    interleaved = [i for pair in zip(*shares, strict=True) for i in pair]
    assert interleaved[: len(alone)] == alone
