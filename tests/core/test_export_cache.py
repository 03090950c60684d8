"""Tests of graft.core.export_cache: a checked ONNX export of a body, kept across processes per weights and shape."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from graft.core import export_cache
from graft.core.fast_inference import OnnxRuntimeModule, fast_inference

CPU = torch.device("cpu")


def small_body(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.35).eval()
    return nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_a_kept_export_is_loaded_without_tracing_and_runs_as_the_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    x = torch.randn(3, 3, 64, 64)
    first = fast_inference(small_body(), CPU, keep=True)
    with torch.inference_mode():
        want = first(x)
    assert first._session is not None
    assert [p.name.split("-")[1] for p in export_cache.folder().glob("*.onnx")] == ["3x64x64.onnx"]

    again = small_body()  # another module object with the same weights, as in a new process
    runner = fast_inference(again, CPU, keep=True)
    assert isinstance(runner, OnnxRuntimeModule)
    assert not isinstance(runner._source, torch.fx.GraphModule)  # nothing traced
    with torch.inference_mode():
        got = runner(x)
    assert runner._session is not None and not isinstance(runner._source, torch.fx.GraphModule)
    # the same export bytes run by the same runtime on the same input: identical by construction
    assert torch.equal(got, want)
    with torch.inference_mode():
        assert torch.allclose(got, again(x), atol=1e-4)  # and it is still the module's function


def test_other_weights_or_sizes_are_exported_and_checked_again(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    body = small_body()
    with torch.inference_mode():
        fast_inference(body, CPU, keep=True)(torch.randn(2, 3, 64, 64))
    other = small_body(seed=1)
    assert export_cache.module_key(other) != export_cache.module_key(body)
    runner = fast_inference(small_body(), CPU, keep=True).ready((3, 96, 96))
    assert isinstance(runner._source, torch.fx.GraphModule)  # no export at 96 px: traced before any image
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(runner(x), body(x), atol=1e-4)
    assert len(list(export_cache.folder().glob("*.onnx"))) == 2


def test_a_damaged_file_is_replaced_and_the_folder_keeps_the_most_recent(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    body = small_body()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        want = fast_inference(body, CPU, keep=True)(x)
    (kept,) = export_cache.folder().glob("*.onnx")
    kept.write_bytes(b"not an onnx model")
    runner = fast_inference(small_body(), CPU, keep=True)
    with torch.inference_mode():
        assert torch.allclose(runner(x), want, atol=1e-5)
    assert runner._session is not None and kept.stat().st_size > 1000  # exported again, checked, kept
    for i in range(export_cache.KEEP + 2):
        export_cache.write(f"{i:032d}", (3, 8, 8), b"x")
    names = {p.name for p in export_cache.folder().glob("*.onnx")}
    assert len(names) == export_cache.KEEP
    assert kept.name not in names  # the least recently used went first


def test_exports_of_training_weights_are_not_kept(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    with torch.inference_mode():
        fast_inference(small_body(), CPU)(torch.randn(2, 3, 64, 64))
    assert not export_cache.folder().exists()


def test_a_body_exported_under_a_bf16_autocast_is_the_fp32_function(tmp_path, monkeypatch) -> None:
    """A bf16 training run's feature pass calls the runner under autocast: the export must not trace the casts
    (ONNX Runtime refuses bf16 convolutions, and the body would silently fall back to torch in bf16)."""
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    body = small_body()
    x = torch.randn(2, 3, 64, 64)
    runner = fast_inference(body, CPU, keep=True)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = runner(x)
    assert runner._session is not None and got.dtype == torch.float32
    with torch.inference_mode():
        assert torch.allclose(got, body(x), atol=1e-4)
