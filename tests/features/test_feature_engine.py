"""The feature store keeps the rows of each engine (ONNX Runtime, torch) apart: a store is read only by the engine
that computed its rows, and ``graft evaluate`` reads a frozen run's val rows only through that same engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from graft.core.preprocess import Preprocess
from graft.data import Sample
from graft.features import FeatureStore, body_engine, cached_features, file_identity, store_key

PRE = Preprocess(input_size=32, resize_size=36)
CPU = torch.device("cpu")
BODY_KEY = {"arch": "tiny-conv", "arch_kwargs": {}, "weights_sha256": "0" * 64, "device": "cpu"}


class ConvBody(nn.Module):
    """A small traceable body (conv, BatchNorm, ReLU, pooled): ONNX Runtime runs it on the CPU."""

    def __init__(self, odd_op: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.pool = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1)
        self.odd_op = odd_op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        if self.odd_op:  # traceable, but the ONNX exporter has no i0: the runner falls back to torch
            y = torch.special.i0(y)
        return self.pool(y).flatten(1)


@pytest.fixture
def samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Sample]:
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    rng = np.random.default_rng(0)  # noisy pixels: rows that differ from image to image
    out = []
    for i in range(5):
        path = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        out.append(Sample(path, i % 2))
    return out


def features(body: nn.Module, samples: list[Sample]) -> tuple[torch.Tensor, int]:
    return cached_features(body, samples, PRE, BODY_KEY, device=CPU, batch_size=2)


def rows_in_store(engine: str, samples: list[Sample]) -> int:
    store = FeatureStore(store_key(**BODY_KEY, preprocess=PRE, view=0, engine=engine))
    found, _ = store.lookup([file_identity(s.path) for s in samples])
    return len(found)


@pytest.mark.numerics
def test_rows_of_one_engine_are_never_read_for_the_other(samples: list[Sample], monkeypatch) -> None:
    assert body_engine(ConvBody().eval(), samples, PRE, CPU) == "onnxruntime"  # the premise: ONNX Runtime runs it
    ort_rows, computed = features(ConvBody(), samples)
    assert computed == len(samples)
    assert rows_in_store("onnxruntime", samples) == len(samples) and rows_in_store("torch", samples) == 0

    monkeypatch.setenv("GRAFT_ENGINE", "torch")
    torch_rows, computed = features(ConvBody(), samples)
    assert computed == len(samples)  # the ONNX Runtime rows were there, and not read
    assert rows_in_store("torch", samples) == len(samples)
    again, computed = features(ConvBody(), samples)
    assert computed == 0 and torch.equal(again, torch_rows)  # exactly: the stored rows read back

    monkeypatch.delenv("GRAFT_ENGINE")
    again, computed = features(ConvBody(), samples)
    assert computed == 0 and torch.equal(again, ort_rows)  # its own rows, not the torch ones stored since
    assert torch.allclose(ort_rows, torch_rows, atol=1e-4)  # one body, two engines' rounding


def test_a_body_that_falls_back_to_torch_stores_and_finds_torch_rows(samples: list[Sample]) -> None:
    """ONNX Runtime is the planned engine, but this body's runner falls back to torch: its rows are torch's, kept
    under "torch", and found there by a later run (a new module: its runner is built and settled again)."""
    assert body_engine(ConvBody(odd_op=True).eval(), samples, PRE, CPU) == "torch"  # the premise: no ONNX export
    first, computed = features(ConvBody(odd_op=True), samples)
    assert computed == len(samples)
    assert rows_in_store("torch", samples) == len(samples) and rows_in_store("onnxruntime", samples) == 0
    again, computed = features(ConvBody(odd_op=True), samples)
    assert computed == 0 and torch.equal(again, first)


@pytest.mark.slow
@pytest.mark.numerics
def test_evaluate_reads_stored_val_rows_only_through_their_engine(frozen_run: Any, tmp_path: Path, monkeypatch) -> None:
    """The frozen run's val rows were computed by ONNX Runtime: ``evaluate`` reads them back under that engine
    (so its accuracy is training's exactly), and with ``GRAFT_ENGINE=torch`` runs the backbone instead."""
    from graft.insight.evaluation import evaluate

    monkeypatch.delenv("GRAFT_ENGINE", raising=False)
    stored = evaluate(frozen_run.run_dir, out=tmp_path / "auto", plots=False, device="cpu")
    assert stored.features == "stored by training"
    assert stored.accuracy == frozen_run.best_val_acc  # the head on the very rows of training's val phase

    monkeypatch.setenv("GRAFT_ENGINE", "torch")
    computed = evaluate(frozen_run.run_dir, out=tmp_path / "torch", plots=False, device="cpu")
    assert computed.features == "computed"
    # another engine, in the same batches: rounding may move an image across the boundary, no more
    assert abs(computed.correct - stored.correct) <= 1
