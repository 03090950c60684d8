"""Int8 calibration: activation ranges from a histogram's percentile, the activation bits (auto, or forced with
``--activation-bits``) recorded with the CPU that mattered, and the accuracy promise (within one point of fp32) for
a frozen mobilenet_v2 hymenoptera run on both activation paths: 7-bit through the compiled program, and 8-bit
through the compiled program on a CPU with VNNI, or through its eager reference graph on a CPU without (where
8-bit activations overflow the int8 kernels' 16-bit sums)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import graft
from graft import int8 as Q
from graft.core.config.model import CALIB
from graft.core.errors import ConfigError
from graft.core.rundir import run_split
from graft.inference import QuantizationError
from graft.inference.classifier import Classifier

VNNI = bool(Q.cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = Q.cpu_info()["machine"].lower() in ("x86_64", "amd64")


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("GRAFT_OFFLINE", "1")
        yield mp


@pytest.fixture(scope="module")
def run(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: Any) -> Path:
    """A frozen mobilenet_v2 run with graft's defaults (the run the one-point promise is about)."""
    result = graft.train(
        hymenoptera,
        arch="mobilenet_v2",
        mode="freeze",
        device="cpu",
        out=tmp_path_factory.mktemp("runs"),
        name="mnv2",
        seed=0,
    )
    return result.run_dir


@pytest.fixture(scope="module")
def seven_bit(run: Path) -> dict[str, Any]:
    """``graft quantize RUN --activation-bits 7``: its quantization.json."""
    Q.quantize(run, name="mnv2-a7", activation_bits="7", log=lambda _: None)
    return json.loads((run.parent / "mnv2-a7" / Q.QUANT_FILE).read_text())


def test_activation_bits_choose_the_range() -> None:
    avx2, vnni = {"avx2"}, {"avx2", "avx512_vnni"}
    assert Q.choose_backend("x86_64", avx2).activation_bits == 7
    assert Q.choose_backend("x86_64", vnni).activation_bits == 8
    assert not Q.choose_backend("x86_64", vnni).forced
    forced8 = Q.choose_backend("x86_64", avx2, "8")
    assert (forced8.activation_bits, forced8.forced, forced8.reduce_range) == (8, True, False)
    assert "no VNNI" in forced8.reason
    forced7 = Q.choose_backend("x86_64", vnni, "7")
    assert (forced7.activation_bits, forced7.forced, forced7.reduce_range) == (7, True, True)
    assert Q.choose_backend("aarch64", set(), "8").name == "arm_inductor"
    with pytest.raises(ConfigError, match="x86 setting"):
        Q.choose_backend("aarch64", set(), "7")
    with pytest.raises(ConfigError, match="--activation-bits"):
        Q.choose_backend("x86_64", avx2, "6")


def test_percentile_ranges_ignore_rare_outliers() -> None:
    """The range is the 99.99th percentile of what was observed, not its min/max; a range-wide tensor keeps it."""
    quantizer = Q.choose_backend("x86_64", {"avx2", "avx512_vnni"}).quantizer()
    observer = quantizer.global_config.input_activation.observer_or_fake_quant_ctr()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1_000_000, generator=g) * 4.0  # uniform on [0, 4)
    x[:10] = 1000.0  # ten outliers in a million: far beyond the 99.99th percentile
    observer(x)
    scale, zero_point = observer.calculate_qparams()
    assert int(zero_point) == 0  # non-negative activations: the range starts at 0
    # 99.99% of values lie below ~4.0; one histogram bin is 1000/2048 wide
    assert 3.9 / 255 < float(scale) < (4.0 + 2 * 1000 / 2048) / 255
    signed = Q.choose_backend("x86_64", {"avx2", "avx512_vnni"}).quantizer()
    obs = signed.global_config.input_activation.observer_or_fake_quant_ctr()
    obs(torch.rand(1_000_000, generator=g) * 8.0 - 4.0)  # uniform on [-4, 4): no tail to cut
    scale, zero_point = obs.calculate_qparams()
    assert abs(float(scale) * 255 - 8.0) < 0.1 and abs(int(zero_point) - 128) <= 1


@pytest.mark.slow
def test_forced_seven_bits_are_recorded_with_the_cpu(seven_bit: dict[str, Any]) -> None:
    info = seven_bit["quantization"]
    assert info["activation_bits"] == 7
    assert info["backend"]["activation_bits"] == 7 and info["backend"]["forced"] is True
    assert info["activation_ranges"].startswith("99.99% percentile")
    cpu = info["cpu"]
    assert cpu == Q.cpu_info()  # the machine that quantized is this one
    assert set(cpu["features"]) == set(Q.CPU_FEATURES)
    assert cpu["features"]["avx2"] == ("avx2" in Q.cpu_flags())


@pytest.mark.slow
def test_seven_bits_stay_within_one_point(seven_bit: dict[str, Any]) -> None:
    """The compiled 7-bit program (saved, reloaded, as graft predict runs it) against the float run."""
    assert seven_bit["int8_val_acc"] >= seven_bit["fp32_val_acc"] - 0.01


class _Eager(Classifier):
    """The eager reference graph as a classifier (no compile), for :func:`graft.int8.ptq.accuracy`."""

    def __init__(self, model: torch.nn.Module, src: Any) -> None:
        super().__init__(src.meta, torch.device("cpu"), src.run_dir)
        self.model = model

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(batch).float()


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="8-bit vs 7-bit activations is an x86 setting")
def test_eight_bits_stay_within_one_point(run: Path) -> None:
    """8-bit activations: on a CPU with VNNI the compiled program is measured; without VNNI its kernels overflow,
    so the numerics a VNNI CPU would compute are checked on the eager reference graph (the same quantized graph,
    reference kernels), with the run's val split."""
    from graft.inference.loading import load

    if VNNI:
        Q.quantize(run, name="mnv2-a8", activation_bits="8", log=lambda _: None)
        figures = json.loads((run.parent / "mnv2-a8" / Q.QUANT_FILE).read_text())
        assert figures["quantization"]["activation_bits"] == 8
        assert figures["int8_val_acc"] >= figures["fp32_val_acc"] - 0.01
        return
    src = load(run, device="cpu")
    train = run_split(run, "train", src.classes, skip_unknown=True).paths
    val_split = run_split(run, "val", src.classes)
    val, labels = val_split.paths, val_split.labels
    calibration = Q.calibration_batches(src.preprocess, train, CALIB.default)
    backend = Q.choose_backend(activation_bits="8")
    converted = Q.quantize_body(
        src.model.body, calibration, src.preprocess.input_size, backend=backend, log=lambda _: None
    )
    reference = _Eager(torch.nn.Sequential(converted, src.model.head.eval()), src)
    fp32 = Q.accuracy(src, val, labels, batch_size=32)
    assert Q.accuracy(reference, val, labels, batch_size=32) >= fp32 - 0.01


@pytest.mark.slow
@pytest.mark.skipif(not X86 or VNNI, reason="needs an x86 CPU without VNNI")
def test_forced_eight_bits_never_fall_back_silently(run: Path) -> None:
    """Without VNNI, forced 8-bit activations either fail with an error that says why and leave no folder, or
    (overflow too rare to fail the compiled check) keep 8 bits, recorded as forced. Never 7 bits."""
    out = run.parent / "mnv2-forced8"
    try:
        Q.quantize(run, name=out.name, activation_bits="8", log=lambda _: None)
    except QuantizationError as e:
        assert "--activation-bits 8" in str(e) and "overflow" in str(e) and "--activation-bits auto" in str(e)
        assert not out.exists()
        return
    info = json.loads((out / Q.QUANT_FILE).read_text())["quantization"]
    assert info["activation_bits"] == 8 and info["backend"]["forced"] is True
