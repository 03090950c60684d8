"""The approximate similarity survey (graft.features.ann) against the exact one, on vectors of real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageOps

from graft.data.images import load_rgb
from graft.data.quality import perceptual_hashes
from graft.features import ann
from graft.features import similarity as sim

pytest.importorskip("faiss")


def _rows(folders: list[Path]) -> tuple[np.ndarray, list[str], list[str], int]:
    """(vectors, hashes, mirrored hashes, train rows) of every image of ``folders``' train then val splits, and of
    a mirrored crop of each (a planted copy, in the other split): 24 x 24 colour thumbnails, 1,728 wide."""
    rows: dict[str, list] = {"train": [], "val": []}
    for split, other in (("train", "val"), ("val", "train")):
        for folder in folders:
            for path in sorted((folder / split).rglob("*.jp*g")):
                img = load_rgb(path, draft=128)
                w, h = img.size
                copy = ImageOps.mirror(img.crop((w // 10, h // 10, w, h)))
                rows[split].append(img)
                rows[other].append(copy)
    images = rows["train"] + rows["val"]
    vectors = np.stack([np.asarray(i.resize((24, 24)), np.float32).ravel() for i in images])
    hashes = [perceptual_hashes(i.convert("L")) for i in images]
    return vectors, [f"{a:016x}" for a, _ in hashes], [f"{b:016x}" for _, b in hashes], len(rows["train"])


def _pairs(p: sim.Pairs) -> set[tuple[int, int]]:
    return set(zip(p.a.tolist(), p.b.tolist(), strict=True))


@pytest.mark.slow
def test_approximate_survey_finds_what_the_exact_one_does(
    hymenoptera: Path, flowers5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forced past its threshold, the approximate survey finds >= 99% of the pairs the doctor would verify (near
    pairs and leaks; 99.8% here) and nearly nothing else, the same hash matches, and >= 98% of the exact 10
    nearest neighbours. Lists of 100 rows: 8 probed of 22, a third of the rows scanned (harder than 16k rows'
    half; 100k rows scan a twelfth)."""
    monkeypatch.setattr(ann, "LIST_ROWS", 100)
    feats, direct, mirrored, n_train = _rows([hymenoptera, flowers5])
    assert len(feats) > 2000
    hashes = sim.Hashes.of(direct, mirrored)
    exact = sim.survey(feats, 10, hashes=hashes, n_train=n_train, exact_up_to=len(feats))
    approx = sim.survey(feats, 10, hashes=hashes, n_train=n_train, exact_up_to=0)
    hit = (exact.found.index[:, :, None] == approx.found.index[:, None, :]).any(2)
    assert hit.mean() >= 0.98  # 0.988 here; 0.998 with 200-row lists, 0.9985 on 16k real features (16 lists)
    assert np.array_equal(exact.found.matches.query, approx.found.matches.query)
    assert np.array_equal(exact.found.matches.base, approx.found.matches.base)
    assert np.array_equal(exact.found.matches.bits, approx.found.matches.bits)
    assert np.abs(exact.raw_sims - approx.raw_sims).mean() < 1e-3
    near_e, near_a = _pairs(sim.near_pairs(exact.found)), _pairs(sim.near_pairs(approx.found))
    leak_e, leak_a = _pairs(exact.leaks), _pairs(approx.leaks)
    assert len(leak_e) >= n_train // 4  # the planted copies across the splits are proposed
    assert len(near_e & near_a) >= 0.99 * len(near_e) and len(leak_e & leak_a) >= 0.99 * len(leak_e)
    assert len(near_a - near_e) + len(leak_a - leak_e) <= 0.01 * (len(near_e) + len(leak_e))


def test_search_and_leak_candidates_past_the_threshold() -> None:
    """``search`` (with hashes) and ``leak_candidates`` give the exact answers' kind of object, the same pairs on
    well separated rows, and a row is never its own neighbour."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    which = rng.integers(0, 40, 800)
    which[1] = which[0]  # rows 0 and 1 alike, and their hashes equal
    x = torch.tensor(centres[which] + 0.05 * rng.normal(size=(800, 32)), dtype=torch.float32)
    x = sim.normalise(x)
    codes = [f"{int(v):016x}" for v in rng.integers(1 << 62, size=800)]
    codes[1] = codes[0]
    hashes = sim.Hashes.of(codes, codes)
    exact = sim.search(x, x, 5, same=True, hashes=(hashes, hashes), exact_up_to=800)
    approx = sim.search(x, x, 5, same=True, hashes=(hashes, hashes), exact_up_to=10)
    assert approx.sims.dtype == exact.sims.dtype and approx.index.dtype == exact.index.dtype
    assert not (approx.index == np.arange(800)[:, None]).any()
    assert (exact.index[:, 0] == approx.index[:, 0]).mean() >= 0.99
    assert np.array_equal(exact.matches.query, approx.matches.query) and len(exact.matches.query) >= 2
    train, val = x[:600], x[600:]
    a, b = sim.leak_candidates(train, val), sim.leak_candidates(train, val, exact_up_to=10)
    assert isinstance(b, sim.Pairs) and _pairs(a) == _pairs(b)


def test_without_faiss_it_warns_once_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_faiss(name: str, *args: object, **kwargs: object) -> object:
        if name == "faiss":
            raise ImportError("no faiss")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    monkeypatch.setattr(ann, "_warned", [False])
    x = sim.normalise(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)))
    with pytest.warns(UserWarning, match=r"pip install 'graft\[scale\]'"):
        found = sim.search(x, x, 3, same=True, exact_up_to=10)
    assert ann.wanted(50, 50, 10) is False  # warned once: the flag is set
    exact = sim.search(x, x, 3, same=True)
    assert np.array_equal(found.index, exact.index)
