"""The learning-rate range test: ``graft lr-find`` on the real data's stored features, ``--lr auto`` in training
(recorded, reproducible with a seed), and the test leaving the model and the random state as they were."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import graft
from graft.commands.cli import main
from graft.training.lrfind import range_test, valley


def read_rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_lr_find_on_stored_features_suggests_a_rate_where_the_loss_falls(hymenoptera, tmp_path, capsys) -> None:
    out = tmp_path / "lrf"
    assert main(["lr-find", str(hymenoptera), "--device", "cpu", "--plot-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "head stage: suggested lr" in printed and "lr_find.png" in printed
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_rows(out / "lr_find.csv")
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in itertools.pairwise(lrs))
    chosen = [i for i, r in enumerate(rows) if r["suggested"] == 1]
    assert len(chosen) == 1
    at = chosen[0]
    suggestion = lrs[at]
    assert f"{suggestion:.3g}" in printed
    # the smoothed loss falls there: lower than a decade before, and lower than a few steps before
    decade_before = max(i for i, lr in enumerate(lrs) if lr <= suggestion / 10)
    assert rows[at]["smoothed_loss"] < rows[decade_before]["smoothed_loss"]
    assert rows[at]["smoothed_loss"] < rows[at - 3]["smoothed_loss"]
    assert 1e-5 < suggestion < 1  # not at either end of the range on real data


@pytest.mark.slow
def test_lr_auto_is_recorded_and_reproducible_with_a_seed(hymenoptera, tmp_path) -> None:
    common = {"arch": "mobilenet_v2", "epochs": 3, "device": "cpu", "out": tmp_path, "seed": 3}
    first = graft.train(hymenoptera, lr="auto", name="a", **common)
    again = graft.train(hymenoptera, lr="auto", name="b", **common)
    found = first.metrics["lr_auto"]["head"]
    assert again.metrics["lr_auto"] == first.metrics["lr_auto"]  # same features, seed and steps: the same test
    config = json.loads((first.run_dir / "config.json").read_text())
    assert config["lr"] == "auto" and config["lr_auto"] == {"head": found}
    assert (first.run_dir / "lr_find-head.csv").is_file() and (first.run_dir / "lr_find-head.png").is_file()

    def epochs(run) -> list[list[str]]:  # results.csv without the seconds column
        rows = list(csv.reader((run.run_dir / "results.csv").read_text().splitlines()))
        drop = rows[0].index("seconds")
        return [r[:drop] + r[drop + 1 :] for r in rows]

    # identical by construction: same process, same stored rows, one thread, the same seeded steps
    assert epochs(again) == epochs(first)
    first_epoch = next(csv.DictReader((first.run_dir / "results.csv").read_text().splitlines()))
    assert float(first_epoch["lr"]) == pytest.approx(found, rel=1e-5)  # the first epoch ran at the found rate
    # the range test leaves the weights and the random state as they were: given the rate, the same run
    given = graft.train(hymenoptera, lr=found, name="c", **common)
    assert epochs(given) == epochs(first)


def test_range_test_restores_the_model_and_the_generator() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    generator = torch.Generator().manual_seed(1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True,
                                         generator=generator)  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g_state, rng_state = generator.get_state(), torch.get_rng_state()
    test = range_test(
        model, loader, nn.CrossEntropyLoss(), torch.device("cpu"), lambda p, lr: torch.optim.SGD(p, lr=lr),
        iterations=40, generator=generator,
    )  # fmt: skip
    assert 10 <= len(test.lrs) <= 40 and test.lrs[0] == pytest.approx(1e-7)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert torch.equal(generator.get_state(), g_state) and torch.equal(torch.get_rng_state(), rng_state)


def test_valley_is_fastais() -> None:
    # fastai.callback.schedule.valley by hand: the longest decreasing subsequence is 3.0, 2.9, ..., 1.0 (7 points,
    # ending at 7), max_start = 7 - 7 = 0, sections = 7 / 3, index = 0 + int(2.33) + int(1.17) = 3
    losses = [3.0, 3.1, 2.9, 2.5, 2.0, 1.5, 1.2, 1.0, 4.0, 9.0]
    assert valley(losses) == 3
    assert valley([1.0, 2.0, 3.0]) == 0  # nothing decreases: the start


def test_lr_auto_applies_to_every_stage_of_a_fine_tune(tmp_path) -> None:
    from graft.core.config import TrainConfig
    from graft.core.errors import ConfigError

    assert TrainConfig(data=tmp_path, mode="finetune", lr="auto").stages() == [("head", 3, "auto"), ("all", 10, "auto")]
    assert TrainConfig(data=tmp_path, mode="finetune", lr=1e-4).stages() == [("head", 3, 1e-3), ("all", 10, 1e-4)]
    with pytest.raises(ConfigError, match="--lr auto is for float runs"):
        TrainConfig(data=tmp_path, mode="qat", lr="auto")
    with pytest.raises(ConfigError, match="number or auto"):
        TrainConfig(data=tmp_path, lr="fast")
