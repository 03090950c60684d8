"""Fine-tuning in fp32 against bf16 (``--precision``) on this CPU, as whole processes (imports included).

    python -m benchmarks.bench_precision [--datasets hymenoptera_data,trashnet_half,flowers5] [--seeds 0,1]
                                         [--tutorial] [--epochs N] [--arch mobilenet_v2] [--record]

For each dataset and seed: graft ``--mode finetune`` with its defaults, once with ``--precision fp32`` and once
with ``--precision bf16`` (in that order, each with an empty feature cache, so both pay the same start: the scan and
the head stage's features, which ONNX Runtime computes in fp32 either way). ``--tutorial`` adds the tutorial's
recipe (``--head-epochs 0 --optimizer sgd --lr 0.001 --momentum 0.9 --scheduler step --step-size 7 --gamma 0.1
--batch-size 4 --epochs 25 --patience 25``; ~5 min per run on hymenoptera on 2 cores). Rows: wall seconds of the
process, the training loop's seconds (metrics.json ``fit_seconds``), best val accuracy, val images, and the bf16
run's accuracy difference from the fp32 run of the same seed, in images. Val runs in fp32 in both (graft predict's
numerics), so the accuracies compare the weights the two precisions trained. A CPU without AVX512-BF16 or AMX-BF16
refuses ``--precision bf16``: there the benchmark stops.
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = ("hymenoptera_data", "trashnet_half", "flowers5")
PRECISIONS = ("fp32", "bf16")
#: The tutorial's fine-tuning recipe as graft options (``--patience 25``: no early stop in 25 epochs).
TUTORIAL = [
    *("--head-epochs", "0", "--optimizer", "sgd", "--lr", "0.001", "--momentum", "0.9", "--scheduler", "step"),
    *("--step-size", "7", "--gamma", "0.1", "--batch-size", "4", "--epochs", "25", "--patience", "25"),
]


def graft_run(data: Path, args: list[str], tmp: Path, name: str) -> dict:
    """One ``graft train`` process with an empty cache of its own; its wall time and the run's figures."""
    env = dict(os.environ, GRAFT_CACHE_DIR=str(tmp / f"cache-{name}"), GRAFT_OFFLINE="1", GRAFT_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "graft", "train", str(data), *args, "--out", str(tmp), "--name", name]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    metrics = json.loads((tmp / name / "metrics.json").read_text())
    config = json.loads((tmp / name / "config.json").read_text())
    return {
        "wall_seconds": round(wall, 1),
        "fit_seconds": metrics["fit_seconds"],
        "best_val_acc": metrics["best_val_acc"],
        "n_val": metrics["n_val"],
        "epochs": metrics["epochs_run"],
        "precision": config["resolved_precision"]["precision"],
    }


def table(recipe: str, rows: list[dict]) -> str:
    lines = [
        f"**{recipe}**",
        "",
        "| dataset | seed | precision | epochs | wall s | fit s | best val acc | val images | abs acc diff (images) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        diff = "" if r["diff_images"] is None else f"{r['diff_images']}"
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['precision']} | {r['epochs']} | {r['wall_seconds']:.1f} | "
            f"{r['fit_seconds']:.1f} | {r['best_val_acc']:.4f} | {r['n_val']} | {diff} |"
        )
    return "\n".join(lines)


def headline(recipe: str, rows: list[dict]) -> str:
    """The median fp32/bf16 ratio of the training loop's seconds and the largest accuracy difference."""
    by = {(r["dataset"], r["seed"], r["precision"]): r for r in rows}
    ratios = [by[d, s, "fp32"]["fit_seconds"] / by[d, s, "bf16"]["fit_seconds"] for d, s, p in by if p == "bf16"]
    worst = max(r["diff_images"] for r in rows if r["diff_images"] is not None)
    datasets = sorted({r["dataset"] for r in rows})
    return (
        f"{recipe}, {', '.join(datasets)}: bf16 trains {statistics.median(ratios):.2f}x as fast as fp32 (median "
        f"fit-seconds ratio of {len(ratios)} pairs); val accuracy differs by at most {worst} images"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="folders under ../shared/data")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--tutorial", action="store_true", help="also the tutorial's recipe (~5 min a run)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="all-layers epochs of the defaults' recipe (a quick look)"
    )
    parser.add_argument("--record", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    recipes = {f"graft --mode finetune, its defaults{' '.join(['', *epochs])}": ["--mode", "finetune", *epochs]}
    if args.tutorial:
        recipes["graft --mode finetune, the tutorial's recipe (25 epochs, batch 4)"] = ["--mode", "finetune", *TUTORIAL]
    sections: list[str] = []
    load = os.getloadavg()[0]
    if load >= len(os.sched_getaffinity(0)) / 2:
        sections.append(
            f"WARNING: 1-minute load average {load:.2f} before the run: another job shares the cores, "
            "so these times are inflated (two torch jobs on 2 cores slow each other ~10x)."
        )
    headlines: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for recipe, options in recipes.items():
            rows = []
            for dataset in args.datasets.split(","):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    runs = {}
                    for precision in PRECISIONS:
                        name = f"{dataset}-{seed}-{precision}-{len(sections)}"
                        run_args = [*options, "--arch", args.arch, "--seed", str(seed), "--precision", precision]
                        runs[precision] = graft_run(DATA / dataset, run_args, tmp, name)
                        print(dataset, seed, precision, runs[precision], flush=True)
                    diff = round(
                        abs(runs["bf16"]["best_val_acc"] - runs["fp32"]["best_val_acc"]) * runs["bf16"]["n_val"]
                    )
                    for precision, r in runs.items():
                        rows.append(
                            r | {"dataset": dataset, "seed": seed, "diff_images": diff if precision == "bf16" else None}
                        )
            sections.append(table(recipe, rows))
            headlines[f"bf16 vs fp32 fine-tuning, {recipe.split(', ')[1]} (bench_precision)"] = headline(recipe, rows)
    text = "\n\n".join(sections)
    print(text)
    if args.record:
        from benchmarks.results import record

        record(f"fine-tuning in bf16 vs fp32 ({args.arch}, whole processes)", text, headlines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
