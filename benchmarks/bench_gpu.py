"""GPU figures (run where a CUDA GPU is present):

1. training images/s of a backbone (default resnet50, batch 256) on device-resident random images: plain fp32
   (NCHW, PyTorch's default backend settings) against graft's GPU path (bf16 autocast + channels_last + cuDNN
   benchmark), optionally also with torch.compile. Each figure is the median of timed windows after warm-up, with
   the GPU synchronized.
2. ``graft train`` fine-tuning resnet18 for 25 epochs on hymenoptera with the tutorial's schedule (SGD momentum,
   StepLR, no head stage), as a whole process and as graft's own ``train_seconds``.

    python -m benchmarks.bench_gpu --data ../shared/data/hymenoptera_data [--compile] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.bench_tutorial import DEFAULT_DATA
from benchmarks.results import record

#: PyTorch's own settings, read before graft changes any: the baseline runs with them (cuDNN convolutions may use
#: TF32 by default; matmuls may not; no cuDNN autotuning).
TORCH_DEFAULTS = {
    "cudnn_benchmark": torch.backends.cudnn.benchmark,
    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
}


def train_step_rate(arch: str, batch: int, *, fast: bool, compile: bool, steps: int = 20, windows: int = 3) -> float:
    """Training images/s of ``arch`` (random weights, 1000 classes) on random device-resident batches."""
    from graft.core.device import autocast, pick_device, tune_convolutions
    from graft.models.backbones import get_backbone
    from graft.models.model import build_model

    device = pick_device("cuda")  # turns on TF32
    tune_convolutions(device, steps=100_000)  # what graft does for a long training run
    if not fast:  # the plain baseline: fp32 with PyTorch's defaults, as a user's own loop would run
        torch.backends.cudnn.benchmark = TORCH_DEFAULTS["cudnn_benchmark"]
        torch.backends.cudnn.allow_tf32 = TORCH_DEFAULTS["cudnn_allow_tf32"]
        torch.backends.cuda.matmul.allow_tf32 = TORCH_DEFAULTS["matmul_allow_tf32"]
    spec = get_backbone(arch)
    model, _, _ = build_model(spec, 1000, pretrained="none")
    model = model.to(device).train()
    model.unfreeze()
    size = spec.preprocess.input_size
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with autocast(device) if fast else torch.autocast("cuda", enabled=False):
            loss = loss_fn(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(15 if compile else 5):  # warm-up: cuDNN autotuning, compilation, allocator
        step()
    rates = []
    for _ in range(windows):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def finetune_run(data: Path, arch: str, epochs: int, extra: list[str]) -> dict:
    """A whole ``graft train`` process: the tutorial's fine-tuning schedule for ``epochs`` epochs."""
    with tempfile.TemporaryDirectory() as tmp:  # cold: a fresh feature cache and run folder
        cmd = [
            sys.executable, "-m", "graft", "train", str(data), "--arch", arch, "--mode", "finetune",
            "--head-epochs", "0", "--epochs", str(epochs), "--optimizer", "sgd", "--lr", "0.001",
            "--scheduler", "step", "--out", tmp, "--name", "run", *extra,
        ]  # fmt: skip
        env = os.environ | {"GRAFT_CACHE_DIR": str(Path(tmp) / "cache")}
        start = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode:
            raise SystemExit(f"graft train failed:\n{out.stdout}\n{out.stderr}")
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    print(out.stdout[-4000:], out.stderr[-2000:], sep="\n")  # the run's own per-epoch log
    keys = ("train_seconds", "fit_seconds", "best_val_acc", "epochs_run")
    return {"wall_seconds": wall, **{k: metrics[k] for k in keys}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--arch", default="resnet50", help="backbone of the images/s measurement")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="also measure the fast path under torch.compile")
    parser.add_argument("--finetune-arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--pretrained", default="auto", help="weights of the fine-tune (none when not available)")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU")
    name = torch.cuda.get_device_name()
    lines = [f"GPU: {name}, torch {torch.__version__}", "", "| measurement | figure |", "|---|---|"]
    plain = train_step_rate(args.arch, args.batch, fast=False, compile=False)
    fast = train_step_rate(args.arch, args.batch, fast=True, compile=False)
    lines += [
        f"| {args.arch} training, batch {args.batch}, fp32 NCHW (PyTorch defaults) | {plain:,.0f} images/s |",
        f"| {args.arch} training, batch {args.batch}, bf16 autocast + channels_last | {fast:,.0f} images/s "
        f"({fast / plain:.1f}x) |",
    ]
    if args.compile:
        compiled = train_step_rate(args.arch, args.batch, fast=True, compile=True)
        lines.append(
            f"| {args.arch} training, batch {args.batch}, bf16 + channels_last + torch.compile | "
            f"{compiled:,.0f} images/s ({compiled / plain:.1f}x) |"
        )
    print("\n".join(lines), flush=True)
    if not args.skip_finetune:
        torch.cuda.empty_cache()
        # Twice: the first process on a machine also pays one-off costs (CUDA's lazy module loading, matplotlib's
        # font cache, bytecode compilation); the second is what a user sees from then on.
        for which in ("first", "second"):
            run = finetune_run(args.data, args.finetune_arch, args.epochs, ["--pretrained", args.pretrained])
            lines.append(
                f"| graft train {args.finetune_arch} finetune, {run['epochs_run']} epochs (SGD, StepLR; --pretrained "
                f"{args.pretrained}), {which} process | {run['fit_seconds']:.1f} s for the epochs, "
                f"{run['train_seconds']:.1f} s training in all (scan, decode, CUDA start), {run['wall_seconds']:.1f} s "
                f"whole process (+ imports, report); best val acc {run['best_val_acc']:.4f} |"
            )
            print(lines[-1])
    if args.record:
        headline = (
            f"{name}: {args.arch} batch {args.batch}: {fast:,.0f} images/s bf16 + channels_last vs {plain:,.0f} fp32 "
            "with PyTorch's defaults"
        )
        record("GPU training (bench_gpu)", "\n".join(lines), {"GPU training (bench_gpu)": headline})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
