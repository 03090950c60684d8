"""The feature store: computed once, reused, recomputed when a file changes or a row is damaged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from graft.core.preprocess import Preprocess
from graft.data import Sample
from graft.features import FeatureStore, cached_features, extract_features, store_key

PRE = Preprocess(input_size=32, resize_size=36)


class CountingBody(nn.Module):
    """A tiny deterministic 'backbone' that counts the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:  # data-dependent: torch.fx cannot trace it, so graft runs this very module
            self.seen += x.shape[0]
        return torch.cat([self.pool(x).flatten(1), self.pool(x * x).flatten(1)], dim=1)


@pytest.fixture
def samples(tmp_image_folder) -> list[Sample]:
    root = tmp_image_folder({"a": 3, "b": 2})
    files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    return [Sample(p, i % 2) for i, p in enumerate(files)]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run(body: nn.Module, samples: list[Sample], key: dict | None = None) -> tuple[torch.Tensor, int]:
    return cached_features(body, samples, PRE, key or {"arch": "counting"}, device=torch.device("cpu"), batch_size=2)


@pytest.mark.numerics
def test_second_call_reads_the_store_and_matches(samples) -> None:
    body = CountingBody()
    first, computed = run(body, samples)
    assert computed == len(samples) and body.seen == len(samples)
    second, computed = run(body, samples)
    assert computed == 0 and body.seen == len(samples)  # the body did not run again
    assert torch.equal(first, second)  # exactly: the stored float32 rows read back
    direct = extract_features(CountingBody(), samples, PRE, device=torch.device("cpu"))
    assert torch.allclose(first, direct)  # computed again in other batches (32 against 2): to rounding


def test_another_key_is_another_store(samples) -> None:
    run(CountingBody(), samples)
    _, computed = run(CountingBody(), samples, key={"arch": "other"})
    assert computed == len(samples)


def test_changed_file_is_recomputed(samples) -> None:
    run(CountingBody(), samples)
    changed = samples[0].path
    from PIL import Image

    Image.new("RGB", (40, 40), (250, 10, 10)).save(changed, format="JPEG")
    os.utime(changed, ns=(1, 1))  # new size and mtime: a new identity
    body = CountingBody()
    feats, computed = run(body, samples)
    assert computed == 1 and body.seen == 1
    assert feats[0, 0] > feats[0, 1]  # red image: R channel mean > G channel mean (normalized)


def test_damaged_row_is_detected_and_rebuilt(samples, cache_dir) -> None:
    good, _ = run(CountingBody(), samples)
    (matrix,) = cache_dir.glob("features/*/features.f32")
    data = bytearray(matrix.read_bytes())
    data[0:4] = np.float32(1e30).tobytes()  # corrupt row 0
    matrix.write_bytes(bytes(data))
    body = CountingBody()
    feats, computed = run(body, samples)
    assert computed == 1 and body.seen == 1
    assert torch.equal(feats, good)


def test_truncated_matrix_and_garbage_index_are_survived(samples, cache_dir) -> None:
    good, _ = run(CountingBody(), samples)
    (store_dir,) = cache_dir.glob("features/*")
    matrix = store_dir / "features.f32"
    matrix.write_bytes(matrix.read_bytes()[:-10])  # a crash mid-append leaves a partial last row
    feats, computed = run(CountingBody(), samples)
    assert computed == 1 and torch.equal(feats, good)
    (store_dir / "index.json").write_text("{not json")
    feats, computed = run(CountingBody(), samples)
    assert computed == len(samples) and torch.equal(feats, good)


def test_store_reads_through_memmap(samples) -> None:
    run(CountingBody(), samples)
    store = FeatureStore(store_key(arch="counting", preprocess=PRE, view=0, engine="torch"))  # fx cannot trace it
    found, missing = store.lookup([str(s.path.resolve()) + "|x|y" for s in samples])
    assert not found and missing == list(range(len(samples)))
    index = store._read_index()
    assert index["dim"] == 6 and isinstance(store._matrix(6), np.memmap)


@pytest.mark.numerics
def test_augmented_views_are_reproducible_distinct_and_stored_apart(tmp_path) -> None:
    """--feature-views K: view k > 0 is a seeded training augmentation, so it differs from the eval view (0) and
    from the other views, is the same every time it is computed, and has its own store entry."""
    rng = np.random.default_rng(0)  # noisy pixels: a crop or a flip of a uniform image pools to the same features
    samples = []
    for i in range(3):
        path = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, 0))
    body = CountingBody()
    views = {k: run_view(body, samples, k) for k in (0, 1, 2)}
    assert all(computed == len(samples) for _, computed in views.values())  # each view is its own entry
    assert not torch.allclose(views[0][0], views[1][0]) and not torch.allclose(views[1][0], views[2][0])
    again, computed = run_view(body, samples, 1)
    assert computed == 0 and torch.equal(again, views[1][0])  # exactly: the stored rows read back
    fresh = extract_features(CountingBody(), samples, PRE, device=torch.device("cpu"), view=1)
    assert torch.allclose(fresh, views[1][0])  # recomputed from scratch (other batches): the same augmentation draws


def run_view(body: nn.Module, samples: list[Sample], view: int) -> tuple[torch.Tensor, int]:
    return cached_features(body, samples, PRE, {"arch": "counting"}, device=torch.device("cpu"), view=view)


class ConvBody(nn.Module):
    """A convolution (which CPU autocast runs in bf16) that torch.fx cannot trace, so the torch engine runs it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:
            x = self.conv(x)
        return x.mean((2, 3))


def test_rows_of_a_bf16_torch_pass_are_stored_apart(samples) -> None:
    """A torch pass in bf16 computes other rows than inference's fp32 one: its own store, never mixed."""
    key = {"arch": "conv"}
    torch_keys = [store_key(**key, preprocess=PRE, view=0, engine="torch", precision=p) for p in ("auto", "bf16")]
    assert torch_keys[0] != torch_keys[1] and torch_keys[1]["precision"] == "bf16" and "precision" not in torch_keys[0]
    # ONNX Runtime ignores the precision: its rows and key stay the same
    assert store_key(**key, preprocess=PRE, view=0, engine="onnxruntime", precision="bf16") == store_key(
        **key, preprocess=PRE, view=0, engine="onnxruntime"
    )
    body, cpu = ConvBody(), torch.device("cpu")
    fp32, computed = cached_features(body, samples, PRE, key, device=cpu, batch_size=2)
    assert computed == len(samples)
    bf16, computed = cached_features(body, samples, PRE, key, device=cpu, batch_size=2, precision="bf16")
    assert computed == len(samples)  # not read from the fp32 store
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.05, rtol=0.05)
    again, computed = cached_features(body, samples, PRE, key, device=cpu, batch_size=2, precision="bf16")
    assert computed == 0 and torch.equal(again, bf16)
