"""Tests of graft.deploy.export (ONNX and TorchScript, verified against PyTorch) and of batch prediction to CSV
(``graft predict RUN FOLDER --out preds.csv``), the two offline halves of shipping a run."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from numerics import (
    PROB_ATOL,
    assert_accuracy_within_one_image,
    assert_labels_match,
    assert_logits_close,
    assert_same_top1,
)

import graft
from graft.commands.cli import main
from graft.deploy.export import export
from graft.deploy.formats import ExportError, sidecar_path
from graft.inference.classifier import Classifier
from graft.inference.paths import expand_paths, iter_paths


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_OFFLINE", "1")


@pytest.fixture(scope="module")
def clf(frozen_run) -> Classifier:
    return graft.load(frozen_run.run_dir, device="cpu")


@pytest.fixture(scope="module")
def onnx_export(frozen_run, tmp_path_factory):
    """The mobilenet_v2 run exported as ONNX, verified on all its val images."""
    return export(frozen_run.run_dir, format="onnx", out=tmp_path_factory.mktemp("onnx") / "m.onnx", verify_images=0)


@pytest.fixture
def run_copy(frozen_run, tmp_path: Path) -> Path:
    return Path(shutil.copytree(frozen_run.run_dir, tmp_path / "run"))


# --- ONNX ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.numerics
def test_onnx_export_matches_pytorch_on_all_val_images(onnx_export, frozen_run, clf, hymenoptera) -> None:
    v = onnx_export.verification
    assert v.images == frozen_run.metrics["n_val"] == 153 and v.skipped == 0
    assert v.max_abs_diff <= 1e-4
    assert v.top1_agree == 153 and v.passed  # export() keeps a file only when every top-1 agrees
    assert 1 in v.batch_sizes and max(v.batch_sizes) == 32  # batch size 1 and full batches both ran

    # Independently of the exporter's own check: onnxruntime's logits on every val image are graft's, in other
    # batches (51 against 153), so to rounding.
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_export.path), providers=["CPUExecutionProvider"])
    paths = expand_paths([hymenoptera / "val"])
    with ThreadPoolExecutor(2) as pool:
        batch = torch.stack(list(pool.map(clf.tensor, paths)))  # what graft.inference feeds its model
    graft_logits = clf.logits(batch).numpy()
    graft_top1 = [clf.classes[i] for i in graft_logits.argmax(1)]
    graft_probs = torch.from_numpy(graft_logits).softmax(1).tolist()

    # graft predict, in a batch of 10: the same classes and probabilities
    some = [*range(5), *range(len(paths) - 5, len(paths))]
    predicted = clf.predict([paths[i] for i in some], top_k=1)
    assert_labels_match([p[0].label for p in predicted], [graft_top1[i] for i in some], [graft_probs[i] for i in some])
    for p, i in zip(predicted, some, strict=True):
        assert p[0].probability == pytest.approx(graft_probs[i][clf.classes.index(p[0].label)], abs=PROB_ATOL)

    # training's val phase ran the head on stored features in batches of 32: the same accuracy, to one image
    correct = sum(label == p.parent.name for label, p in zip(graft_top1, paths, strict=True))
    assert_accuracy_within_one_image(correct / 153, frozen_run.metrics["best_val_acc"], 153)

    ort_logits = np.concatenate(
        [session.run(["logits"], {"input": batch[start : start + 51].numpy()})[0] for start in range(0, len(paths), 51)]
    )
    assert_logits_close(ort_logits, graft_logits)
    assert_same_top1(ort_logits, graft_logits)


@pytest.mark.slow
def test_onnx_file_and_sidecar_describe_the_model(onnx_export, frozen_run) -> None:
    import onnx

    meta = json.loads((frozen_run.run_dir / "model.json").read_text())
    side = json.loads(sidecar_path(onnx_export.path).read_text())
    assert onnx_export.sidecar == onnx_export.path.with_name("m.onnx.json")
    assert side["classes"] == ["ants", "bees"] and side["arch"] == "mobilenet_v2"
    assert side["preprocess"] == meta["preprocess"]
    assert side["input"] == {"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32"}
    assert side["output"]["name"] == "logits" and side["quantized"] is False
    assert side["sha256"] == hashlib.sha256(onnx_export.path.read_bytes()).hexdigest()
    assert side["verification"]["max_abs_diff"] <= 1e-4 and side["opset"] >= 17
    assert side["source"]["weights_sha256"] == meta["weights_sha256"]

    model = onnx.load(str(onnx_export.path))
    onnx.checker.check_model(model)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    embedded = json.loads({p.key: p.value for p in model.metadata_props}["graft"])
    assert embedded["classes"] == side["classes"] and embedded["preprocess"] == side["preprocess"]


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_onnx_batch_axis_is_dynamic(onnx_export, batch) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_export.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": np.zeros((batch, 3, 224, 224), np.float32)})
    assert logits.shape == (batch, 2)


# --- TorchScript, the CLI, refusals -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_from_the_cli(frozen_run, tmp_path, capsys) -> None:
    out = tmp_path / "ts" / "model.pt"
    argv = ["export", str(frozen_run.run_dir), "--format", "torchscript", "--out", str(out), "--verify-images", "20"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "verified on 20 images" in printed and "top-1 agrees on 20/20" in printed

    extra = {"graft.json": ""}
    module = torch.jit.load(str(out), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["graft.json"])["classes"] == ["ants", "bees"]
    for batch in (1, 5):
        assert module(torch.zeros(batch, 3, 224, 224)).shape == (batch, 2)
    side = json.loads(sidecar_path(out).read_text())
    assert side["export_format"] == "torchscript" and side["verification"]["top1_agree"] == 20


@pytest.mark.slow
def test_export_verifies_on_given_images_and_keeps_nothing_unverified(run_copy, hymenoptera, tmp_path, monkeypatch):
    import graft.deploy.export as gx

    report = json.loads((run_copy / "data_report.json").read_text())
    (run_copy / "data_report.json").write_text(json.dumps(report | {"root": str(tmp_path / "moved")}))
    with pytest.raises(ExportError, match="not on this machine; pass --images"):
        export(run_copy, format="torchscript")

    real = gx.torchscript_runner

    def off_by_a_little(data: bytes):
        run = real(data)
        return lambda batch: run(batch) + 1e-3  # what a subtly wrong exporter would give

    monkeypatch.setattr(gx, "torchscript_runner", off_by_a_little)
    with pytest.raises(ExportError, match=r"does not reproduce.*3 images \(.*val/bees\).*difference\| 1.00e-03"):
        export(run_copy, format="torchscript", images=hymenoptera / "val/bees", verify_images=3)
    assert not list(run_copy.glob("model.torchscript*"))


# --- graft predict --out: streaming batch prediction to CSV ----------------------------------------------------


@pytest.mark.slow
def test_predict_folder_to_csv(frozen_run, hymenoptera, tmp_path, capsys) -> None:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    bees = sorted((hymenoptera / "val/bees").glob("*.jpg"))[:4]
    for b in bees[:3]:
        shutil.copy(b, folder / b.name)
    shutil.copy(bees[3], folder / "sub" / bees[3].name)
    (folder / "notes.jpg").write_text("a text file, not a picture")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "preds.csv"

    argv = ["predict", str(frozen_run.run_dir), str(folder), "--out", str(out), "--top-k", "2", "--batch-size", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "6 images (2 unreadable)" in capsys.readouterr().err
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "probability", "top_k", "error"]
    assert [r["path"] for r in rows] == [str(p) for p in expand_paths([folder])]
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"notes.jpg", "empty.png"} and "text" in errors["notes.jpg"]
    assert all(r["label"] == r["probability"] == r["top_k"] == "" for r in rows if r["error"])
    good = [r for r in rows if not r["error"]]
    assert len(good) == 4 and all(r["label"] == "bees" for r in good)
    for r in good:
        top = json.loads(r["top_k"])
        assert list(top) == ["bees", "ants"] and float(r["probability"]) == pytest.approx(top["bees"], abs=1e-6)
        assert sum(top.values()) == pytest.approx(1.0, abs=1e-5)
    assert not list(tmp_path.glob("*.partial"))

    assert main(["predict", str(frozen_run.run_dir), str(folder), "--out", str(out), "--json"]) == 1
    assert "--out writes a CSV" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_paths_streams_with_bounded_look_ahead(clf, hymenoptera) -> None:
    """A lazy input is consumed a few batches ahead of the output, never all at once (constant memory)."""
    bees = sorted((hymenoptera / "val/bees").glob("*.jpg"))[:5]
    pulled = 0

    def endless():
        nonlocal pulled
        while True:
            for p in bees:
                pulled += 1
                yield p

    results = clf.predict_paths(endless(), top_k=1, batch_size=4, workers=1)
    first = next(results)
    assert first.predictions[0].label == "bees"
    assert pulled <= 3 * 4 + 1
    for _ in range(40):
        next(results)
    assert pulled <= 41 + 3 * 4 + 1
    results.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_parallel_decoding_gives_identical_results(clf, hymenoptera, workers) -> None:
    """Exactly: the decoding threads change who decodes an image, not what is computed (the same batches of 4
    through the same model in this process)."""
    paths = expand_paths([hymenoptera / "val/ants"])[:10]
    serial = [r.predictions for r in clf.predict_paths(paths, top_k=2, batch_size=4, workers=0)]
    assert [r.predictions for r in clf.predict_paths(paths, top_k=2, batch_size=4, workers=workers)] == serial


def test_iter_paths_is_lazy_and_sorted(tmp_path) -> None:
    for name in ("b.jpg", "a/z.jpg", "a.jpg", "a/b/c.jpg", ".hidden/x.jpg", "c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "loop").symlink_to(tmp_path)  # a folder reached twice is walked once
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    it = iter_paths([tmp_path])
    assert not isinstance(it, list)
    names = [p.relative_to(tmp_path).as_posix() for p in it]
    assert names == ["a/b/c.jpg", "a/z.jpg", "a.jpg", "b.jpg", "broken.jpg", "c.jpg"]
    with pytest.raises(graft.core.errors.GraftError, match="does not exist"):
        iter_paths([tmp_path, tmp_path / "missing"])  # raised at the call, before anything is read
