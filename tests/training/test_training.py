"""Tests of graft.training: the run directory, the frozen backbone, the loop, seeds, layouts, heads, bad inputs.

One real run (``frozen_run``: mobilenet_v2 on hymenoptera) is shared; everything else trains a small random-init
network on a handful of generated images.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import graft
from graft.core.errors import ConfigError, RunError
from graft.core.rundir import RESULTS_HEADER
from graft.data import scan
from graft.models.backbones import get_backbone
from graft.models.model import GraftModel, build_model
from graft.training import fit, run_epoch

CPU = torch.device("cpu")
SMALL = "mobilenet_v3_small"
TINY = {"train/a": 4, "train/b": 4, "val/a": 2, "val/b": 2}


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the network or the user's feature cache."""
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "feature-cache"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_results(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def tiny_train(data: Path, out: Path, **options) -> graft.training.RunResult:
    """A fast run: small random-init network, CPU, 1 epoch unless told otherwise."""
    kwargs = {"arch": SMALL, "pretrained": "none", "epochs": 1, "seed": 0, "device": "cpu", "out": out}
    return graft.train(data, **(kwargs | options))


def noisy(colour: tuple[int, int, int], size: tuple[int, int] = (48, 48), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(colour, dtype=int) + rng.integers(-25, 25, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(a.astype(np.uint8))


def jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# --- the shared real run ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_frozen_run_model_json(frozen_run) -> None:
    run_dir = frozen_run.run_dir
    assert (run_dir / "model.safetensors").is_file()
    meta = read_json(run_dir / "model.json")
    assert meta["format"] == "graft-run/1"
    assert meta["arch"] == "mobilenet_v2"
    assert meta["mode"] == "freeze"
    assert meta["classes"] == ["ants", "bees"]
    assert meta["head"] == {"hidden": [], "dropout": 0.0}
    assert meta["in_features"] == 1280
    assert meta["preprocess"]["input_size"] == 224
    assert meta["preprocess"]["resize_size"] == 256
    assert meta["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["preprocess"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["pretrained"]["tag"] == "IMAGENET1K_V1"
    assert meta["pretrained"]["sha256"].startswith("b0353104")
    assert Path(meta["pretrained"]["file"]).name == "mobilenet_v2-b0353104.pth"
    assert {"graft", "torch", "torchvision", "python"} <= set(meta["versions"])
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["weights_file"] == "model.safetensors"
    assert meta["weights_sha256"] == hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_frozen_run_config_json(frozen_run) -> None:
    cfg = read_json(frozen_run.run_dir / "config.json")
    assert cfg["arch"] == "mobilenet_v2"
    assert cfg["mode"] == "freeze"
    assert cfg["epochs"] == 5
    assert cfg["seed"] == 0
    assert cfg["name"] == "frozen"
    assert cfg["lr"] is None
    assert cfg["resolved_lr"] == pytest.approx(1e-3)
    assert Path(cfg["out"]) == frozen_run.run_dir.parent
    assert set(graft.TrainConfig.__dataclass_fields__) <= set(cfg)


@pytest.mark.slow
def test_frozen_run_results_and_metrics(frozen_run) -> None:
    run_dir = frozen_run.run_dir
    header, rows = read_results(run_dir)
    assert header == RESULTS_HEADER
    assert header[:7] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert all(float(r["lr"]) < float(rows[0]["lr"]) for r in rows[1:])  # cosine decay
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("train_acc", "val_acc"))
    assert all(float(r["seconds"]) >= 0 for r in rows)

    metrics = read_json(run_dir / "metrics.json")
    assert metrics == frozen_run.metrics
    assert metrics["best_val_acc"] >= 0.9
    assert frozen_run.best_val_acc == metrics["best_val_acc"]
    assert metrics["epochs_run"] == 5
    assert metrics["n_train"] == 244
    assert metrics["n_val"] == 153
    assert metrics["classes"] == ["ants", "bees"]
    assert metrics["train_seconds"] > 0

    val_accs = [float(r["val_acc"]) for r in rows]
    assert metrics["best_val_acc"] == pytest.approx(max(val_accs), abs=1e-6)
    assert metrics["best_epoch"] == val_accs.index(max(val_accs)) + 1  # the first epoch that reached the best
    best_row = rows[metrics["best_epoch"] - 1]
    assert metrics["best_val_loss"] == pytest.approx(float(best_row["val_loss"]), abs=1e-6)
    # a val accuracy is a whole number of the 153 val images
    assert round(metrics["best_val_acc"] * 153) == pytest.approx(metrics["best_val_acc"] * 153, abs=1e-9)


@pytest.mark.slow
def test_frozen_run_data_report(frozen_run) -> None:
    report = read_json(frozen_run.run_dir / "data_report.json")
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "train/ants/imageNotFound.gif" in skipped
    assert skipped["train/ants/imageNotFound.gif"].strip()
    assert report["n_train"] == 244 and report["n_val"] == 153
    assert report["layout"] == "train/val"
    assert len(report["split"]["train"]) == 244 and len(report["split"]["val"]) == 153
    assert "train/ants/imageNotFound.gif" not in report["split"]["train"]
    assert all(p.startswith("val/") for p in report["split"]["val"])


# --- a frozen backbone stays frozen ----------------------------------------------------------------------------


def bn_buffers(model: GraftModel) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{b}": getattr(m, b).clone()
        for name, m in model.body.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in ("running_mean", "running_var", "num_batches_tracked")
    }


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_frozen_body_bn_statistics_do_not_change() -> None:
    torch.manual_seed(0)
    model, _, _ = build_model(get_backbone(SMALL), 2, pretrained="none")
    model.freeze()
    bn_before, body_before, head_before = bn_buffers(model), params(model.body), params(model.head)
    assert len(bn_before) > 30

    # inputs far from the current running statistics: any update of them would show
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 64, 64, generator=g) * 3 + 2
    y = torch.randint(0, 2, (16,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=g)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"head.{n}" for n in head_before}
    result = fit(
        model,
        loader,
        loader,
        optimizer=torch.optim.AdamW(trainable, lr=1e-2),
        scheduler=None,
        criterion=nn.CrossEntropyLoss(),
        epochs=2,
        device=CPU,
    )
    assert result.best_epoch >= 1

    bn_after = bn_buffers(model)
    assert all(torch.equal(bn_before[k], bn_after[k]) for k in bn_before)
    assert all(torch.equal(body_before[k], v) for k, v in params(model.body).items())
    assert any(not torch.equal(head_before[k], v) for k, v in params(model.head).items())

    model.train()
    assert model.training and model.head.training
    assert not model.body.training
    assert not any(m.training for m in model.body.modules())

    # the same batch through an unfrozen model in train mode does move the statistics (the check above can fail)
    torch.manual_seed(0)
    control, _, _ = build_model(get_backbone(SMALL), 2, pretrained="none")
    control.train()
    control(x[:8])
    assert any(not torch.equal(bn_before[k], v) for k, v in bn_buffers(control).items())


@pytest.fixture
def start_weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A mobilenet_v3_small weights file with non-default BatchNorm statistics, used as --pretrained PATH so
    that the starting body of a run is known exactly."""
    torch.manual_seed(1)
    net = get_backbone(SMALL).build()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / "start.safetensors"
    save_file(state, str(path))
    return path, state


def body_of(saved: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """(start tensor, saved tensor) for every body entry of a saved GraftModel state dict."""
    pairs = {k: (start[k.removeprefix("body.")], v) for k, v in saved.items() if k.startswith("body.")}
    assert len(pairs) == len([k for k in start if not k.startswith("classifier.3.")])
    return pairs


@pytest.mark.slow
def test_frozen_image_path_leaves_body_untouched(tmp_image_folder, tmp_path, start_weights) -> None:
    """mode=freeze, cache_features=False: augmented images go through the body on every step, yet the saved
    body (weights and BatchNorm statistics) is the starting one."""
    path, start = start_weights
    run = tiny_train(tmp_image_folder(TINY), tmp_path / "runs", pretrained=str(path), cache_features=False, epochs=2)
    saved = load_file(str(run.run_dir / "model.safetensors"))
    for k, (before, after) in body_of(saved, start).items():
        assert torch.equal(before, after), k
    assert read_json(run.run_dir / "model.json")["pretrained"]["source"] == "user file"


@pytest.mark.slow
def test_finetune_trains_body(tmp_image_folder, tmp_path, start_weights) -> None:
    """One epoch of plain fine-tuning (no head-only warm-up stage, whose better epoch would otherwise be the one
    kept on this unlearnable data) changes the body."""
    path, start = start_weights
    run = tiny_train(
        tmp_image_folder(TINY), tmp_path / "runs", pretrained=str(path), mode="finetune", batch_size=4, head_epochs=0
    )
    assert run.metrics["epochs_run"] == 1 and run.metrics["best_epoch"] == 1
    saved = load_file(str(run.run_dir / "model.safetensors"))
    pairs = body_of(saved, start)
    changed = {k for k, (before, after) in pairs.items() if not torch.equal(before, after)}
    assert any(k.endswith(".weight") and "features.0.0" in k for k in changed)  # the first conv learned
    assert any(k.endswith("running_mean") for k in changed)  # BatchNorm in train mode
    assert read_json(run.run_dir / "config.json")["resolved_lr"] == pytest.approx(2e-4)


# --- the loop --------------------------------------------------------------------------------------------------


def flipped_task() -> tuple[nn.Linear, DataLoader, DataLoader]:
    """Training data that teaches the opposite of the val labels, and a model that starts right on val:
    val accuracy is 1.0 after the first epoch and falls to 0.0 as training goes on."""
    x = torch.eye(2).repeat(8, 1)
    y = torch.tensor([0, 1]).repeat(8)
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 3.0], [3.0, 0.0]]))
        model.bias.zero_()
    train = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    val = DataLoader(TensorDataset(x, 1 - y), batch_size=16, shuffle=False)
    return model, train, val


def test_fit_restores_best_epoch_weights() -> None:
    model, train, val = flipped_task()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch(record, improved, *_) -> None:
        snapshots[record.epoch] = copy.deepcopy(model.state_dict())

    criterion = nn.CrossEntropyLoss()
    result = fit(
        model,
        train,
        val,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.2),
        scheduler=None,
        criterion=criterion,
        epochs=10,
        device=CPU,
        on_epoch=on_epoch,
    )
    accs = [r.val_acc for r in result.history]
    assert accs[0] == 1.0 and accs[-1] == 0.0  # the case is what it should be
    assert (result.best_epoch, result.best_score) == (1, 1.0)
    assert len(result.history) == 10

    loss, acc, _ = run_epoch(model, val, criterion, CPU)
    assert acc == result.best_score  # exactly: epoch 1's weights restored, the same val batches in this process
    assert loss == pytest.approx(result.history[0].val_loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k])
        assert not torch.equal(v, snapshots[10][k])


def test_fit_patience_stops_early() -> None:
    model, train, val = flipped_task()
    result = fit(
        model,
        train,
        val,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.2),
        scheduler=None,
        criterion=nn.CrossEntropyLoss(),
        epochs=10,
        device=CPU,
        patience=3,
    )
    assert result.best_epoch == 1
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]


def test_fit_non_finite_loss_is_an_error() -> None:
    model, train, val = flipped_task()
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(RunError, match="--lr"):
        fit(
            model,
            train,
            val,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            scheduler=None,
            criterion=nn.CrossEntropyLoss(),
            epochs=2,
            device=CPU,
        )


# --- seeds -----------------------------------------------------------------------------------------------------

TIMING = {"train_seconds", "fit_seconds"}


def untimed(run) -> tuple[dict, list[dict[str, str]], str]:
    metrics = {k: v for k, v in read_json(run.run_dir / "metrics.json").items() if k not in TIMING}
    _, rows = read_results(run.run_dir)
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    return metrics, rows, read_json(run.run_dir / "model.json")["weights_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("cache_features", [True, False])
def test_same_seed_same_run(tmp_image_folder, tmp_path, cache_features) -> None:
    data = tmp_image_folder(TINY)
    out = tmp_path / "runs"
    common = {"epochs": 2, "batch_size": 4, "cache_features": cache_features, "lr": 1e-2, "workers": 0}
    first = untimed(tiny_train(data, out, name="first", **common))
    second = untimed(tiny_train(data, out, name="second", **common))
    assert first == second  # exactly: one process, one CPU, the same seed, batches, threads and kernels
    assert len(first[1]) == 2
    if cache_features:  # a different seed starts from other weights: the comparison above can fail
        other = untimed(tiny_train(data, out, name="other", seed=1, **common))
        assert [r["train_loss"] for r in other[1]] != [r["train_loss"] for r in first[1]]
        assert other[2] != first[2]


# --- layouts, heads --------------------------------------------------------------------------------------------


def test_split_layout_is_recorded(tmp_image_folder, tmp_path) -> None:
    data = tmp_image_folder({"a": 10, "b": 6})
    run = tiny_train(data, tmp_path / "runs", val_split=0.3, seed=3)
    report = read_json(run.run_dir / "data_report.json")
    assert report["layout"] == "split"
    assert report["val_split"] == 0.3 and report["seed"] == 3
    assert read_json(run.run_dir / "config.json")["val_split"] == 0.3

    split = report["split"]
    train, val = set(split["train"]), set(split["val"])
    assert not train & val
    assert train | val == {p.relative_to(data).as_posix() for p in data.rglob("*.jpg")}
    # stratified: round(0.3 * n) of each class held out
    assert sum(p.startswith("a/") for p in val) == 3
    assert sum(p.startswith("b/") for p in val) == 2
    assert report["counts"] == {"train": {"a": 7, "b": 4}, "val": {"a": 3, "b": 2}}
    assert (run.metrics["n_train"], run.metrics["n_val"]) == (11, 5)

    # the split is the seeded one: the same seed gives it again, another seed another one
    assert scan(data, val_split=0.3, seed=3).split_dict() == split
    assert scan(data, val_split=0.3, seed=4).split_dict() != split


@pytest.mark.slow
def test_mlp_head_is_saved_and_rebuilt(tmp_image_folder, tmp_path) -> None:
    data = tmp_image_folder(TINY)
    run = tiny_train(data, tmp_path / "runs", hidden=(16,), dropout=0.2)
    meta = read_json(run.run_dir / "model.json")
    assert meta["head"] == {"hidden": [16], "dropout": 0.2}
    assert read_json(run.run_dir / "config.json")["hidden"] == [16]

    clf = graft.load(run.run_dir, device="cpu")
    head = clf.model.head
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[2].p, head[3].out_features) == (1024, 16, 0.2, 2)
    saved = load_file(str(run.run_dir / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in clf.model.state_dict().items())

    image = data / "val/a/img000.jpg"
    preds = clf.predict(image, top_k=2)
    assert sorted(p.label for p in preds) == ["a", "b"]
    assert sum(p.probability for p in preds) == pytest.approx(1.0, abs=1e-5)
    assert clf.predict(image, top_k=2) == preds  # exactly (the same batch twice in this process): dropout is off


# --- a folder full of odd and broken files ---------------------------------------------------------------------


@pytest.mark.slow
def test_bad_input_folder_trains_and_reports(tmp_path) -> None:
    root = tmp_path / "bad"
    for split in ("train", "val"):
        for cls, colour in (("blue", (30, 30, 220)), ("red", (220, 30, 30))):
            (root / split / cls).mkdir(parents=True)
            for j in range(3):
                noisy(colour, seed=j).save(root / split / cls / f"ok{j}.jpg")
    red, val_blue = root / "train/red", root / "val/blue"
    big = jpeg_bytes(noisy((220, 30, 30), (256, 256)))
    small = jpeg_bytes(noisy((220, 30, 30), (64, 64)))
    (red / "empty.jpg").write_bytes(b"")
    (red / "truncated.jpg").write_bytes(big[: len(big) // 2])  # ends inside the scan data
    (red / "text.jpg").write_text("not a picture, just some notes\n")
    noisy((220, 30, 30)).save(red / "png_named.jpg", format="PNG")
    noisy((220, 30, 30)).convert("L").save(red / "gray.jpg")
    rgba = noisy((220, 30, 30)).convert("RGBA")
    rgba.putalpha(100)
    rgba.save(red / "rgba.png")
    (val_blue / "truncated_header.jpg").write_bytes(small[:300])  # ends inside the JPEG header
    noisy((30, 30, 220)).convert("CMYK").save(val_blue / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° to display
    noisy((30, 30, 220), (40, 20)).save(val_blue / "exif.jpg", exif=exif)
    assert Image.open(val_blue / "cmyk.jpg").mode == "CMYK"

    run = tiny_train(root, tmp_path / "runs", epochs=2, cache_features=False, batch_size=4)

    report = read_json(run.run_dir / "data_report.json")
    reasons = {s["path"]: s["reason"].lower() for s in report["skipped"]}
    assert set(reasons) == {
        "train/red/empty.jpg",
        "train/red/truncated.jpg",
        "train/red/text.jpg",
        "val/blue/truncated_header.jpg",
    }
    assert "empty" in reasons["train/red/empty.jpg"]
    assert "truncated" in reasons["train/red/truncated.jpg"]
    # cut in the header or in the scan data: the same diagnosis (Pillow words these two differently)
    assert reasons["val/blue/truncated_header.jpg"] == reasons["train/red/truncated.jpg"]
    assert "not an image" in reasons["train/red/text.jpg"] and "text" in reasons["train/red/text.jpg"]

    used = set(report["split"]["train"]) | set(report["split"]["val"])
    convertible = {"train/red/png_named.jpg", "train/red/gray.jpg", "train/red/rgba.png"}
    convertible |= {"val/blue/cmyk.jpg", "val/blue/exif.jpg"}
    assert convertible <= used
    assert (run.metrics["n_train"], run.metrics["n_val"]) == (6 + 3, 6 + 2)
    assert report["counts"] == {"train": {"blue": 3, "red": 6}, "val": {"blue": 5, "red": 3}}
    assert run.metrics["epochs_run"] == 2
    assert (run.run_dir / "model.safetensors").is_file()


# --- options ---------------------------------------------------------------------------------------------------


def test_unknown_option_is_a_config_error(tmp_image_folder, tmp_path) -> None:
    out = tmp_path / "runs"
    with pytest.raises(ConfigError, match="epochz"):
        graft.train(tmp_image_folder(TINY), epochz=3, out=out)
    assert not out.exists()


def test_existing_run_name_needs_exist_ok(tmp_image_folder, tmp_path) -> None:
    data, out = tmp_image_folder(TINY), tmp_path / "runs"
    (out / "taken").mkdir(parents=True)
    (out / "taken/notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exist"):
        tiny_train(data, out, name="taken")
    assert [p.name for p in (out / "taken").iterdir()] == ["notes.txt"]

    run = tiny_train(data, out, name="taken", exist_ok=True)
    assert run.run_dir == out / "taken"
    assert (out / "taken/model.json").is_file() and (out / "taken/notes.txt").read_text() == "keep me"


def test_the_previous_results_list_names_what_graft_writes() -> None:
    from graft.core import rundir
    from graft.deploy.formats import DEFAULT_NAMES
    from graft.deploy.onnx_int8 import DEFAULT_DIR
    from graft.inference.int8_archive import PROGRAM_FILE
    from graft.insight.report import REPORT_FILE
    from graft.insight.testset import TEST_EVAL_DIR
    from graft.insight.tracking import MLFLOW_FILE, TENSORBOARD_DIR
    from graft.int8.backend import QUANT_FILE
    from graft.training.auto import AUTO_FILE
    from graft.training.resume import RESUME_FILE

    known = {REPORT_FILE, TEST_EVAL_DIR, MLFLOW_FILE, TENSORBOARD_DIR, QUANT_FILE, AUTO_FILE, RESUME_FILE}
    known |= {DEFAULT_DIR, PROGRAM_FILE, *DEFAULT_NAMES.values(), *(f"{n}.json" for n in DEFAULT_NAMES.values())}
    assert known <= set(rundir.PREVIOUS_RESULTS)


@pytest.mark.slow
def test_exist_ok_removes_the_previous_models_results_and_keeps_the_users_files(tmp_image_folder, tmp_path) -> None:
    out = tmp_path / "runs"
    first = tiny_train(tmp_image_folder(TINY | {"test/a": 2, "test/b": 2}), out, name="again").run_dir
    assert (first / "eval-test/evaluation.json").is_file()
    (first / "eval-other").mkdir()  # graft evaluate RUN other/ of the first model
    (first / "eval-other/evaluation.json").write_text("{}")
    (first / "model.onnx").write_bytes(b"first model")
    (first / "eval-mine").mkdir()  # the user's own folders and files, named as they like
    (first / "eval-mine/notes.txt").write_text("keep me")
    (first / "notes.txt").write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/evaluation.json").write_text("{}")
    (first / "eval-linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    second = tiny_train(tmp_image_folder(TINY), out, name="again", exist_ok=True).run_dir
    assert second == first
    names = {p.name for p in second.iterdir()}
    assert not names & {"eval-test", "eval-other", "model.onnx"}, names
    assert {"eval-mine", "notes.txt", "eval-linked", "model.json"} <= names
    assert (second / "eval-mine/notes.txt").read_text() == "keep me"
    assert (tmp_path / "elsewhere/evaluation.json").is_file()  # a link is never followed into
    assert "test_acc" not in json.loads((second / "metrics.json").read_text())
