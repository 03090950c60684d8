"""The tuning levers on hymenoptera, as whole processes: the learning-rate range test (graft lr-find, --lr auto),
test-time augmentation (accuracy and time per image), and the --auto search (time against its budget, val accuracy
against the default run, --ensemble 3). Appends to benchmarks/RESULTS.md.

    python -m benchmarks.bench_tuning lrfind [--finetune]
    python -m benchmarks.bench_tuning tta
    python -m benchmarks.bench_tuning auto

Each part starts from an empty feature cache (a temporary GRAFT_CACHE_DIR) unless said otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import record

DATA = Path(os.environ.get("GRAFT_DATA") or Path(__file__).resolve().parents[2] / "shared/data/hymenoptera_data")


def graft(*args: str, env: dict[str, str]) -> tuple[str, float]:
    """``python -m graft ARGS`` in a new process; (its output, wall seconds)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "graft", *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"graft {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr, seconds


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def falls(path: Path) -> tuple[float, float, float, bool]:
    """(suggestion, smoothed loss there, a decade below) of an lr_find csv, and whether the loss falls there."""
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    at = next(i for i, r in enumerate(rows) if r["suggested"] == 1)
    lr = rows[at]["lr"]
    before = max(i for i, r in enumerate(rows) if r["lr"] <= lr / 10)
    here, decade = rows[at]["smoothed_loss"], rows[before]["smoothed_loss"]
    return lr, here, decade, here < decade


def lrfind(env: dict[str, str], tmp: Path, finetune: bool) -> None:
    lines = ["| run | stage | suggested lr | smoothed loss there | a decade lower | falls | steps | test s |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]  # fmt: skip
    graft("train", str(DATA), "--device", "cpu", "--out", str(tmp / "runs"), "--name", "default", env=env)
    modes = [("freeze", [])] + ([("finetune", ["--mode", "finetune"])] if finetune else [])
    heads = []
    for mode, extra in modes:
        out, _ = graft("lr-find", str(DATA), "--device", "cpu", "--plot-dir", str(tmp / mode), *extra, env=env)
        for match in re.finditer(r"(\w+) stage: suggested lr (\S+) \(valley; (\d+) steps, ([\d.]+)s\)", out):
            stage, _, steps, secs = match.groups()
            name = "lr_find.csv" if mode == "freeze" else f"lr_find-{stage}.csv"
            lr, here, decade, ok = falls(tmp / mode / name)
            lines.append(f"| graft lr-find ({mode}) | {stage} | {lr:.3g} | {here:.4f} | {decade:.4f} | {ok} | "
                         f"{steps} | {float(secs):.2f} |")  # fmt: skip
            heads.append(f"{mode}/{stage} {lr:.2g} ({float(secs):.2f} s)")
    runs = ["| run | lr | best val acc | wall s |", "| --- | --- | ---: | ---: |"]
    for name, extra in (("lr-default", []), ("lr-auto", ["--lr", "auto"]), ("lr-auto-again", ["--lr", "auto"])):
        _, secs = graft("train", str(DATA), "--device", "cpu", "--out", str(tmp / "runs"), "--name", name, *extra,
                        env=env)  # fmt: skip
        metrics = json.loads((tmp / "runs" / name / "metrics.json").read_text())
        lr = metrics.get("lr_auto", {}).get("head", 1e-3)
        runs.append(f"| graft train --mode freeze {' '.join(extra)} | {lr:.4g} | {metrics['best_val_acc']:.4f} | "
                    f"{secs:.1f} |")  # fmt: skip
    body = "\n".join(lines) + "\n\n" + "\n".join(runs) + f"\n\nMachine shared with other jobs ({load()})."
    record("Learning-rate range test (bench_tuning lrfind)", body,
           {"lr range test (bench_tuning)": "hymenoptera suggestions " + ", ".join(heads)})  # fmt: skip


def tta(env: dict[str, str], tmp: Path) -> None:
    lines = ["| run | TTA | val acc | images/s (graft predict val/) | ms per image |",
             "| --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    heads = []
    for mode, extra in (("freeze", []), ("finetune", ["--mode", "finetune", "--epochs", "2"])):
        run = tmp / "runs" / mode
        graft("train", str(DATA), "--device", "cpu", "--out", str(tmp / "runs"), "--name", mode, *extra, env=env)
        accs = {}
        for flag in ("--no-tta", "--tta"):
            out, _ = graft("evaluate", str(run), "--device", "cpu", "--no-plots", "--json", flag, env=env)
            accs[flag] = json.loads(out[out.index("{") :])["accuracy"]
            out, _ = graft("predict", str(run), str(DATA / "val"), "--device", "cpu", "--out",
                              str(tmp / f"{mode}{flag}.csv"), flag, env=env)  # fmt: skip
            rate = float(re.search(r"([\d.]+) images/s", out).group(1))
            lines.append(f"| {mode} | {flag == '--tta'} | {accs[flag]:.4f} | {rate:.1f} | {1000 / rate:.1f} |")
        heads.append(f"{mode} {accs['--no-tta']:.4f} -> {accs['--tta']:.4f}")
    body = "\n".join(lines) + f"\n\nTTA = the centre crop and its mirror, probabilities averaged. ({load()})"
    record("Test-time augmentation (bench_tuning tta)", body,
           {"test-time augmentation (bench_tuning)": "hymenoptera val acc " + "; ".join(heads)})  # fmt: skip


def auto(env: dict[str, str], tmp: Path) -> None:
    lines = ["| run | cache | candidates | search s (budget) | final training s | whole process s | val acc |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    _, secs = graft("train", str(DATA), "--device", "cpu", "--out", str(tmp / "runs"), "--name", "default", env=env)
    default = json.loads((tmp / "runs" / "default" / "metrics.json").read_text())["best_val_acc"]
    fresh = dict(env, GRAFT_CACHE_DIR=str(tmp / "cold-cache"))
    heads = [f"default {default:.4f}"]
    for name, cache, extra in (
        ("auto, 60 s", fresh, []),
        ("auto, 60 s", env, []),
        ("auto, 60 s, --ensemble 3", env, ["--ensemble", "3"]),
    ):
        slug = f"r{len(lines)}"
        _, wall = graft("train", str(DATA), "--auto", "--time-budget", "60", "--device", "cpu", "--out",
                        str(tmp / "runs"), "--name", slug, *extra, env=cache)  # fmt: skip
        metrics = json.loads((tmp / "runs" / slug / "metrics.json").read_text())
        a = metrics["auto"]
        state = "empty" if cache is fresh else "warm"
        lines.append(f"| {name} | {state} | {a['candidates']} | {a['search_seconds']:.1f} (60) | "
                     f"{a['final_seconds']:.1f} | {wall:.1f} | {metrics['best_val_acc']:.4f} |")  # fmt: skip
        heads.append(f"{name} ({state}) {metrics['best_val_acc']:.4f} in {a['search_seconds']:.0f}+"
                     f"{a['final_seconds']:.0f} s")  # fmt: skip
    body = "\n".join(lines) + f"\n\nDefault `graft train` (frozen): val acc {default:.4f}, {secs:.1f} s. ({load()})"
    record("Cross-validated search (bench_tuning auto)", body,
           {"--auto search (bench_tuning)": "hymenoptera val acc " + "; ".join(heads)})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("part", choices=["lrfind", "tta", "auto"])
    parser.add_argument("--finetune", action="store_true", help="lrfind: also the finetune stages (minutes on CPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRAFT_CACHE_DIR=str(Path(tmp) / "cache"), GRAFT_NO_PROGRESS="1")
        {"lrfind": lambda: lrfind(env, Path(tmp), args.finetune), "tta": lambda: tta(env, Path(tmp)),
         "auto": lambda: auto(env, Path(tmp))}[args.part]()  # fmt: skip


if __name__ == "__main__":
    main()
