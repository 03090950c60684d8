"""The classic ``train.py`` / ``predict.py`` command lines of the course project, on a real train/valid/test dataset:
the aliases take effect, the held-out test folder is evaluated once at the end and never trained or validated on."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graft.commands.cli import build_parser, main
from graft.data.folders import held_out_test, scan

REPO = Path(__file__).resolve().parents[2]
NAMES = {"ants": "Ant (Formicidae)", "bees": "Honey bee (Apis)"}


@pytest.fixture(scope="module")
def classic_data(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ (12 per class), valid/ (6) and test/ (5) as symbolic links to hymenoptera files: train and valid
    from its train folder, test from its val folder (disjoint sets of files)."""
    root = tmp_path_factory.mktemp("flowers")
    for c in ("ants", "bees"):
        train = sorted(p for p in (hymenoptera / "train" / c).iterdir() if p.suffix == ".jpg")
        val = sorted(p for p in (hymenoptera / "val" / c).iterdir() if p.suffix == ".jpg")
        for split, files in (("train", train[:12]), ("valid", train[12:18]), ("test", val[:5])):
            (root / split / c).mkdir(parents=True)
            for f in files:
                (root / split / c / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def classic_run(classic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``graft train`` with the classic spellings, in a subprocess as a user types it; (run dir, stdout)."""
    save_dir = tmp_path_factory.mktemp("checkpoints")
    cmd = [sys.executable, "-m", "graft", "train", str(classic_data), "--arch", "mobilenet_v2"]
    cmd += ["--hidden_units", "64", "32", "--dropout", "0.2", "--learning_rate", "0.003", "--epochs", "3"]
    cmd += ["--save_dir", str(save_dir), "--name", "classic", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return save_dir / "classic", proc.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_classic_train_options_take_effect(classic_run: tuple[Path, str]) -> None:
    run_dir, _ = classic_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["hidden"] == [64, 32]
    assert config["dropout"] == 0.2 and config["lr"] == 0.003 and config["epochs"] == 3
    assert config["out"] == str(run_dir.parent)  # --save_dir is --out
    head = json.loads((run_dir / "model.json").read_text())["head"]
    assert head == {"hidden": [64, 32], "dropout": 0.2}


@pytest.mark.slow
@pytest.mark.subprocess
def test_test_folder_is_evaluated_once_and_never_trained_on(classic_run: tuple[Path, str], classic_data: Path) -> None:
    run_dir, stdout = classic_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_train"] == 24 and metrics["n_val"] == 12 and metrics["n_test"] == 10
    lo, hi = metrics["test_acc_ci95"]
    assert 0 <= lo <= metrics["test_acc"] <= hi <= 1
    assert f"test acc {metrics['test_acc']:.4f}" in stdout
    assert "the best epoch was chosen on val alone" in stdout
    evaluation = json.loads((run_dir / "eval-test" / "evaluation.json").read_text())
    assert evaluation["n"] == 10 and evaluation["accuracy"] == metrics["test_acc"]  # the same number, copied
    # the best epoch is the best val epoch of results.csv: the test folder took no part in choosing it
    with open(run_dir / "results.csv", newline="") as f:
        val_accs = [float(r["val_acc"]) for r in csv.DictReader(f)]
    assert metrics["best_val_acc"] == pytest.approx(max(val_accs), abs=1e-6)
    split = json.loads((run_dir / "data_report.json").read_text())["split"]
    assert all(p.startswith("train/") for p in split["train"]) and len(split["train"]) == 24
    assert all(p.startswith("valid/") for p in split["val"]) and len(split["val"]) == 12
    assert "test accuracy" in (run_dir / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.subprocess
def test_classic_predict_with_checkpoint_file(
    classic_run: tuple[Path, str], classic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = classic_run
    names = tmp_path / "cat_to_name.json"
    names.write_text(json.dumps(NAMES))
    image = sorted((classic_data / "test" / "bees").iterdir())[0]
    # predict.py IMAGE CHECKPOINT: the image first, the run's model file last
    args = ["predict", str(image), str(run_dir / "model.safetensors"), "--category_names", str(names)]
    assert main([*args, "--top_k", "2", "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [str(image)]
    labels = [p["label"] for p in rows[0]["predictions"]]
    assert sorted(labels) == sorted(NAMES.values())  # top_k 2 rows, display names
    assert main([*args, "--top_k", "1", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and labels[0] in line and labels[1] not in line

    # the CSV of the test folder (graft's order: RUN, then images) has the display names and the run's test_acc
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(classic_data / "test"), "--category_names", str(names),
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    with open(out, newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 10 and {r["label"] for r in preds} <= set(NAMES.values())
    correct = sum(NAMES[Path(r["path"]).parent.name] == r["label"] for r in preds)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert correct / 10 == pytest.approx(metrics["test_acc"], abs=0.1 + 1e-9)  # predict's float path: one near-tie


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_gpu_without_cuda_is_the_device_cuda_error(classic_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = []
    for flag in (["--gpu"], ["--device", "cuda"]):
        assert main(["train", str(classic_data), *flag, "--epochs", "1", "--save_dir", "/nonexistent/never"]) == 1
        captured = capsys.readouterr()
        lines.append(captured.err.strip())
    assert lines[0] == lines[1] and lines[0].startswith("error: --device cuda was asked for but no CUDA GPU")
    assert "\n" not in lines[0]


def test_aliases_are_hidden_and_default_to_graft_defaults() -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    train_help, predict_help = sub["train"].format_help(), sub["predict"].format_help()
    for flag in ("--hidden_units", "--learning_rate", "--gpu", "--save_dir", "--batch_size"):
        assert flag not in train_help
    for flag in ("--top_k", "--category_names", "--gpu"):
        assert flag not in predict_help
    plain = parser.parse_args(["train", "DATA"])
    assert (plain.hidden, plain.lr, plain.device, str(plain.out)) == ((), None, "auto", "runs")
    classic = parser.parse_args(["train", "DATA", "--hidden_units", "1024", "512", "256", "--gpu"])
    assert (classic.hidden, classic.device) == ([1024, 512, 256], "cuda")


def test_scan_leaves_a_held_out_test_folder_out(tmp_image_folder) -> None:
    classic = tmp_image_folder({"train/a": 3, "train/b": 3, "valid/a": 2, "valid/b": 2, "test/a": 2, "test/b": 2})
    split = tmp_image_folder({"a": 4, "b": 4, "test/a": 2, "test/b": 2})
    for root in (classic, split):
        ds = scan(root)
        assert held_out_test(root) == root / "test"
        assert ds.classes == ["a", "b"]
        assert not [s for s in ds.train + ds.val if "test" in s.path.relative_to(root).parts]
    # a folder called test that holds images (no class folders like its siblings) is a class like any other
    as_class = tmp_image_folder({"test": 3, "prod": 3})
    assert held_out_test(as_class) is None and scan(as_class).classes == ["prod", "test"]
