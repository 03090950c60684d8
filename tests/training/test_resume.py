"""Tests of ``graft train --resume``: a run killed at any point (SIGKILL of a real process, or a crash injected at
every kind of moment in process) continues from its last finished epoch and ends exactly like a run that was
never interrupted: same metrics.json (timings aside), same results.csv (seconds aside), same model file."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import graft
import graft.training.loop
import graft.training.pipeline
from graft.core.errors import ConfigError, DataError, RunError
from graft.training.resume import RESUME_FILE, load_state, save_state

SMALL = {"arch": "mobilenet_v3_small", "pretrained": "none", "seed": 0, "device": "cpu", "batch_size": 4}
SMALL["checkpoint_budget"] = 1.0  # a checkpoint after every epoch, however fast: the tests count on it
SMALL["workers"] = 0  # images decoded in-process: then a resumed run is exact on any machine (see the README)
# head on features (2 epochs), then all layers (1 epoch): a crash can land in either stage or between them
STAGED = SMALL | {"mode": "finetune", "head_epochs": 2, "epochs": 1}
TINY = {"train/a": 4, "train/b": 4, "val/a": 2, "val/b": 2}


class Crash(BaseException):
    """A stand-in for a kill: nothing in graft catches it."""


@pytest.fixture(autouse=True)
def fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, a private feature cache, and no end-of-run report (evaluation figures are tested elsewhere)."""
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    monkeypatch.setenv("GRAFT_NO_PROGRESS", "1")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "feature-cache"))
    monkeypatch.setattr("graft.insight.report.write_run_report", lambda *a, **k: None)


def outcome(run_dir: Path) -> tuple[dict, list[list[str]], str]:
    """metrics.json without timings, results.csv without the seconds column, the model file's sha256."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics = {k: v for k, v in metrics.items() if k not in {"train_seconds", "fit_seconds"}}
    rows = [line.split(",") for line in (run_dir / "results.csv").read_text().splitlines()]
    rows = [r[:6] + r[7:] for r in rows]
    return metrics, rows, hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()


def crash_at(monkeypatch: pytest.MonkeyPatch, call: int) -> Callable[..., Any]:
    """Make the ``call``-th pass over the data (train and val passes alternate) die before it starts; return the
    real ``run_epoch``."""
    real, calls = graft.training.loop.run_epoch, [0]

    def run_epoch(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(graft.training.loop, "run_epoch", run_epoch)
    return real


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, uninterrupted run) for the STAGED options."""
    from PIL import Image

    data = tmp_path_factory.mktemp("staged-data")
    for i, (folder, n) in enumerate(TINY.items()):
        (data / folder).mkdir(parents=True)
        for j in range(n):
            Image.new("RGB", (32, 32), ((40 * i) % 256, (25 * j) % 256, 128)).save(data / folder / f"{j}.jpg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("GRAFT_NO_PROGRESS", "1")
        mp.setattr("graft.insight.report.write_run_report", lambda *a, **k: None)
        run = graft.train(data, out=tmp_path_factory.mktemp("runs"), name="whole", **STAGED)
    return data, run.run_dir


# passes: 1 train/2 val = epoch 1 (head), 3/4 = epoch 2 (head), 5/6 = epoch 3 (all layers); the last case, which
# resumes into the image stage after both head epochs, stands for them all in make test-portable
@pytest.mark.slow
@pytest.mark.parametrize(
    ("call", "finished"),
    [(1, 0), (4, 1), (5, 2), pytest.param(6, 2, marks=pytest.mark.numerics)],
    ids=["before-any-epoch", "mid-head-stage", "between-stages", "mid-last-epoch"],
)
def test_crash_anywhere_then_resume_ends_like_an_uninterrupted_run(staged, tmp_path, monkeypatch, call, finished):
    data, whole = staged
    out = tmp_path / "runs"
    real = crash_at(monkeypatch, call)
    with pytest.raises(Crash):
        graft.train(data, out=out, name="crashed", **STAGED)
    monkeypatch.setattr(graft.training.loop, "run_epoch", real)
    run_dir = out / "crashed"
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / RESUME_FILE).exists() == (finished > 0)

    logged: list[str] = []
    from graft.core.config import TrainConfig

    cfg = TrainConfig(data=data, out=out, name="crashed", resume=run_dir, **STAGED)
    graft.training.run_training(cfg, log=logged.append)
    assert any(f"resuming {run_dir} " in line for line in logged)
    epochs_run_now = [line for line in logged if line.startswith("epoch")]
    assert len(epochs_run_now) == 3 - finished  # only the epochs that had not finished ran again
    # exactly: both runs are this process, on the CPU, with the same batches, threads and kernels; the resumed
    # one restored every state the remaining epochs depend on
    assert outcome(run_dir) == outcome(whole)
    assert not (run_dir / RESUME_FILE).exists()  # a completed run leaves no state behind


@pytest.mark.subprocess
def test_sigkill_mid_epoch_then_resume_from_the_cli(tmp_image_folder, tmp_path) -> None:
    """A real ``graft train`` process is SIGKILLed in the middle of its second epoch and resumed with ``--resume``.

    The killed process is the real CLI with one change: its third pass over the data (epoch 2's train pass) first
    sleeps, so the kill lands mid-epoch however fast the machine is."""
    data = tmp_image_folder({"train/a": 12, "train/b": 12, "val/a": 4, "val/b": 4})
    out = tmp_path / "runs"
    options = ["--arch", "mobilenet_v3_small", "--pretrained", "none", "--mode", "freeze", "--no-cache-features"]
    options += ["--epochs", "3", "--batch-size", "4", "--device", "cpu", "--seed", "0", "--out", str(out)]
    options += ["--checkpoint-budget", "1", "--workers", "0"]  # a checkpoint after every epoch; exact resume
    env = os.environ | {"GRAFT_OFFLINE": "1", "GRAFT_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "graft", "train", str(data), *options]
    slow_second_epoch = (
        "import sys, time, graft.training.loop as t\n"
        "real, calls = t.run_epoch, [0]\n"
        "def run_epoch(*a, **k):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 3:\n"
        "        time.sleep(60)\n"
        "    return real(*a, **k)\n"
        "t.run_epoch = run_epoch\n"
        "from graft.commands.cli import entry\n"
        "sys.argv = ['graft', *sys.argv[1:]]\n"
        "entry()\n"
    )
    killed = [sys.executable, "-c", slow_second_epoch, "train", str(data), *options, "--name", "killed"]
    proc = subprocess.Popen(killed, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    lines = []
    for raw in proc.stdout:
        lines.append(raw.decode())
        if raw.startswith(b"epoch   1"):
            # epoch 1 is committed once its resume state is on disk (written just after this line)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (out / "killed" / RESUME_FILE).exists():
                time.sleep(0.01)
            time.sleep(0.2)  # into epoch 2's sleeping train pass
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    run_dir = out / "killed"
    assert not (run_dir / "metrics.json").exists()
    state = load_state(run_dir / RESUME_FILE)
    assert len(state["history"]) == 1  # killed during epoch 2: epoch 1 is the last finished one

    resumed = subprocess.run([*cmd, "--name", "killed", "--resume", str(run_dir)], capture_output=True, env=env)
    assert resumed.returncode == 0, resumed.stdout.decode() + resumed.stderr.decode()
    assert f"resuming {run_dir} after epoch 1" in resumed.stdout.decode()

    whole = subprocess.run([*cmd, "--name", "whole"], capture_output=True, env=env)
    assert whole.returncode == 0, whole.stderr.decode()
    # exactly: the three processes ran on this machine's CPU with the same environment (threads, kernels) and
    # images decoded in-process, which is when the README promises a resumed run ends bit for bit as a whole one
    assert outcome(run_dir) == outcome(out / "whole")


@pytest.mark.slow
def test_resume_needs_the_same_options_and_data(staged, tmp_path, monkeypatch) -> None:
    data, _ = staged
    out = tmp_path / "runs"
    crash_at(monkeypatch, 4)
    with pytest.raises(Crash):
        graft.train(data, out=out, name="r", **STAGED)
    run_dir = out / "r"
    with pytest.raises(ConfigError, match=r"--epochs 1 \(now 5\)"):
        graft.train(data, out=out, resume=run_dir, **(STAGED | {"epochs": 5}))
    with pytest.raises(ConfigError, match="not a run directory"):
        graft.train(data, out=out, resume=tmp_path, **STAGED)
    (data / "train/a/0.jpg").rename(tmp_path / "moved.jpg")  # the split is no longer the one trained on
    try:
        with pytest.raises(DataError, match="dataset changed"):
            graft.train(data, out=out, resume=run_dir, **STAGED)
    finally:
        (tmp_path / "moved.jpg").rename(data / "train/a/0.jpg")


@pytest.mark.slow
def test_a_finished_run_cannot_be_resumed(staged) -> None:
    data, whole = staged
    with pytest.raises(ConfigError, match="finished"):
        graft.train(data, out=whole.parent, resume=whole, **STAGED)


@pytest.mark.slow
def test_a_planted_pickle_as_resume_state_is_refused_unrun(staged, tmp_path, monkeypatch) -> None:
    """A pickle (whose unpickling would create a file) put where the resume state is expected: refused, and the
    payload never runs."""
    import pickle

    data, _ = staged
    out = tmp_path / "runs"
    crash_at(monkeypatch, 4)
    with pytest.raises(Crash):
        graft.train(data, out=out, name="r", **STAGED)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    (out / "r" / RESUME_FILE).write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(RunError, match="not a graft training state file"):
        graft.train(data, out=out, resume=out / "r", **STAGED)
    assert not marker.exists()


@pytest.mark.slow
def test_head_stage_state_holds_the_head_only_and_checks_the_body(staged, tmp_path, monkeypatch) -> None:
    """In a head stage the body is fixed: the per-epoch state stores the head (kilobytes, not the network) with the
    body's sha256, and a resumed run whose rebuilt body differs is refused rather than silently continued."""
    from graft.training import resume

    data, _ = staged
    out = tmp_path / "runs"
    crash_at(monkeypatch, 4)  # killed during epoch 2 of the head stage
    with pytest.raises(Crash):
        graft.train(data, out=out, name="r", **STAGED)
    path = out / "r" / RESUME_FILE
    state = load_state(path)
    assert state["model"] and all(k.startswith("head.") for k in state["model"])
    assert all(not k.startswith("body.") for k in state["fit"]["best_state"])
    assert len(state["fixed"]["sha256"]) == 64
    assert path.stat().st_size < 100_000  # mobilenet_v3_small's body alone is ~4 MB

    state["fixed"]["sha256"] = "0" * 64  # as if --pretrained now resolved to another weights file
    save_state(path, state)
    with pytest.raises(RunError, match="frozen backbone's weights differ"):
        graft.train(data, out=out, name="r", resume=out / "r", **STAGED)
    assert state["version"] == resume.VERSION
