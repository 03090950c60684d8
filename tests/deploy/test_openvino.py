"""Tests of ``graft export RUN --format openvino [--int8]`` (graft.deploy.openvino): the float IR verified against
graft's model, NNCF's int8 IR compared with it on val, and the folder's ``predict.py`` run in a venv that has
OpenVINO, numpy and Pillow but no torch, against ``graft predict``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numerics import assert_accuracy_within_one_image

import graft
from graft.commands.cli import main
from graft.deploy import bundle
from graft.deploy import openvino as ov_export
from graft.deploy.export import export
from graft.deploy.standalone_predict import openvino_runner

#: predict.py resizes with Pillow, graft with torchvision (see test_onnx_int8.py).
STANDALONE_PROB_ATOL = 5e-3
#: The int8 IR quantizes its input: a grey level more or less in predict.py's resize can cross a quantization step,
#: which the int8 network then carries to its output (measured: 0.035 at most, 0.004 median, on hymenoptera's 153
#: val images with MobileNetV2, against the same IR fed graft's preprocessing; top-1 the same on every image).
INT8_STANDALONE_PROB_ATOL = 5e-2
FOLDER_FILES = {"model.xml", "model.bin", "model.xml.json", "export.json", "predict.py", "requirements.txt"}


@pytest.fixture(scope="module")
def float_export(frozen_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino") / "openvino"
    return export(frozen_run.run_dir, format="openvino", out=out, verify_images=32, log=lambda line: None)


@pytest.fixture(scope="module")
def int8_export(frozen_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino") / "openvino-int8"
    return export(
        frozen_run.run_dir, format="openvino", int8=True, out=out, calib=64, verify_images=32, log=lambda line: None
    )


@pytest.fixture(scope="module")
def openvino_python(runtime_python) -> Path:
    """A Python that sees only OpenVINO (its shared libraries are inside the package), numpy and Pillow."""
    return runtime_python("openvino")


def read_ir(path: Path):
    import openvino as ov

    return ov.Core().read_model(str(path))


@pytest.mark.slow
def test_float_folder_reproduces_graft(float_export, frozen_run) -> None:
    folder = float_export.path.parent
    assert {p.name for p in folder.iterdir()} == FOLDER_FILES
    f = json.loads((folder / "export.json").read_text())
    assert f == float_export.figures
    assert f["format"] == "graft-openvino/1" and f["int8"] is False and f["executed"] is True
    assert f["val_images"] == frozen_run.metrics["n_val"] == 153
    assert_accuracy_within_one_image(f["fp32_val_acc"], frozen_run.best_val_acc, 153)
    assert f["fp32_top1_agreement"] >= 1 - 1 / 153 and f["fp32_max_probability_diff"] < 1e-4
    assert f["fp32_verification"]["max_abs_diff"] <= f["fp32_verification"]["tolerance"] == 1e-4
    assert f["fp32_images_per_s"] > 0 and f["fp32_images_per_s_batch1"] > 0 and f["timing"]["batch_size"] == 32
    assert f["bytes"] == f["fp32_bytes"] == sum((folder / n).stat().st_size for n in ("model.xml", "model.bin"))
    assert (folder / "requirements.txt").read_text().split() == ["openvino", "numpy", "pillow"]

    sidecar = json.loads(float_export.sidecar.read_text())
    assert float_export.sidecar.name == "model.xml.json" and sidecar["classes"] == ["ants", "bees"]
    assert sidecar["sha256"] == hashlib.sha256((folder / "model.xml").read_bytes()).hexdigest()
    assert sidecar["weights_file"]["sha256"] == hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest()
    assert sidecar["runtime"]["inference_precision_hint"] == "f32" and sidecar["quantized"] is False

    import openvino as ov

    model = read_ir(float_export.path)
    embedded = json.loads(model.get_rt_info(["graft"]).astype(str))
    assert embedded["classes"] == sidecar["classes"] and embedded["preprocess"] == sidecar["preprocess"]
    size = graft.load(frozen_run.run_dir, device="cpu").preprocess.input_size
    shape = model.input(0).get_partial_shape()
    assert shape[0].is_dynamic and [d.get_length() for d in list(shape)[1:]] == [3, size, size]
    assert model.input(0).get_any_name() == "input" and model.output(0).get_any_name() == "logits"
    constants = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    assert constants and not any(op.get_element_type() == ov.Type.f16 for op in constants)  # float32 weights kept


@pytest.mark.slow
def test_int8_folder_is_smaller_within_one_point(int8_export, frozen_run) -> None:
    folder = int8_export.path.parent
    assert {p.name for p in folder.iterdir()} == FOLDER_FILES
    f = json.loads((folder / "export.json").read_text())
    assert f == int8_export.figures
    assert f["format"] == "graft-openvino-int8/1" and f["int8"] is True and f["val_images"] == 153
    assert_accuracy_within_one_image(f["fp32_val_acc"], frozen_run.best_val_acc, 153)
    assert f["fp32_val_acc"] - f["int8_val_acc"] <= bundle.MAX_DROP + 1e-9
    assert f["int8_top1_agreement"] >= 1 - 2 / 153
    assert f["int8_bytes"] * 3 < f["fp32_bytes"] and f["bytes"] == f["int8_bytes"]
    assert f["fp32_images_per_s"] > 0 and f["int8_images_per_s"] > 0 and f["speedup"] > 0
    assert f["calibration_images"] == 64 and f["quantization"]["calibration_split"] == "train"
    assert f["fp32_verification"]["max_abs_diff"] <= 1e-4

    model = read_ir(int8_export.path)
    assert "FakeQuantize" in {op.get_type_name() for op in model.get_ops()}
    sidecar = json.loads(int8_export.sidecar.read_text())
    assert sidecar["quantized"]["calibration_images"] == 64
    assert json.loads(model.get_rt_info(["graft"]).astype(str))["quantized"] == sidecar["quantized"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_standalone_predict_runs_without_torch(
    float_export, int8_export, openvino_python, hymenoptera, frozen_run
) -> None:
    """predict.py in a venv where ``import torch`` fails: the float IR gives ``graft predict``'s probabilities, the
    int8 IR the int8 model's as graft ran it in OpenVINO (only the resize differs, which int8 amplifies)."""
    no_torch = subprocess.run([openvino_python, "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    paths = [str(p) for cls in ("ants", "bees") for p in sorted((hymenoptera / "val" / cls).glob("*.jpg"))[:3]]
    clf = graft.load(frozen_run.run_dir, device="cpu")

    def standalone(folder: Path) -> list[dict]:
        cmd = [openvino_python, str(folder / "predict.py"), "--json", "--top-k", "2", *paths]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def check(got: list[dict], expected: np.ndarray, atol: float) -> None:
        assert [r["path"] for r in got] == paths
        for r, row in zip(got, expected, strict=True):
            assert r["predictions"][0]["label"] == clf.classes[int(row.argmax())], r["path"]
            probs = {p["label"]: p["probability"] for p in r["predictions"]}
            assert [probs[c] for c in clf.classes] == pytest.approx(row, abs=atol), r["path"]

    by_label = [{p.label: p.probability for p in row} for row in clf.predict(paths, top_k=len(clf.classes))]
    check(
        standalone(float_export.path.parent),
        np.asarray([[row[c] for c in clf.classes] for row in by_label]),
        STANDALONE_PROB_ATOL,
    )
    batch = next(iter(clf.batches(paths, batch_size=len(paths)))).images.numpy()
    int8 = openvino_runner(int8_export.path, json.loads(int8_export.sidecar.read_text()))
    check(
        standalone(int8_export.path.parent),
        bundle.softmax(np.asarray(int8(batch), dtype=np.float64)),
        INT8_STANDALONE_PROB_ATOL,
    )


@pytest.mark.parametrize(("args", "missing"), [([], "openvino"), (["--int8"], "nncf")])
def test_missing_extra_is_one_error_line(args, missing, tmp_path: Path, monkeypatch, capsys) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    assert main(["export", str(tmp_path), "--format", "openvino", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --format openvino needs {missing}: pip install 'graft[openvino]'")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_int8_losing_more_than_one_point_writes_nothing(frozen_run, tmp_path: Path, monkeypatch, capsys) -> None:
    """The int8 model is the float one here (NNCF left out, to keep it short) and val_figures reports it two
    images worse: the export ends in one error line and writes no folder."""
    val_figures = bundle.val_figures

    def worse(*args, **kwargs):
        figures = val_figures(*args, **kwargs)
        return figures | {"int8_val_acc": figures["fp32_val_acc"] - 2 / figures["val_images"]}

    monkeypatch.setattr(ov_export, "quantize", lambda model, calibration: model)
    monkeypatch.setattr(bundle, "val_figures", worse)
    out = tmp_path / "openvino-int8"
    argv = ["export", str(frozen_run.run_dir), "--format", "openvino", "--int8", "--calib", "8", "--out", str(out)]
    assert main([*argv, "--verify-images", "4"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: the int8 model loses 1.31 points") and "nothing was written" in err
    assert "graft export" in err and "--format openvino" in err
    assert not out.exists() and not (frozen_run.run_dir / "openvino-int8").exists()


@pytest.mark.subprocess
def test_openvino_and_nncf_send_no_usage_reports() -> None:
    """OpenVINO and NNCF report usage by default; graft puts their own no-op stand-ins in place before importing
    them (checked in a fresh process, where openvino is not imported yet)."""
    code = (
        "import sys\n"
        "from graft.deploy.openvino import no_telemetry\n"
        "no_telemetry()\n"
        "import openvino, nncf.telemetry.wrapper as w\n"
        "print(type(sys.modules['openvino.tools.ovc'].telemetry).__module__, type(w.telemetry).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "MagicMock"]


@pytest.mark.slow
def test_cli_prints_the_figures_and_the_folder(frozen_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ov"
    assert main(["export", str(frozen_run.run_dir), "--format", "openvino", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    record = json.loads((out / "export.json").read_text())
    assert printed[-2] == bundle.summary(record) and printed[-2].startswith("val acc ")
    assert printed[-1] == f"wrote {out}/: " + ", ".join(sorted(FOLDER_FILES))
