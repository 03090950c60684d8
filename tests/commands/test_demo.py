"""``make demo`` (``python -m graft.commands.demo``) from a checkout with ``../shared`` beside it: it finds the
bundled ants/bees data there without ``GRAFT_DATA``, trains, and predicts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from graft.commands.demo import SHARED_HYMENOPTERA, hymenoptera

REPO = Path(__file__).resolve().parents[2]


def test_the_bundled_data_is_found_beside_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFT_DATA", raising=False)
    assert REPO.parent / "shared" / "data" / "hymenoptera_data" == SHARED_HYMENOPTERA
    assert hymenoptera() == SHARED_HYMENOPTERA and (SHARED_HYMENOPTERA / "train" / "ants").is_dir()


@pytest.mark.subprocess
@pytest.mark.slow
def test_make_demo_trains_and_predicts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRAFT_DATA"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the demo picks its device itself: pinned to the CPU here
    done = subprocess.run(
        [sys.executable, "-m", "graft.commands.demo"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"data: {SHARED_HYMENOPTERA}" in out
    accuracy = float(out.split("best val accuracy: ")[1].split()[0])
    assert accuracy >= 0.9  # mobilenet_v2's frozen features separate ants from bees (0.96 in every recorded run)
    assert "val/bees/72100438_73de9f17af.jpg: bees" in out  # the demo's last image, a clear bee
    assert (tmp_path / "runs" / "demo" / "model.safetensors").is_file()
