"""graft against the tutorial algorithm, side by side in one run, as whole processes (imports included).

    python -m benchmarks.bench_tutorial [--mode freeze|finetune|both] [--reference-measure K] [--record]

freeze: the reference's 25-epoch frozen run (``--reference-measure K`` runs K epochs and extrapolates, see
benchmarks/tutorial_reference.py), graft ``--mode freeze --epochs 10`` ``--repeat`` times with an empty feature
cache each (a fresh ``GRAFT_CACHE_DIR``: no features, no scan verdicts, no exported backbone), then ``--repeat``
times with the last one's warm cache; the ratio is taken from the median. finetune: the reference's 25-epoch
fine-tuning (extrapolated from K epochs by default) and graft ``--mode finetune`` (staged: head on stored
features, then all layers) with an empty cache.

Page cache: this machine's kernel reclaims file pages left idle for ~30 s, after which the first process to
import torch reads ~300 MB of its libraries from disk again (``import torch`` alone: 6.4 s instead of 1.8 s,
measured 2026-11-23). So before timing anything, one untimed graft run (throwaway cache) and a read of the
images bring the libraries, the weights and the data into memory, for graft and for the reference alike; the
measured graft runs then follow each other without idle gaps. ``--cold-pages`` adds one graft run after 60 s of
idling, to show that cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hymenoptera_data"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return seconds, out.stdout


def reference(data: Path, arch: str, mode: str, measure: int | None, tmp: Path) -> dict:
    out = tmp / f"reference-{mode}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.tutorial_reference",
        str(data),
        "--arch",
        arch,
        "--mode",
        mode,
        "--epochs",
        "25",
        "--json",
        str(out),
    ]
    if measure:
        cmd += ["--measure", str(measure)]
    wall, _ = timed(cmd, dict(os.environ))
    result = json.loads(out.read_text())
    # the process wall time replaces the in-process one for the part that was measured
    result["wall_seconds"] = round(wall, 2)
    result["seconds_25"] = round(result["seconds_for_planned_epochs"] + (wall - result["seconds_run"]), 2)
    return result


def graft_run(data: Path, arch: str, args: list[str], tmp: Path, name: str, cache: Path) -> dict:
    env = dict(os.environ, GRAFT_CACHE_DIR=str(cache), GRAFT_OFFLINE="1")
    cmd = [sys.executable, "-m", "graft", "train", str(data), "--arch", arch, *args, "--out", str(tmp), "--name", name]
    wall, _ = timed(cmd, env)
    metrics = json.loads((tmp / name / "metrics.json").read_text())
    return {"wall_seconds": round(wall, 2), "best_val_acc": metrics["best_val_acc"], "args": " ".join(args)}


def repeated(runs: list[dict]) -> dict:
    """Several runs of one command as one table row: the median time (all times listed), the worst accuracy."""
    times = sorted(r["wall_seconds"] for r in runs)
    return {
        "wall_seconds": times[len(times) // 2],
        "all_seconds": [r["wall_seconds"] for r in runs],
        "best_val_acc": min(r["best_val_acc"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--mode", choices=["freeze", "finetune", "both"], default="both")
    parser.add_argument(
        "--reference-measure",
        type=int,
        default=None,
        help="epochs of the reference to run before extrapolating to 25 (default: all 25 for freeze, 3 for finetune)",
    )
    parser.add_argument("--finetune-args", default="--mode finetune --epochs 2")
    parser.add_argument("--repeat", type=int, default=3, help="graft freeze runs of each kind (median reported)")
    parser.add_argument("--cold-pages", action="store_true", help="also one graft run after 60 s of idling")
    parser.add_argument("--record", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()
    sections = []
    load = os.getloadavg()[0]
    if load >= len(os.sched_getaffinity(0)) / 2:
        sections.append(
            f"WARNING: 1-minute load average {load:.2f} before the run: another job shares the cores, "
            "so these times are inflated (two torch jobs on 2 cores slow each other ~10x)."
        )
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmpdir:
        tmp = Path(tmpdir)
        freeze = ["--mode", "freeze", "--epochs", "10"]
        # Bring the libraries, the weights and the images into the page cache before timing anything (see above).
        for path in args.data.rglob("*"):
            if path.is_file():
                path.read_bytes()
        graft_run(args.data, args.arch, freeze, tmp, "page-cache-warm-up", tmp / "cache-warm-up")
        if args.mode in ("freeze", "both"):
            # graft first: the reference's DataLoader workers are still exiting for a while after it ends
            n = max(1, args.repeat)
            colds = [graft_run(args.data, args.arch, freeze, tmp, f"cold{i}", tmp / f"cache{i}") for i in range(n)]
            cache = tmp / f"cache{n - 1}"
            warms = [graft_run(args.data, args.arch, freeze, tmp, f"warm{i}", cache) for i in range(n)]
            rows = [(f"graft freeze, empty cache ({n} runs)", repeated(colds))]
            rows.append((f"graft freeze, warm cache ({n} runs)", repeated(warms)))
            if args.cold_pages:
                time.sleep(60)
                idle = graft_run(args.data, args.arch, freeze, tmp, "cold-pages", tmp / "cache-cold-pages")
                rows.append(("graft freeze, empty cache, after 60 s idle (page cache reclaimed)", idle))
            ref = reference(args.data, args.arch, "freeze", args.reference_measure, tmp)
            sections.append(table("frozen backbone", ref, rows))
        if args.mode in ("finetune", "both"):
            run = graft_run(args.data, args.arch, args.finetune_args.split(), tmp, "finetune", tmp / "cache-ft")
            ref = reference(args.data, args.arch, "finetune", args.reference_measure or 3, tmp)
            sections.append(table("fine-tuning", ref, [(f"graft {args.finetune_args}, empty cache", run)]))
    text = "\n\n".join(sections)
    print(text)
    if args.record:
        from benchmarks.results import record

        record(f"graft vs the tutorial algorithm ({args.arch}, hymenoptera, whole processes)", text)
    return 0


def table(title: str, ref: dict, runs: list[tuple[str, dict]]) -> str:
    how = (
        "measured"
        if not ref["extrapolated"]
        else (
            f"{ref['epochs_run']} epochs measured ({', '.join(map(str, ref['epoch_seconds']))} s), "
            f"extrapolated to 25 as setup + e1 + 24 x mean of the later epochs"
        )
    )
    lines = [
        f"**{title}** (reference: {how}; its best val acc is over the epochs it ran)",
        "",
        "| run | wall s | best val acc | reference time / graft time |",
        "| --- | ---: | ---: | ---: |",
        f"| tutorial algorithm, 25 epochs, {ref['mode']} | {ref['seconds_25']:.1f} | {ref['best_val_acc']:.4f} | 1.0 |",
    ]
    for name, r in runs:
        ratio = f"{ref['seconds_25'] / r['wall_seconds']:.1f}x"
        wall = f"{r['wall_seconds']:.1f}"
        if len(r.get("all_seconds", [])) > 1:
            wall = f"{wall} (median of {' / '.join(f'{t:.1f}' for t in r['all_seconds'])})"
            ratio += f" (slowest: {ref['seconds_25'] / max(r['all_seconds']):.1f}x)"
        lines.append(f"| {name} | {wall} | {r['best_val_acc']:.4f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
