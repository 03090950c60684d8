"""graft against the tutorial algorithm, side by side in one run, as whole processes (imports included).

    python -m benchmarks.bench_tutorial [--mode freeze|finetune|both] [--reference-measure K] [--record]

freeze: the reference's 25-epoch frozen run (``--reference-measure K`` runs K epochs and extrapolates, see
benchmarks/tutorial_reference.py), graft ``--mode freeze --epochs 10`` ``--repeat`` times with an empty feature
cache each (a fresh ``GRAFT_CACHE_DIR``: no features, no scan verdicts) holding only the checked ONNX export of the
pretrained body (``onnx-bodies/``, made once per weights and machine, like the weights download), ``--repeat``
times with nothing cached at all (a machine's first run of these weights), then ``--repeat`` times with the last
one's warm cache; the ratio is taken from the median. finetune: the reference's 25-epoch
fine-tuning (extrapolated from K epochs by default) and graft ``--mode finetune`` (staged: head on stored
features, then all layers) with an empty cache. Time-to-result rows set graft's own recipe (fewer epochs) against the
reference's 25 epochs; the same-work rows run graft with the reference's recipe and its 25 epochs (``--optimizer sgd
--lr 0.001 --scheduler step --step-size 7 --gamma 0.1 --batch-size 4 --epochs 25``, no early stop; fine-tuning without
the head stage), so the ratio there compares the same work. ``--no-same-work`` leaves them out.

Page cache: the kernel of the virtual machines this was measured on reclaims file pages left idle for ~30 s, after
which the first process to import torch reads ~300 MB of its libraries from disk again (``import torch`` alone:
6.4 s instead of 1.8 s). So before timing anything, one untimed graft run (throwaway cache) and a read of the
images bring the libraries, the weights and the data into memory, for graft and for the reference alike; the
measured graft runs then follow each other without idle gaps. ``--cold-pages`` adds one graft run after 60 s of
idling, to show that cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
#: The folder of a graft cache that holds checked ONNX exports of bodies (graft.core.export_cache).
BODIES = "onnx-bodies"


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
    config = json.loads((tmp / name / "config.json").read_text())
    return {
        "precision": (config.get("resolved_precision") or {}).get("precision", "fp32"),
        "wall_seconds": round(wall, 2),
        "best_val_acc": metrics["best_val_acc"],
        "epochs": metrics.get("epochs_run"),
        "args": " ".join(args),
    }


#: The reference's recipe as graft options, for the same-work rows (``--patience 25``: no early stop in 25 epochs).
TUTORIAL_RECIPE = [
    *("--optimizer", "sgd", "--lr", "0.001", "--momentum", "0.9", "--scheduler", "step"),
    *("--step-size", "7", "--gamma", "0.1", "--batch-size", "4", "--epochs", "25", "--patience", "25"),
]


def repeated(runs: list[dict]) -> dict:
    """Several runs of one command as one table row: the median time (all times listed), the worst accuracy."""
    times = sorted(r["wall_seconds"] for r in runs)
    return {
        "epochs": runs[0].get("epochs"),
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
    parser.add_argument("--finetune-args", default="--mode finetune --epochs 2")  # --precision auto: bf16 where it pays
    parser.add_argument("--repeat", type=int, default=3, help="graft freeze runs of each kind (median reported)")
    parser.add_argument("--cold-pages", action="store_true", help="also one graft run after 60 s of idling")
    parser.add_argument(
        "--no-same-work", action="store_true", help="leave out graft running the reference's recipe and 25 epochs"
    )
    parser.add_argument("--record", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()
    sections: list[str] = []
    headlines: dict[str, str] = {}
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
            colds = []
            for i in range(n):
                shutil.copytree(tmp / "cache-warm-up" / BODIES, tmp / f"cache{i}" / BODIES)
                colds.append(graft_run(args.data, args.arch, freeze, tmp, f"cold{i}", tmp / f"cache{i}"))
            firsts = [graft_run(args.data, args.arch, freeze, tmp, f"first{i}", tmp / f"empty{i}") for i in range(n)]
            cache = tmp / f"cache{n - 1}"
            warms = [graft_run(args.data, args.arch, freeze, tmp, f"warm{i}", cache) for i in range(n)]
            rows = [(f"graft freeze, empty feature cache, the body's export kept ({n} runs)", repeated(colds))]
            rows.append((f"graft freeze, nothing cached, the body exported and checked ({n} runs)", repeated(firsts)))
            rows.append((f"graft freeze, warm cache ({n} runs)", repeated(warms)))
            if args.cold_pages:
                time.sleep(60)
                idle = graft_run(args.data, args.arch, freeze, tmp, "cold-pages", tmp / "cache-cold-pages")
                rows.append(("graft freeze, empty cache, after 60 s idle (page cache reclaimed)", idle))
            if not args.no_same_work:
                same = graft_run(args.data, args.arch, ["--mode", "freeze", *TUTORIAL_RECIPE], tmp, "same", cache)
                rows.append(("graft freeze, the reference's recipe and 25 epochs, warm cache (same work)", same))
            ref = reference(args.data, args.arch, "freeze", args.reference_measure, tmp)
            sections.append(table("frozen backbone", ref, rows))
            headlines["graft vs the tutorial, frozen (bench_tutorial)"] = headline(ref, rows[0])
        if args.mode in ("finetune", "both"):
            run = graft_run(args.data, args.arch, args.finetune_args.split(), tmp, "finetune", tmp / "cache-ft")
            rows = [
                (f"graft {args.finetune_args} (epochs: head stage + all layers), empty cache (time to result)", run)
            ]
            if not args.no_same_work:
                recipe = ["--mode", "finetune", "--head-epochs", "0", *TUTORIAL_RECIPE]
                for precision in ("auto", "fp32"):
                    same = graft_run(
                        args.data,
                        args.arch,
                        [*recipe, "--precision", precision],
                        tmp,
                        f"same-{precision}",
                        tmp / f"cache-ft-same-{precision}",
                    )
                    rows.append((f"graft finetune, the reference's recipe and 25 epochs, {same['precision']}, "
                                 "empty cache (same work)", same))  # fmt: skip
            ref = reference(args.data, args.arch, "finetune", args.reference_measure or 3, tmp)
            sections.append(table("fine-tuning", ref, rows))
            headlines["graft vs the tutorial, fine-tuning (bench_tutorial)"] = headline(ref, rows[0], rows[1:])
    text = "\n\n".join(sections)
    print(text)
    if args.record:
        from benchmarks.results import record

        record(f"graft vs the tutorial algorithm ({args.arch}, hymenoptera, whole processes)", text, headlines)
    return 0


def reference_rows(ref: dict) -> tuple[list[str], str]:
    """The reference's table rows (what was measured; the 25-epoch extrapolation on its own row) and the label of
    the time the ratios divide."""
    mode = ref["mode"]
    if not ref["extrapolated"]:
        acc = f"{ref['best_val_acc']:.4f}"
        return [
            f"| tutorial algorithm, {mode}, 25 epochs (measured) | {ref['seconds_25']:.1f} | {acc} | 1.0 |"
        ], "measured"
    k = ref["epochs_run"]
    return [
        f"| tutorial algorithm, {mode} (measured, whole process) | {k} | {ref['wall_seconds']:.1f} | "
        f"{ref['best_val_acc']:.4f} | |",
        f"| tutorial algorithm, {mode} (**extrapolated** from the {k} measured) | 25 | {ref['seconds_25']:.1f} | "
        f"(not measured) | 1.0 |",
    ], "extrapolated"


def table(title: str, ref: dict, runs: list[tuple[str, dict]]) -> str:
    how = (
        "all 25 epochs measured"
        if not ref["extrapolated"]
        else (
            f"{ref['epochs_run']} epochs measured ({', '.join(map(str, ref['epoch_seconds']))} s), "
            f"extrapolated to 25 as setup + e1 + 24 x mean of the later epochs"
        )
    )
    ref_lines, basis = reference_rows(ref)
    lines = [
        f"**{title}** (reference: {how}; its best val acc is over the epochs it ran)",
        "",
        "| run | epochs | wall s | best val acc | reference's 25 epochs / graft time |",
        "| --- | ---: | ---: | ---: | ---: |",
        *ref_lines,
    ]
    for name, r in runs:
        ratio = f"{ref['seconds_25'] / r['wall_seconds']:.1f}x" + (
            " (vs extrapolated)" if basis == "extrapolated" else ""
        )
        wall = f"{r['wall_seconds']:.1f}"
        if len(r.get("all_seconds", [])) > 1:
            wall = f"{wall} (median of {' / '.join(f'{t:.1f}' for t in r['all_seconds'])})"
            ratio += f" (slowest: {ref['seconds_25'] / max(r['all_seconds']):.1f}x)"
        epochs = r.get("epochs") or ""
        lines.append(f"| {name} | {epochs} | {wall} | {r['best_val_acc']:.4f} | {ratio} |")
    return "\n".join(lines)


def headline(ref: dict, result: tuple[str, dict], same: list[tuple[str, dict]] | None = None) -> str:
    """One line for the top of RESULTS.md: graft's time to result, the reference's time (saying when it is
    extrapolated), the ratio, and the same-work ratio when it was run."""
    name, r = result
    basis = f"25 epochs extrapolated from {ref['epochs_run']} measured" if ref["extrapolated"] else "25 epochs measured"
    t25 = ref["seconds_25"]
    text = (
        f"{name}, {r.get('epochs')} epochs: {r['wall_seconds']:.1f} s vs the reference's {t25:.1f} s ({basis}) = "
        f"{t25 / r['wall_seconds']:.1f}x; best val acc {r['best_val_acc']:.4f} vs {ref['best_val_acc']:.4f}"
    )
    for _, s in (same or [])[:1]:
        seconds = s["wall_seconds"]
        text += f"; same work (25 epochs, the reference's recipe): {seconds:.1f} s = {t25 / seconds:.1f}x"
    return text


if __name__ == "__main__":
    sys.exit(main())
