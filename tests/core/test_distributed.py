"""Tests of graft.core.distributed: training and prediction under torchrun, as real gloo processes on the CPU.

Each launch is 2 processes with one thread each (``OMP_NUM_THREADS=1``), so the file runs in ~2-3 minutes on a
2-core machine. The single-process reference is the shared ``frozen_run`` (frozen mobilenet_v2, 5 epochs, seed 0).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from numerics import LOGIT_ATOL, LOGIT_RTOL, assert_accuracy_within_one_image, assert_prediction_csvs_match

import graft
from graft.core import distributed as dist
from graft.core.errors import ConfigError
from graft.inference.csvout import merge_parts, predict_to_csv
from graft.training import RunResult

RUN_FILES_IGNORED = {"resume.safetensors"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(cache: Path) -> dict[str, str]:
    """A launch's environment: offline, a feature cache of its own (so the features are computed, sharded), one
    thread per process, no progress bars, and no torchrun variables inherited from an outer launch."""
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"}}
    env.update(GRAFT_OFFLINE="1", GRAFT_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", GRAFT_NO_PROGRESS="1")
    return env


def torchrun(*args: object) -> list[object]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run(command: list[object], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    command = [str(c) for c in command]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(command)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def run_files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir()} - RUN_FILES_IGNORED


def results(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv") as f:
        return list(csv.DictReader(f))


def val_accuracies(run_dir: Path) -> list[float]:
    return [float(row["val_acc"]) for row in results(run_dir)]


def stored_rows(cache: Path) -> int:
    """Rows in every feature store under ``cache`` (what rank 0 wrote)."""
    return sum(len(json.loads(p.read_text())["rows"]) for p in cache.glob("features/*/index.json"))


def assert_matches_single(run_dir: Path, single: RunResult) -> None:
    """The same files as a single process, and every epoch's val accuracy within one image of it: the features
    were computed in shares, one thread per process, so they differ from the single process's in the last digits,
    and a near-tie image may fall the other way."""
    assert run_files(run_dir) == run_files(single.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    n_val = single.metrics["n_val"]
    assert metrics["n_train"] == single.metrics["n_train"] and metrics["n_val"] == n_val
    assert_accuracy_within_one_image(metrics["best_val_acc"], single.best_val_acc, n_val)
    many, one = val_accuracies(run_dir), val_accuracies(single.run_dir)
    assert len(many) == len(one)
    for got, want in zip(many, one, strict=True):
        assert_accuracy_within_one_image(got, want, n_val)
    graft.load(run_dir, device="cpu")  # the saved model loads (weights and model.json agree)


# ----------------------------------------------------------------------------------------------------------------
# real launches


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.numerics
def test_two_gloo_processes_match_one(frozen_run, hymenoptera: Path, tmp_path: Path) -> None:
    """torchrun --nproc_per_node=2: features extracted in shares and gathered, the head trained alike on every
    rank, rank 0 alone writing; then graft predict --out with the files shared out gives the same CSV."""
    cache = tmp_path / "cache"
    env = env_for(cache)
    command = torchrun("--nproc_per_node=2", "--master-port", free_port(), "-m", "graft", "train", hymenoptera)
    proc = run([*command, "--epochs", 5, "--seed", 0, "--device", "cpu", "--out", tmp_path, "--name", "ddp"], env)
    run_dir = tmp_path / "ddp"
    assert_matches_single(run_dir, frozen_run)
    assert proc.stdout.count("best val acc") == 1  # only rank 0 logs
    assert stored_rows(cache) == 244 + 153  # rank 0 stored the rows computed by both ranks

    single_csv, shared_csv = tmp_path / "one.csv", tmp_path / "two.csv"
    predict_to_csv(graft.load(run_dir, device="cpu"), [hymenoptera / "val"], single_csv)
    command = torchrun("--nproc_per_node=2", "--master-port", free_port(), "-m", "graft", "predict", run_dir)
    run([*command, hymenoptera / "val", "--out", shared_csv, "--device", "cpu"], env)
    # rows merged back in input order; each process batched its own share with one thread, so the probabilities
    # match to rounding (a wrong merge order or a wrong model would move labels and probabilities by far more)
    assert_prediction_csvs_match(shared_csv, single_csv)
    assert sorted(p.name for p in tmp_path.glob("two.csv*")) == ["two.csv"]  # part files removed


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_node_launch_on_loopback(frozen_run, hymenoptera: Path, tmp_path: Path) -> None:
    """Multi-node as two torchrun launches (one process each) meeting at a c10d rendezvous on 127.0.0.1."""
    env = env_for(tmp_path / "cache")
    port = free_port()
    common = ["--nnodes", 2, "--nproc-per-node", 1, "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    common += ["--rdzv-id", "graft-test", "--local-addr", "127.0.0.1"]
    train = ["-m", "graft", "train", hymenoptera, "--epochs", 5, "--seed", 0, "--device", "cpu", "--out", tmp_path]
    train += ["--name", "nodes"]
    nodes = [
        subprocess.Popen(
            [str(c) for c in torchrun(*common, "--node-rank", rank, "--rdzv-conf", f"is_host={rank == 0:d}", *train)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    for p, (out, err) in zip(nodes, outputs, strict=True):
        assert p.returncode == 0, f"stdout:\n{out}\nstderr:\n{err[-4000:]}"
    assert_matches_single(tmp_path / "nodes", frozen_run)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.numerics
def test_finetune_with_nproc(hymenoptera: Path, tmp_path: Path) -> None:
    """graft train --nproc 2 relaunches itself under torchrun; a fine-tune (a head stage on features of a random
    body, then DDP on images with sharded loaders and all-reduced metrics) writes what a single process writes."""
    data = tmp_path / "data"
    for split, n in (("train", 12), ("val", 6)):
        for cls in ("ants", "bees"):
            (data / split / cls).mkdir(parents=True)
            for f in sorted((hymenoptera / split / cls).glob("*.jpg"))[:n]:
                (data / split / cls / f.name).symlink_to(f)
    options = ["--mode", "finetune", "--arch", "mobilenet_v3_small", "--pretrained", "none", "--head-epochs", 1]
    options += ["--epochs", 1, "--batch-size", 8, "--device", "cpu", "--out", tmp_path]
    env = env_for(tmp_path / "cache")
    command = [sys.executable, "-m", "graft", "train", data, *options]
    run([*command, "--name", "one"], env)
    proc = run([*command, "--name", "two", "--nproc", 2], env)
    assert "world_size" not in json.loads((tmp_path / "one/metrics.json").read_text())
    metrics = json.loads((tmp_path / "two/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 2
    assert run_files(tmp_path / "two") == run_files(tmp_path / "one")
    # The head stage is the single-process one, on features of the random body computed in shares (other batches):
    # its losses agree to rounding, as logits do; its val accuracy (12 images, a random body: near-ties) within one
    # image.
    one, two = results(tmp_path / "one")[0], results(tmp_path / "two")[0]
    assert one["stage"] == two["stage"] == "head"
    for column in ("train_loss", "val_loss"):
        assert float(two[column]) == pytest.approx(float(one[column]), rel=LOGIT_RTOL, abs=LOGIT_ATOL), column
    assert_accuracy_within_one_image(float(two["val_acc"]), float(one["val_acc"]), 12)
    assert json.loads((tmp_path / "two/config.json").read_text())["nproc"] is None  # stripped for the workers
    assert proc.stdout.count("epoch   2 all") == 1


@pytest.mark.slow
@pytest.mark.subprocess
def test_an_error_on_rank_0_stops_every_rank(hymenoptera: Path, tmp_path: Path) -> None:
    """A run directory that exists: rank 0 finds out, every rank reports the error and exits (no rank hangs)."""
    (tmp_path / "taken").mkdir()
    command = torchrun("--nproc_per_node=2", "--master-port", free_port(), "-m", "graft", "train", hymenoptera)
    command += ["--out", tmp_path, "--name", "taken"]
    proc = subprocess.run(
        [str(c) for c in command], env=env_for(tmp_path / "cache"), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert proc.stderr.count("already exists: choose another --name") == 2


# ----------------------------------------------------------------------------------------------------------------
# in one process


def test_single_process_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cpu = torch.device("cpu")
    assert dist.setup(cpu) == cpu and not dist.is_distributed() and dist.is_main() and dist.world_size() == 1
    train = torch.utils.data.DataLoader(list(range(10)), batch_size=4)
    assert dist.shard_loaders(train, train) == (train, train)
    assert dist.epoch_totals(train, 3.0, 2, 5) == (3.0, 2, 5)
    module = torch.nn.Linear(2, 2)
    assert dist.wrap(module, cpu) is module and dist.unwrap(module) is module
    assert dist.on_main(lambda: 7) == 7


def test_nproc_is_for_the_command_line(hymenoptera: Path) -> None:
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node=2"):
        graft.train(hymenoptera, nproc=2)
    with pytest.raises(ConfigError, match="--nproc must be >= 1"):
        graft.train(hymenoptera, nproc=0)


def test_strip_option() -> None:
    argv = ["train", "DATA", "--nproc", "2", "--epochs", "3", "--nproc=4", "--nprocx", "1"]
    assert dist.strip_option(argv, "--nproc") == ["train", "DATA", "--epochs", "3", "--nprocx", "1"]


def test_shard_sampler_splits_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    def shares(n: int, world: int, shuffle: bool) -> list[list[int]]:
        out = []
        for r in range(world):
            monkeypatch.setattr(dist, "rank", lambda r=r: r)
            monkeypatch.setattr(dist, "world_size", lambda: world)
            g = torch.Generator().manual_seed(0)  # every rank seeds the run's generator alike
            sampler = dist.ShardSampler(n, shuffle=shuffle, generator=g)
            out.append(list(sampler))
            assert len(sampler) == len(out[-1])
        return out

    train = shares(11, 3, True)
    assert {len(s) for s in train} == {4}  # padded: every rank runs as many batches
    assert set().union(*train) == set(range(11))
    assert shares(11, 3, False) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]  # eval: each image once


def test_merge_parts_restores_input_order(tmp_path: Path) -> None:
    rows = [[f"img{i}", str(i)] for i in range(7)]
    parts = []
    for r in range(3):  # rank r classified rows r, r + 3, ...
        parts.append(tmp_path / f"out.csv.rank{r}")
        with open(parts[-1], "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([["path", "label"], *rows[r::3]])
    merge_parts(parts, tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as f:
        assert list(csv.reader(f)) == [["path", "label"], *rows]
