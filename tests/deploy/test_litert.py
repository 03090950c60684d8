"""Tests of ``graft export RUN --format tflite [--int8]`` (graft.deploy.litert): litert_torch's conversion of a
float run, checked in the LiteRT interpreter against graft's model, its PT2E int8 model compared with the float one,
and the folder's standalone ``predict.py`` run in a venv that has ai-edge-litert, numpy and Pillow but no torch."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from numerics import assert_accuracy_within_one_image

import graft
from graft.commands.cli import main
from graft.deploy import bundle, litert
from graft.deploy.export import export

#: predict.py resizes with Pillow, graft with torchvision: a grey level here and there (see test_onnx_int8.py).
STANDALONE_PROB_ATOL = 5e-3
#: The import packages predict.py needs for a .tflite model (besides numpy and Pillow).
LITERT_PACKAGES = ("ai_edge_litert",)
FOLDER_FILES = {"model.tflite", "model.tflite.json", "export.json", "predict.py", "requirements.txt"}


@pytest.fixture(scope="module")
def tflite_export(frozen_run, tmp_path_factory):
    """The mobilenet_v2 run as a float TFLite folder, verified on 32 val images."""
    out = tmp_path_factory.mktemp("tflite") / "tflite"
    return export(frozen_run.run_dir, format="tflite", out=out, verify_images=32, log=lambda line: None)


@pytest.fixture(scope="module")
def tflite_int8_export(frozen_run, tmp_path_factory):
    """The same run as a full-integer TFLite folder: 64 calibration images."""
    out = tmp_path_factory.mktemp("tflite-int8") / "tflite-int8"
    return export(
        frozen_run.run_dir, format="tflite", int8=True, out=out, calib=64, verify_images=32, log=lambda line: None
    )


def _input_details(path: Path) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return interpreter.get_input_details()[0], interpreter.get_output_details()[0]


@pytest.mark.slow
def test_float_folder_reproduces_graft_in_the_interpreter(tflite_export, frozen_run) -> None:
    folder = tflite_export.path.parent
    assert {p.name for p in folder.iterdir()} == FOLDER_FILES
    f = json.loads((folder / "export.json").read_text())
    assert f == tflite_export.figures
    assert f["format"] == "graft-tflite/1" and f["int8"] is False and f["executed"] is True
    assert f["val_images"] == frozen_run.metrics["n_val"] == 153
    assert_accuracy_within_one_image(f["fp32_val_acc"], f["graft_val_acc"], 153)
    assert f["fp32_top1_agreement"] >= 1 - 1 / 153 and f["fp32_max_probability_diff"] < 1e-4
    assert f["fp32_images_per_s"] > 0 and f["fp32_images_per_s_batch1"] > 0 and f["timing"]["batch_size"] == 32
    assert f["verification"]["max_abs_diff"] <= f["verification"]["tolerance"] == 1e-4
    assert f["verification"]["images"] == 32 and f["bytes"] == tflite_export.path.stat().st_size
    assert (folder / "requirements.txt").read_text().split() == ["ai-edge-litert", "numpy", "pillow"]
    assert bundle.summary(f).startswith(f"val acc {f['fp32_val_acc']:.4f} (graft's model ")

    sidecar = json.loads(tflite_export.sidecar.read_text())
    size = graft.load(frozen_run.run_dir, device="cpu").preprocess.input_size
    inp, out = _input_details(tflite_export.path)
    assert list(inp["shape"]) == sidecar["input"]["shape"] == [1, 3, size, size]
    assert sidecar["input"]["dtype"] == "float32" and inp["dtype"] == np.float32
    assert list(out["shape"]) == sidecar["output"]["shape"] == [1, 2]
    assert sidecar["classes"] == ["ants", "bees"] and sidecar["export_format"] == "tflite"
    assert sidecar["sha256"] == hashlib.sha256(tflite_export.path.read_bytes()).hexdigest()
    assert sidecar["verification"]["max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_int8_folder_is_full_integer_within_one_point(tflite_int8_export, tflite_export) -> None:
    folder = tflite_int8_export.path.parent
    assert {p.name for p in folder.iterdir()} == FOLDER_FILES
    f = json.loads((folder / "export.json").read_text())
    assert f == tflite_int8_export.figures and f["int8"] is True and f["val_images"] == 153
    # the float TFLite model in the same interpreter is the float export's
    assert f["fp32_val_acc"] == tflite_export.figures["fp32_val_acc"]
    assert f["fp32_val_acc"] - f["int8_val_acc"] <= bundle.MAX_DROP + 1e-9
    assert f["int8_top1_agreement"] >= 1 - 3 / 153
    assert f["int8_bytes"] * 3 < f["fp32_bytes"] and f["size_ratio"] > 3 and f["bytes"] == f["int8_bytes"]
    assert f["fp32_bytes"] == tflite_export.path.stat().st_size
    assert f["int8_images_per_s"] > 0 and f["speedup"] == f["int8_images_per_s"] / f["fp32_images_per_s"]
    assert f["calibration_images"] == 64 and f["quantization"]["calibration_split"] == "train"
    assert f["fp32_verification"]["max_abs_diff"] <= 1e-4
    assert bundle.summary(f).startswith(f"int8 val acc {f['int8_val_acc']:.4f} (fp32 ")

    sidecar = json.loads(tflite_int8_export.sidecar.read_text())
    inp, out = _input_details(tflite_int8_export.path)
    assert inp["dtype"] == out["dtype"] == np.int8
    assert sidecar["input"]["dtype"] == sidecar["output"]["dtype"] == "int8"
    assert sidecar["input"]["quantization"]["scale"] == pytest.approx(float(inp["quantization"][0]))
    assert sidecar["output"]["quantization"]["zero_point"] == int(out["quantization"][1])
    assert sidecar["quantized"]["calibration_images"] == 64


@pytest.mark.slow
@pytest.mark.subprocess
def test_standalone_predict_runs_without_torch_and_matches_graft_predict(
    tflite_export, tflite_int8_export, runtime_python, hymenoptera, frozen_run
) -> None:
    """predict.py in a venv where ``import torch`` fails: the float model gives ``graft predict``'s probabilities
    (within STANDALONE_PROB_ATOL: only the resize differs), the int8 model its top-1."""
    python = runtime_python(*LITERT_PACKAGES)
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    every = sorted(str(p) for p in (hymenoptera / "val").rglob("*.jpg"))
    paths = every[:: len(every) // 8][:8]
    expected = graft.load(frozen_run.run_dir, device="cpu").predict(paths, top_k=2)

    def standalone(folder: Path) -> list[dict]:
        cmd = [python, str(folder / "predict.py"), "--json", "--top-k", "2", *paths]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    got = standalone(tflite_export.path.parent)
    assert [r["path"] for r in got] == paths
    for r, e in zip(got, expected, strict=True):
        assert r["predictions"][0]["label"] == e[0].label, r["path"]
        assert r["predictions"][0]["probability"] == pytest.approx(e[0].probability, abs=STANDALONE_PROB_ATOL)
    got8 = standalone(tflite_int8_export.path.parent)
    agree = sum(r["predictions"][0]["label"] == e[0].label for r, e in zip(got8, expected, strict=True))
    assert agree >= len(paths) - 1


def test_missing_extra_is_one_error_line(fixture_run, monkeypatch, capsys) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else find_spec(name, *a)
    )
    assert main(["export", str(fixture_run), "--format", "tflite"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "pip install 'graft[tflite]'" in err and "litert-torch" in err
    assert not (fixture_run / "tflite").exists()


@pytest.mark.slow
def test_int8_losing_more_than_one_point_writes_nothing(
    tflite_export, tflite_int8_export, frozen_run, monkeypatch, capsys, tmp_path
) -> None:
    """The written models stand in for the conversions (no litert_torch run here); the val figures are made to lose
    two images: one error line, no folder."""
    monkeypatch.setattr(litert, "convert", lambda *a, **k: tflite_export.path.read_bytes())
    monkeypatch.setattr(litert, "quantize", lambda *a, **k: tflite_int8_export.path.read_bytes())
    val_figures = bundle.val_figures

    def worse(*args, **kwargs):
        figures = val_figures(*args, **kwargs)
        return figures | {"int8_val_acc": figures["fp32_val_acc"] - 2 / figures["val_images"]}

    monkeypatch.setattr(bundle, "val_figures", worse)
    out = tmp_path / "tflite-int8"
    run = str(frozen_run.run_dir)
    code = main(
        ["export", run, "--format", "tflite", "--int8", "--calib", "8", "--verify-images", "4", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("error: ") == 1 and "Traceback" not in err
    assert "loses 1.31 points" in err and "nothing was written" in err and "--format tflite" in err
    assert not out.exists()


def test_int8_observes_a_convolutions_relu6_after_the_clamp() -> None:
    """A ReLU6 after a convolution is calibrated on the clamped tensor (its observer sees 0..6), not on the
    convolution's output with the clamp sharing that range; a convolution without a clamp keeps its own observer."""
    pytest.importorskip("litert_torch")
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU6(), torch.nn.Conv2d(4, 4, 1)).eval()
    graph = torch.export.export(net, (torch.zeros(1, 3, 8, 8),)).module()
    quantizer = litert._clamp_fused(PT2EQuantizer)().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        prepared(torch.randn(1, 3, 8, 8) * 20)  # convolution outputs far outside 0..6
    convs = [n for n in prepared.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    clamp = next(n for n in prepared.graph.nodes if "hardtanh" in str(n.target))
    assert list(convs[0].users) == [clamp]  # nothing observes the convolution before its clamp
    (observer,) = (getattr(prepared, u.target) for u in clamp.users)
    assert float(observer.min_val) >= 0 and float(observer.max_val) <= 6
    assert [u.op for u in convs[1].users] == ["call_module"]
