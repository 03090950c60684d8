"""Tests of graft.core.fast_inference: ONNX Runtime on the CPU where it is faithful, torch otherwise."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from graft.core.fast_inference import OnnxRuntimeModule, fast_inference

CPU = torch.device("cpu")


def mobilenet_body() -> nn.Module:
    m = torchvision.models.mobilenet_v2(num_classes=10).eval()
    return nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Branchy(nn.Module):
    """Python-level control flow on the data: torch.fx refuses it, a tracing exporter would bake it in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x.flatten(1) + 1
        return x.flatten(1) - 1


@pytest.mark.numerics
def test_onnx_runtime_runs_a_traceable_body_and_matches_torch(monkeypatch) -> None:
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    body = mobilenet_body()
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        want = body(x)
    runner = fast_inference(body, CPU)
    assert isinstance(runner, OnnxRuntimeModule)
    with torch.inference_mode():  # as graft calls it
        got = runner(x)
    assert runner._session is not None  # exported, verified and used, not fallen back
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)  # other kernels: to rounding
    with torch.inference_mode():
        assert runner(x[:1]).shape == (1, 1280)  # the batch axis is dynamic
    assert fast_inference(body, CPU) is runner  # same weights: the export is reused


def test_changed_weights_get_a_new_runner(monkeypatch) -> None:
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    body = mobilenet_body()
    first = fast_inference(body, CPU)
    with torch.no_grad():
        body[0][0][0].weight.mul_(2)  # an in-place update, as an optimizer step does
    assert fast_inference(body, CPU) is not first


@torch.inference_mode()
def test_untraceable_modules_and_feature_batches_stay_on_torch(monkeypatch) -> None:
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    runner = fast_inference(Branchy(), CPU)
    assert not isinstance(runner, OnnxRuntimeModule)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(runner(-x.abs()), -x.abs().flatten(1) - 1)  # both branches still taken
    assert torch.equal(runner(x.abs() + 1), (x.abs() + 1).flatten(1) + 1)
    head = fast_inference(nn.Linear(4, 2), CPU)
    assert isinstance(head, OnnxRuntimeModule)
    head(torch.randn(5, 4))
    assert head._session is None  # not an image batch: no export


def test_graft_engine_torch_turns_onnx_runtime_off(monkeypatch) -> None:
    monkeypatch.setenv("GRAFT_ENGINE", "torch")
    assert not isinstance(fast_inference(mobilenet_body(), CPU), OnnxRuntimeModule)
