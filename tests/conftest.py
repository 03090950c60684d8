"""Shared fixtures: the real hymenoptera dataset and a factory of small synthetic image folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The real ants/bees dataset: ``$GRAFT_DATA``, else ``../shared/data/hymenoptera_data`` from the repo."""
    env = os.environ.get("GRAFT_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/hymenoptera_data"
    assert (path / "train").is_dir() and (path / "val").is_dir(), f"hymenoptera dataset not found at {path}"
    return path


@pytest.fixture
def tmp_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make({"train/cat": 3, "val/cat": 1, ...}, size=(32, 32))`` writes that many small JPEGs
    (each a distinct colour) under a fresh folder and returns the folder."""
    made = 0

    def make(layout: dict[str, int], size: tuple[int, int] = (32, 32), name: str = "data") -> Path:
        nonlocal made
        made += 1
        root = tmp_path / f"{name}{made}"
        for i, (folder, n) in enumerate(layout.items()):
            (root / folder).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                colour = ((40 * i) % 256, (25 * j) % 256, 128)
                Image.new("RGB", size, colour).save(root / folder / f"img{j:03d}.jpg", quality=90)
        return root

    return make


@pytest.fixture(scope="session")
def frozen_run(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory):
    """One frozen mobilenet_v2 run on the real data, shared by every test that needs a trained run.

    Offline, and with a fresh feature cache, so that the run computes its features itself."""
    import graft

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))
        return graft.train(
            hymenoptera,
            arch="mobilenet_v2",
            mode="freeze",
            epochs=5,
            out=tmp_path_factory.mktemp("runs"),
            name="frozen",
            seed=0,
        )
