"""Training resolution measured: ``graft train --image-size N`` for N in 224, 320, 384, frozen and fine-tuned
mobilenet_v2, val accuracy and the wall time of the ``graft train`` command, with the change against 224.

    python -m benchmarks.bench_image_size [--data hymenoptera_data,trashnet_half] [--sizes 224,320,384]
        [--modes freeze,finetune] [--epochs 3] [--device cpu] [--record]

Each run is its own ``graft train`` process with an empty feature cache, so a frozen run's time includes its
feature pass at that size. Fine-tuning is graft's default (``--head-epochs 3`` on stored features, then all layers)
with ``--epochs`` all-layer epochs, the same at every size; frozen runs use graft's defaults. Prints a markdown
table; ``--record`` also appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.results import machine, record

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BASE = 224


@dataclass
class Row:
    data: str
    mode: str
    size: int
    val_acc: float
    n_val: int
    seconds: float


def train(data: Path, mode: str, size: int, epochs: int, device: str, tmp: Path) -> Row:
    """One ``graft train`` subprocess (its own empty cache); its val accuracy from metrics.json and its wall time."""
    name = f"{data.name}-{mode}-{size}"
    cmd = [sys.executable, "-m", "graft", "train", str(data), "--arch", "mobilenet_v2", "--mode", mode,
           "--image-size", str(size), "--device", device, "--seed", "0",
           "--out", str(tmp / "runs"), "--name", name]  # fmt: skip
    if mode == "finetune":
        cmd += ["--epochs", str(epochs)]
    env = os.environ | {"GRAFT_CACHE_DIR": str(tmp / f"cache-{name}"), "GRAFT_NO_PROGRESS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metrics = json.loads((tmp / "runs" / name / "metrics.json").read_text())
    return Row(data.name, mode, size, float(metrics["best_val_acc"]), int(metrics["n_val"]), seconds)


def table(rows: list[Row]) -> str:
    """Markdown: one line per run, with the accuracy change (points) and the time ratio against the 224 run of the
    same data and mode."""
    base = {(r.data, r.mode): r for r in rows if r.size == BASE}
    lines = [
        "| data | mode | size | val acc | vs 224 (points) | acc ratio vs 224 | time | time ratio vs 224 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        b = base.get((r.data, r.mode))
        diff = f"{(r.val_acc - b.val_acc) * 100:+.1f}" if b else "-"
        acc_ratio = f"{r.val_acc / b.val_acc:.3f}" if b and b.val_acc else "-"
        ratio = f"{r.seconds / b.seconds:.2f}x" if b else "-"
        lines.append(
            f"| {r.data} ({r.n_val} val) | {r.mode} | {r.size} | {r.val_acc:.4f} | {diff} | {acc_ratio} | "
            f"{r.seconds:.0f} s | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="hymenoptera_data,trashnet_half", help="names under ../shared/data, or paths")
    parser.add_argument("--sizes", default="224,320,384")
    parser.add_argument("--modes", default="freeze,finetune")
    parser.add_argument("--epochs", type=int, default=3, help="all-layer epochs of the fine-tunes (every size alike)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data.split(","):
            data = Path(name) if Path(name).is_dir() else SHARED / name
            for mode in args.modes.split(","):
                for size in sizes:
                    rows.append(train(data, mode, size, args.epochs, args.device, Path(tmp)))
                    r = rows[-1]
                    print(f"{r.data} {r.mode} {r.size}: val acc {r.val_acc:.4f}, {r.seconds:.0f} s", flush=True)
    body = (
        f"mobilenet_v2, seed 0, --device {args.device}; freeze: graft's defaults; finetune: --head-epochs 3 (default) "
        f"--epochs {args.epochs}. Time: the whole `graft train` process, empty feature cache. {machine()}.\n\n"
        + table(rows)
    )
    print("\n" + body)
    if args.record:
        record("Training resolution (bench_image_size)", body)


if __name__ == "__main__":
    main()
