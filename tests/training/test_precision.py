"""Training precision (``--precision``) in a run: a real fine-tune in bf16 on this CPU finishes, records its
precision and the CPU features that decided it in config.json, and its val accuracy is that of the fp32 run to a
few images; the frozen body's feature pass follows the run's precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import graft
from graft.core.cpu import bf16_features

#: images per class of the hymenoptera subset: train, val
TRAIN, VAL = 16, 24
#: bf16 rounds the training steps' activations and gradients: the val accuracies of the two runs may differ by
#: a few of the 48 val images (val itself runs in fp32 in both).
TOLERANCE_IMAGES = 3


@pytest.fixture(scope="module")
def subset(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first images of each class and split, linked into a small dataset."""
    root = tmp_path_factory.mktemp("hymenoptera-subset")
    for split, n in (("train", TRAIN), ("val", VAL)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for image in sorted((hymenoptera / split / cls).iterdir())[:n]:
                (root / split / cls / image.name).symlink_to(image)
    return root


@pytest.mark.slow
@pytest.mark.skipif(not bf16_features(), reason="this CPU has neither AVX512-BF16 nor AMX-BF16: bf16 is emulated")
def test_bf16_fine_tune_matches_fp32(subset: Path, tmp_path: Path) -> None:
    runs = {
        precision: graft.train(
            subset,
            out=tmp_path / "runs",
            name=precision,
            mode="finetune",
            head_epochs=0,
            epochs=1,
            batch_size=8,
            device="cpu",
            precision=precision,
        )
        for precision in ("fp32", "bf16")
    }
    config = json.loads((runs["bf16"].run_dir / "config.json").read_text())
    assert config["precision"] == "bf16"
    assert config["resolved_precision"]["precision"] == "bf16"
    assert config["resolved_precision"]["cpu_bf16"] == bf16_features()
    fp32 = json.loads((runs["fp32"].run_dir / "config.json").read_text())["resolved_precision"]
    assert fp32["precision"] == "fp32" and fp32["cpu_bf16"] == []
    accs = {p: r.metrics["best_val_acc"] for p, r in runs.items()}
    assert accs["fp32"] > 0.6  # the fine-tune learned the task
    assert abs(accs["bf16"] - accs["fp32"]) * 2 * VAL <= TOLERANCE_IMAGES + 1e-6, accs


def test_the_feature_pass_keys_only_a_precision_other_than_inference(tmp_path: Path) -> None:
    """The frozen body's torch pass runs in the run's precision; its rows get a key of their own only where that
    differs from inference's (bf16 on the CPU), so an fp32 run shares the rows graft evaluate reads."""
    import torch

    from graft.core.config import TrainConfig
    from graft.training.stage_inputs import StageData

    cfg = TrainConfig(data=tmp_path, workers=0)
    for precision, keyed in (("bf16", "bf16"), ("fp32", "auto")):
        data = StageData(
            cfg, None, None, None, torch.device("cpu"), torch.Generator(), None, print, precision=precision
        )
        assert data.precision == precision and data.feature_precision == keyed
