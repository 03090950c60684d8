"""Tests of the ``graft`` command line, run as a user runs it: ``python -m graft ...`` in a subprocess, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.hub

from graft.core.errors import WeightsError
from graft.models.backbones import get_backbone
from graft.models.model import load_pretrained

REPO = Path(__file__).resolve().parents[2]
BEE = "val/bees/72100438_73de9f17af.jpg"


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Offline, no weights folder, torch hub cache and feature cache in empty tmp folders."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_") or k == "GRAFT_DATA"}
    (tmp_path / "no-weights").mkdir()
    env |= {
        "GRAFT_OFFLINE": "1",
        "GRAFT_WEIGHTS_DIR": str(tmp_path / "no-weights"),
        "TORCH_HOME": str(tmp_path / "torch-home"),
        "GRAFT_CACHE_DIR": str(tmp_path / "feature-cache"),
    }
    return env


def graft_cli(env: dict[str, str], *args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graft", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def assert_one_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit status 1, stderr a single ``error:`` message without a traceback; returns the message."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.startswith("error: "), proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [proc.stderr.splitlines()[0]]
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    return proc.stderr


# --- predict ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_json(cli_env, frozen_run, hymenoptera) -> None:
    ant = sorted((hymenoptera / "val/ants").glob("*.jpg"))[0]
    proc = graft_cli(cli_env, "predict", frozen_run.run_dir, hymenoptera / BEE, ant, "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == [str(hymenoptera / BEE), str(ant)]
    for r in results:
        assert set(r) == {"path", "predictions"}
        assert [set(p) for p in r["predictions"]] == [{"label", "probability"}] * 2  # top-5 clipped to 2 classes
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert {p["label"] for p in r["predictions"]} == {"ants", "bees"}
    assert results[0]["predictions"][0]["label"] == "bees"


@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_top_k_category_names_and_bad_files(cli_env, frozen_run, hymenoptera, tmp_path) -> None:
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"ants": "Ant", "bees": "Bee"}))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    bee = hymenoptera / BEE
    args = ["predict", frozen_run.run_dir, bee, notes, "--top-k", "1", "--category-names", names, "--device", "cpu"]
    proc = graft_cli(cli_env, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == 2
    assert results[0]["path"] == str(bee)
    assert len(results[0]["predictions"]) == 1
    assert results[0]["predictions"][0]["label"] == "Bee"
    assert 0.5 < results[0]["predictions"][0]["probability"] <= 1
    assert results[1]["path"] == str(notes) and "not an image" in results[1]["error"]
    assert "predictions" not in results[1]

    table = graft_cli(cli_env, *args)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bee}  Bee ")
    assert lines[1].startswith(f"{notes}  error: not an image")


@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_errors(cli_env, frozen_run, tmp_path) -> None:
    assert_one_error(graft_cli(cli_env, "predict", tmp_path / "no-run", tmp_path), "no-run", "does not exist")
    names = tmp_path / "names.json"
    names.write_text("[1, 2]")
    assert_one_error(
        graft_cli(cli_env, "predict", frozen_run.run_dir, tmp_path, "--category-names", names), "JSON object"
    )


# --- check and archs -------------------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_check(cli_env, hymenoptera) -> None:
    proc = graft_cli(cli_env, "check", hymenoptera)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "train/ants/imageNotFound.gif" in out
    assert "train/val" in out
    total = next(line.split() for line in out.splitlines() if line.strip().startswith("total"))
    assert total == ["total", "244", "153"]
    assert "skipped 1 file:" in out

    proc = graft_cli(cli_env, "check", hymenoptera, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["n_train"], report["n_val"]) == (244, 153)
    assert report["classes"] == ["ants", "bees"]
    assert report["counts"]["train"] == {"ants": 123, "bees": 121}
    assert [s["path"] for s in report["skipped"]] == ["train/ants/imageNotFound.gif"]
    assert report["skipped"][0]["reason"]


@pytest.mark.subprocess
def test_archs_json(cli_env) -> None:
    proc = graft_cli(cli_env, "archs", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert len(rows) >= 70
    assert rows["mobilenet_v2"]["pretrained_available"] is True
    assert "IMAGENET1K_V1" in rows["mobilenet_v2"]["available_weights"]
    assert rows["efficientnet_lite0"]["pretrained_available"] is True
    assert rows["resnet18"]["pretrained_available"] is False
    assert rows["resnet18"]["available_weights"] == []
    assert rows["resnet18"]["in_features"] == 512 and rows["resnet18"]["head"] == "fc"


# --- train -----------------------------------------------------------------------------------------------------


def make_folder(root: Path, layout: dict[str, int]) -> Path:
    from PIL import Image

    for i, (folder, n) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.new("RGB", (32, 32), ((60 * i) % 256, (40 * j) % 256, 90)).save(root / folder / f"{j}.jpg")
    return root


TWO_CLASSES = {"train/ants": 2, "train/bees": 2, "val/ants": 1, "val/bees": 1}


@pytest.mark.subprocess
def test_train_without_weights_fails_fast_and_clearly(cli_env, tmp_path) -> None:
    data = make_folder(tmp_path / "data", TWO_CLASSES)
    args = ["train", data, "--arch", "resnet18", "--epochs", "1", "--out", tmp_path / "runs"]
    start = time.monotonic()
    proc = graft_cli(cli_env, *args, timeout=60)
    assert time.monotonic() - start < 20
    message = assert_one_error(proc, "resnet18-f37072fd.pth", "--pretrained none")
    assert "GRAFT_OFFLINE" in message

    debug = graft_cli(cli_env, *args, "--debug", timeout=60)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "WeightsError" in debug.stderr


def test_missing_weights_error_in_process(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", getattr(torch.hub, "_hub_dir", None), raising=False)
    torch.hub.set_dir(str(tmp_path / "hub"))
    spec = get_backbone("resnet18")
    start = time.monotonic()
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd\.pth"):
        load_pretrained(spec, "auto")
    assert time.monotonic() - start < 5


@pytest.mark.subprocess
def test_train_from_the_command_line(cli_env, tmp_path) -> None:
    data = make_folder(tmp_path / "data", TWO_CLASSES)
    proc = graft_cli(
        cli_env,
        "train",
        data,
        "--arch",
        "mobilenet_v3_small",
        "--pretrained",
        "none",
        "--epochs",
        "2",
        "--hidden",
        "8,4",
        "--no-cache-features",
        "--scheduler",
        "none",
        "--device",
        "cpu",
        "--out",
        tmp_path / "runs",
        "--name",
        "cli",
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "runs/cli"
    assert str(run_dir) in proc.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["arch"], config["epochs"], config["hidden"]) == ("mobilenet_v3_small", 2, [8, 4])
    assert (config["cache_features"], config["scheduler"], config["pretrained"]) == (False, "none", "none")
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2


def one_class(root: Path) -> list[object]:
    return [make_folder(root, {"only": 3})]


def empty_class(root: Path) -> list[object]:
    make_folder(root, TWO_CLASSES)
    for f in (root / "train/bees").iterdir():
        f.unlink()
    return [root]


def mismatch(root: Path) -> list[object]:
    return [make_folder(root, {"train/ants": 2, "train/bees": 2, "val/ants": 1, "val/wasps": 1})]


ERRORS = {
    "missing folder": (lambda root: [root / "nope"], ["nope", "does not exist"]),
    "one class": (one_class, ["only one class", "only"]),
    "empty class": (empty_class, ["'bees'", "no usable image"]),
    "class mismatch": (mismatch, ["only in train: bees", "only in val: wasps"]),
    "unknown arch": (
        lambda root: [make_folder(root, TWO_CLASSES), "--arch", "resnet19"],
        ["unknown architecture 'resnet19'", "Did you mean", "resnet18"],
    ),
    "zero epochs": (lambda root: [make_folder(root, TWO_CLASSES), "--epochs", "0"], ["--epochs must be >= 1"]),
}


@pytest.mark.subprocess
@pytest.mark.parametrize("case", list(ERRORS))
def test_train_errors_are_one_readable_line(cli_env, tmp_path, case) -> None:
    make_args, fragments = ERRORS[case]
    args = make_args(tmp_path / "data")
    proc = graft_cli(cli_env, "train", *args, "--pretrained", "none", "--out", tmp_path / "runs", timeout=60)
    assert_one_error(proc, *fragments)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
