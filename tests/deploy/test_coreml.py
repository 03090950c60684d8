"""Tests of ``graft export RUN --format coreml [--int8]`` (graft.deploy.coreml): Core ML cannot run on Linux, so
the written package's spec is what is checked (image input, classifier outputs, preprocessing, weights), and these
tests assert those figures, the folder, the int8 size, and the refusals (missing coremltools, a package whose spec
does not match graft's model)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import py_compile
from pathlib import Path

import pytest

from graft.commands.cli import main
from graft.core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from graft.deploy import bundle, coreml
from graft.deploy.bundle import MAX_DROP
from graft.deploy.export import export
from graft.deploy.formats import ExportError

FOLDER_FILES = {"model.mlpackage", "model.mlpackage.json", "export.json", "predict_coreml.py", "requirements.txt"}


@pytest.fixture(scope="module")
def float_export(frozen_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml") / "export"
    return export(frozen_run.run_dir, format="coreml", out=out, log=lambda line: None)


@pytest.fixture(scope="module")
def int8_export(frozen_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml-int8") / "export"
    return export(frozen_run.run_dir, format="coreml", int8=True, out=out, log=lambda line: None)


def assert_spec_checks(checks: dict) -> None:
    assert checks["class_labels"] == ["ants", "bees"]
    assert checks["input_size"] == 224
    assert checks["scale"] == pytest.approx(1 / 255, rel=1e-6)
    assert checks["bias"] == pytest.approx([-m for m in IMAGENET_MEAN], rel=1e-6)
    assert checks["inv_std"] == pytest.approx([1 / s for s in IMAGENET_STD], rel=1e-6)
    # mobilenet_v2 with its BatchNorms folded: 52 convolutions' weights and biases, the head's, the 1/std
    assert checks["weight_tensors"] == 107 and checks["weight_values"] > 2_200_000


@pytest.mark.slow
def test_float_package_spec_matches_graft(float_export, frozen_run) -> None:
    folder = float_export.path.parent
    assert float_export.path == folder / "model.mlpackage" and float_export.path.is_dir()
    assert {p.name for p in folder.iterdir()} == FOLDER_FILES  # no generic predict.py: it cannot run Core ML
    record = json.loads((folder / "export.json").read_text())
    assert record == float_export.figures
    assert record["format"] == "graft-coreml/1" and record["int8"] is False and record["executed"] is False
    assert record["not_executed_because"].startswith("Core ML runs only on Apple platforms")
    checks = record["checks"]
    assert_spec_checks(checks)
    assert checks["int8_tensors"] == 0 and checks["max_weight_diff"] == 0.0  # float32 weights, not float16
    assert checks["weight_bytes"] >= 4 * checks["weight_values"]
    # graft's interpreter of the written program (not Core ML) over the run's 153 val images
    assert record["interpreted"] is True and record["val_images"] == 153
    assert record["fp32_top1_agreement"] == 1.0 and record["fp32_max_probability_diff"] < 1e-4
    assert record["fp32_val_acc"] == record["graft_val_acc"]
    files = {f"model.mlpackage/{p.relative_to(float_export.path).as_posix()}": p.read_bytes()
             for p in sorted(float_export.path.rglob("*")) if p.is_file()}  # fmt: skip
    assert record["bytes"] == sum(len(d) for d in files.values())

    sidecar = json.loads(float_export.sidecar.read_text())
    assert float_export.sidecar == folder / "model.mlpackage.json"
    assert sidecar["classes"] == ["ants", "bees"] and sidecar["executed"] is False
    assert sidecar["input"] == {"name": "image", "type": "image", "color_layout": "RGB", "width": 224, "height": 224}
    assert sidecar["sha256"] == coreml.package_sha256(files)
    assert sidecar["files"] == sorted(files)
    assert any("centerCrop" in step for step in sidecar["preprocess_steps"])
    assert sidecar["normalization"]["in_model"]["multiply_per_channel"] == pytest.approx(checks["inv_std"])
    assert "coremltools" in (folder / "requirements.txt").read_text()
    py_compile.compile(str(folder / "predict_coreml.py"), doraise=True)


@pytest.mark.slow
def test_int8_package_is_four_times_smaller(int8_export, float_export, frozen_run) -> None:
    record = int8_export.figures
    assert record["int8"] is True and record["executed"] is False
    assert_spec_checks(record["checks"])
    assert record["checks"]["int8_tensors"] >= 40  # every large convolution and the head
    assert record["weight_size_ratio"] > 3.5 and record["size_ratio"] > 3
    assert record["fp32_bytes"] == float_export.figures["bytes"]
    assert record["int8_bytes"] == record["bytes"] < record["fp32_bytes"] / 3
    assert record["quantization"]["activations"].startswith("float (weight-only")
    assert record["quantization"]["accuracy"].startswith("measured by graft's interpreter")
    assert record["fp32_val_acc"] - record["int8_val_acc"] <= MAX_DROP + 1e-9 and record["int8_top1_agreement"] > 0.95
    sidecar = json.loads(int8_export.sidecar.read_text())
    assert sidecar["quantized"]["weights"] == "int8, symmetric, per output channel"
    assert hashlib.sha256(b"").hexdigest() != sidecar["sha256"]


def test_missing_coremltools_is_one_error_line(frozen_run, monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "coremltools" else real(name, *a))
    for args in ([], ["--int8"]):
        capsys.readouterr()
        assert main(["export", str(frozen_run.run_dir), "--format", "coreml", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: --format coreml needs coremltools") and err.count("\n") == 1
        assert "pip install 'graft[coreml]'" in err
    assert not (frozen_run.run_dir / "coreml").exists() and not (frozen_run.run_dir / "coreml-int8").exists()


@pytest.mark.slow
def test_a_package_whose_spec_does_not_match_is_refused(frozen_run, monkeypatch, tmp_path: Path) -> None:
    """Class labels converted in another order than the run's: the check refuses, nothing is written."""
    monkeypatch.setattr(coreml, "class_labels", lambda clf: list(reversed(clf.classes)))
    out = tmp_path / "export"
    with pytest.raises(ExportError) as e:
        export(frozen_run.run_dir, format="coreml", out=out, log=lambda line: None)
    msg = str(e.value)
    assert "class labels are ['bees', 'ants'], not the run's ['ants', 'bees']" in msg
    assert "Nothing was written" in msg and "\n" not in msg
    assert not out.exists()


@pytest.mark.slow
def test_int8_weights_losing_more_than_a_point_are_refused(frozen_run, monkeypatch, tmp_path: Path) -> None:
    """The interpreter's val figures say the int8 weights lose two images of 153: refused, nothing written."""

    def figures(clf, run_dir, runners, **kw):
        assert set(runners) == {"fp32", "int8"}
        return {"val_images": 153, "graft_val_acc": 147 / 153, "fp32_val_acc": 147 / 153, "fp32_top1_agreement": 1.0,
                "int8_val_acc": 145 / 153}  # fmt: skip

    monkeypatch.setattr(bundle, "val_figures", figures)
    out = tmp_path / "export"
    with pytest.raises(ExportError) as e:
        export(frozen_run.run_dir, format="coreml", int8=True, out=out, log=lambda line: None)
    assert "loses 1.31 points" in str(e.value) and "--format coreml" in str(e.value)
    assert not out.exists()


def convert_small(net, tmp_path: Path) -> list:
    """The ops of ``net`` (a 32x32 RGB image in, 3 classes out) converted by coremltools as graft converts a run: an
    image-input classifier ML program in float32."""
    import torch

    from graft.deploy.coreml_spec import import_coremltools, read_package

    ct = import_coremltools()
    image = ct.ImageType(name="image", shape=(1, 3, 32, 32), scale=1 / 255, color_layout=ct.colorlayout.RGB)
    with bundle.quiet("coremltools"), torch.no_grad():
        ct.convert(
            torch.jit.trace(net, torch.rand(1, 3, 32, 32)),
            convert_to="mlprogram",
            inputs=[image],
            classifier_config=ct.ClassifierConfig(["a", "b", "c"]),
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32,
        ).save(str(tmp_path / "small.mlpackage"))
    return read_package(tmp_path / "small.mlpackage")[1]


def test_interpreter_runs_a_converted_program_like_torch(tmp_path: Path) -> None:
    """graft's reference interpreter of ML programs, on a small network converted by coremltools that uses every op
    it implements: the program's probabilities are torch's to float32 precision."""
    import torch

    from graft.deploy.coreml_mil import program_runner

    pytest.importorskip("coremltools")
    F = torch.nn.functional

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.c3 = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False)
            self.bn = torch.nn.BatchNorm2d(8)
            self.ln = torch.nn.LayerNorm(8)
            self.fc = torch.nn.Linear(24, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(torch.relu(self.c1(x)), 3, 2, 1)
            x = F.silu(self.c2(x)) + torch.sigmoid(x) * F.hardsigmoid(x)
            x = self.bn(F.avg_pool2d(self.c3(x), 2))  # after a pool: kept as batch_norm, not folded
            x = F.gelu(x) - torch.tanh(x) / 2
            t = self.ln(x.flatten(2).transpose(1, 2))
            a = torch.softmax(t @ t.transpose(1, 2), -1) @ t
            v = torch.cat([a[:, 0], F.hardswish(a).mean(1), F.relu6(t).unsqueeze(1).mean((1, 2))], 1)
            return torch.softmax(self.fc(v.squeeze(0).unsqueeze(0)), 1)

    torch.manual_seed(0)
    net = Small().eval()
    net.bn.running_mean.uniform_(-1, 1), net.bn.running_var.uniform_(0.5, 2), net.bn.weight.data.uniform_(0.5, 2)
    ops = convert_small(net, tmp_path)
    assert {
        "max_pool",
        "avg_pool",
        "batch_norm",
        "layer_norm",
        "matmul",
        "gelu",
        "silu",
        "sigmoid_hard",
        "concat",
        "slice_by_index",
        "expand_dims",
        "thresholded_relu",
    } <= {op.op_type for op in ops}
    pixels = torch.randint(0, 256, (2, 3, 32, 32)).float()
    with torch.no_grad():
        got = program_runner(ops, "image")(pixels)  # one image at a time: the program squeezes its batch axis
        want = torch.cat([net(p[None] / 255) for p in pixels])
    assert (got - want).abs().max() < 1e-6


@pytest.mark.slow
def test_a_program_the_interpreter_cannot_run_is_kept_with_the_reason(frozen_run, monkeypatch, tmp_path) -> None:
    """An op graft's interpreter does not implement: the spec checks still hold, the export is written, and it
    says its outputs were not checked."""
    from graft.deploy import coreml_mil

    def unsupported(ops, input_name):
        raise coreml_mil.Unsupported("some_new_op")

    monkeypatch.setattr(coreml_mil, "program_runner", unsupported)
    lines: list[str] = []
    result = export(frozen_run.run_dir, format="coreml", out=tmp_path / "export", log=lines.append)
    record = result.figures
    assert record["interpreted"] is False and "some_new_op" in record["not_interpreted_because"]
    assert "fp32_val_acc" not in record and record["checks"]["class_labels"] == ["ants", "bees"]
    assert "outputs were not checked" in json.loads(result.sidecar.read_text())["verification_note"]
    assert any("does not run (some_new_op)" in line for line in lines)


def test_a_layer_and_its_batchnorm_folded_by_the_converter_are_checked_and_run(tmp_path: Path) -> None:
    """A convolution with its BatchNorm left after it by graft (timm's BatchNormAct2d, as in efficientnet_lite0)
    and an explicit pad (timm's same padding): coremltools folds the pair into one conv. The weight check accounts
    for every tensor of the pair through the folded weight and bias, the interpreter runs the pad, and a
    BatchNorm value the program does not hold is refused."""
    import torch

    from graft.deploy.coreml_mil import program_runner
    from graft.deploy.coreml_spec import _check_weights

    pytest.importorskip("coremltools")

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, bias=False)
            self.bn = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.pad(x, (0, 1, 0, 1))
            return self.fc(torch.nn.functional.relu6(self.bn(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    small = Small().eval()
    small.bn.running_mean.uniform_(-1, 1), small.bn.running_var.uniform_(0.5, 2), small.bn.weight.data.uniform_(0.5, 2)
    net = coreml.coreml_network(small, IMAGENET_STD)
    ops = convert_small(net, tmp_path)
    types = [op.op_type for op in ops]
    assert "pad" in types and "batch_norm" not in types
    checks = _check_weights(ops, net, False, tmp_path)
    # conv.weight, the BatchNorm's weight, bias, mean and variance through the one folded conv; fc; 1/std
    assert checks["batchnorm_folded_layers"] == 1 and checks["weight_tensors"] == 8
    assert "1 conv/linear + BatchNorm pairs as one folded layer each" in checks["weights"]
    pixels = torch.randint(0, 256, (2, 3, 32, 32)).float()
    with torch.no_grad():
        got = program_runner(ops, "image")(pixels)
        want = net(pixels / 255)
    assert (got - want).abs().max() < 1e-6
    with torch.no_grad():
        small.bn.running_var[3] *= 1.01
    with pytest.raises(ExportError, match=r"conv.weight \[8, 3, 3, 3\] is not in the program \(nor folded with its"):
        _check_weights(ops, net, False, tmp_path)
