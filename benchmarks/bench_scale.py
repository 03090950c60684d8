"""graft at 10k to 100k images: time per image and peak memory of each command, as a user runs them.

The images are made once from the shared datasets (:mod:`benchmarks.scale_images`: seeded crops, flips and colour
changes, 13 classes, a class per source class, val from the sources' val photos) and cached; a size ``N`` is the
first ``N`` of their fixed order, an ImageFolder tree of hard links. Per size, in a fresh ``GRAFT_CACHE_DIR``, each
stage is a whole ``python -m graft`` process (``GRAFT_OFFLINE=1``), timed from outside with its peak RSS (its own,
by ``os.wait4``):

1. ``graft check DATA``: the validating scan (decodes every image once, takes the doctor's measures, stores the
   verdicts in the cache).
2. ``graft train DATA --mode freeze``: reuses the scan's verdicts; the feature pass (``features``: its own printed
   times, train and val) and the rest of the process (``train_rest``: start-up, the warm scan, the head's epochs,
   evaluation, the report) are split; peak RSS is the process's; the features are cached.
3. ``graft predict RUN DATA/val --out predictions.csv``: decodes and classifies the val images again (nothing
   cached to reuse: prediction runs the whole model).
4. ``graft doctor DATA``: reuses the verdicts, measures and the cached features; its own step times (doctor.json)
   give the similarity survey's share.

    python -m benchmarks.bench_scale [--images 100000] [--sizes 10000,30000,100000] [--cache DIR] [--record]

Printed per size and stage: seconds, images/s, seconds per 1,000 images against the smallest size's, peak RSS;
then whether every stage's time per image stays within 1.3x of the smallest size's, every peak RSS within 4 GB,
and the doctor within 2x the feature pass at the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import scale_images

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("scan", "features", "train_rest", "predict", "doctor")
LINEAR, RSS_MB, DOCTOR_VS_FEATURES = 1.3, 4096, 2.0


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, output) of one process; raises when it fails (exit 3 is the doctor's verdict)."""
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, text


def run_size(n: int, cache: Path, work: Path) -> dict[str, dict[str, float]]:
    """Every stage on the first ``n`` images: {stage: {seconds, images, rss_mb}} (+ the doctor's own steps)."""
    data = scale_images.subset(n, cache)
    val = sum(1 for _ in (data / "val").rglob("*.jpg"))
    home = work / str(n)
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GRAFT_OFFLINE": "1", "GRAFT_CACHE_DIR": str(home / "cache"), "PYTHONPATH": str(ROOT)}
    graft = [sys.executable, "-m", "graft"]
    out: dict[str, dict[str, float]] = {}

    s, rss, _ = timed([*graft, "check", str(data)], env, home / "check.log")
    out["scan"] = {"seconds": s, "images": n, "rss_mb": rss}

    s, rss, text = timed(
        [*graft, "train", str(data), "--mode", "freeze", "--out", str(home / "runs")], env, home / "train.log"
    )
    feature_s = sum(float(t) for t in re.findall(r"features: .* computed \(([\d.]+)s\)", text))
    run = re.search(r"run saved to (\S+)", text)
    if run is None:
        raise RuntimeError(f"graft train printed no run folder:\n{text[-2000:]}")
    out["features"] = {"seconds": feature_s, "images": n, "rss_mb": rss}
    out["train_rest"] = {"seconds": s - feature_s, "images": n, "rss_mb": rss}

    cmd = [*graft, "predict", run.group(1), str(data / "val"), "--out", str(home / "predictions.csv")]
    s, rss, _ = timed(cmd, env, home / "predict.log")
    out["predict"] = {"seconds": s, "images": val, "rss_mb": rss}

    s, rss, _ = timed([*graft, "doctor", str(data), "--out", str(home / "doctor")], env, home / "doctor.log")
    out["doctor"] = {"seconds": s, "images": n, "rss_mb": rss}
    steps = json.loads((home / "doctor" / "doctor.json").read_text()).get("timings", {})
    out["doctor"].update({f"step_{k}": float(v) for k, v in steps.items()})
    return out


def table(results: dict[int, dict[str, dict[str, float]]]) -> tuple[str, list[str]]:
    """The markdown table and the done-when verdicts."""
    sizes = sorted(results)
    small = results[sizes[0]]
    per_k = {st: 1000 * small[st]["seconds"] / small[st]["images"] for st in STAGES}
    lines = [
        "| images | stage | seconds | images/s | s per 1k | vs smallest | peak RSS MB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts, worst = [], {}
    for n in sizes:
        for st in STAGES:
            r = results[n][st]
            k = 1000 * r["seconds"] / r["images"]
            ratio = k / per_k[st] if per_k[st] else float("nan")
            worst[st] = max(worst.get(st, 0.0), ratio)
            ips = r["images"] / r["seconds"] if r["seconds"] else float("nan")
            lines.append(
                f"| {n:,} | {st} | {r['seconds']:.1f} | {ips:.1f} | {k:.2f} | {ratio:.2f}x | {r['rss_mb']:.0f} |"
            )
    for n in sizes:
        steps = {k[5:]: v for k, v in results[n]["doctor"].items() if k.startswith("step_")}
        if steps:
            lines.append(f"\ndoctor steps at {n:,}: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    big = results[sizes[-1]]
    rss = max(r["rss_mb"] for res in results.values() for r in res.values())
    verdicts.append(
        f"time per image within {LINEAR}x of {sizes[0]:,}: "
        + ", ".join(f"{st} {worst[st]:.2f}x{'' if worst[st] <= LINEAR else ' (NO)'}" for st in STAGES)
    )
    verdicts.append(f"peak RSS {rss:.0f} MB {'<=' if rss <= RSS_MB else '> (NO)'} {RSS_MB} MB")
    ratio = big["doctor"]["seconds"] / max(big["features"]["seconds"], 1e-9)
    verdicts.append(
        f"doctor at {sizes[-1]:,}: {ratio:.2f}x the feature pass ({'<=' if ratio <= DOCTOR_VS_FEATURES else '> (NO)'}"
        f" {DOCTOR_VS_FEATURES}x)"
    )
    return "\n".join(lines), verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="images to generate (the largest size at most)")
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--cache", type=Path, default=scale_images.CACHE, help="folder of the generated images")
    parser.add_argument("--workers", type=int, default=2, help="processes generating images (untimed)")
    parser.add_argument("--keep", action="store_true", help="keep each size's graft cache, runs and outputs")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    total = max(args.images, sizes[-1])
    seconds = scale_images.generate(total, args.cache, workers=args.workers)
    print(f"{total:,} images in {args.cache}" + (f" (generated in {seconds:.0f} s)" if seconds else " (cached)"))
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results = {}
    for n in sizes:
        results[n] = run_size(n, args.cache, work)
        print(f"{n:,} images done: " + ", ".join(f"{st} {results[n][st]['seconds']:.1f} s" for st in STAGES))
    text, verdicts = table(results)
    print(text + "\n\n" + "\n".join(verdicts))
    print(f"outputs: {work}" if args.keep else "")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if args.record:
        from benchmarks.results import record

        load = os.getloadavg()[0]
        record(
            f"graft at scale (bench_scale, sizes {', '.join(f'{n:,}' for n in sizes)})",
            f"mobilenet_v2, CPU, 1-minute load at the end {load:.1f}.\n\n{text}\n\n"
            + "\n".join(f"- {v}" for v in verdicts),
            {"bench_scale": "; ".join(verdicts)},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
