"""graft doctor: planted leakage, planted label noise, exact duplicates, time at 1k/4k/16k, train's warning.

    python -m benchmarks.bench_doctor [--sizes 1000,4000,16000] [--record]

Every planted set is built in a temporary folder (tests/planted.py): copies of 10% of hymenoptera's val images put
into train, each edited by one random transform (mirror, re-crop keeping 60-90% of the area, resize to 40-80%,
JPEG quality 30-60, brightness x0.7-0.85 or x1.15-1.3); 10% of the train labels moved to another class
(hymenoptera, trashnet_half). Times are whole `graft doctor` processes: cold (empty cache: the scan decodes and
the backbone runs) and warm (the same command again), beside the start-up: a process importing what the doctor
needs (`python -c "import torch, graft.insight.doctor.run"`; `graft doctor --help` imports no torch). The 1-minute
load average before each size is printed and recorded: on a shared 2-core machine the figures mean little above ~1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

from planted import TRANSFORMS, edited_copy, flip_labels, images, plant_leakage  # noqa: E402


def _graft(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "graft", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, out


def leakage(tmp: Path) -> dict[str, Any]:
    from graft.insight.doctor import doctor

    data = tmp / "leak"
    planted = plant_leakage(SHARED / "hymenoptera_data", data, 0.10, seed=0)
    result = doctor(data, out=tmp / "leak-out", html=False)
    want = {(v, t) for v, t, _ in planted}
    got = {(f.files[0], f.files[1]) for f in result.of("leakage")}
    sims = {(f.files[0], f.files[1]): f.evidence for f in result.of("leakage")}
    per_kind = {
        k: [sims[(v, t)]["similarity"] for v, t, kk in planted if kk == k and (v, t) in sims] for k in TRANSFORMS
    }
    return {
        "planted": len(want),
        "flagged": len(got),
        "recall": len(want & got) / len(want),
        "precision": len(want & got) / max(1, len(got)),
        "lowest_similarity_per_transform": {k: min(v) if v else None for k, v in per_kind.items()},
    }


def label_noise(name: str, tmp: Path, seed: int = 0) -> dict[str, Any]:
    from graft.core.config import DoctorConfig
    from graft.features import similarity
    from graft.insight.doctor import run
    from graft.insight.doctor.labels import score_labels

    data = tmp / f"noise-{name}"
    flipped = {p for p, _ in flip_labels(SHARED / name, data, 0.10, seed=seed)}
    ds, feats, _ = run.scan_and_features(DoctorConfig(data=data), lambda _: None)
    samples = ds.train + ds.val
    rel = [s.path.relative_to(Path(ds.report.root)).as_posix() for s in samples]
    labels = np.array([s.label for s in samples])
    x = similarity.normalise(feats)
    found = similarity.search(x, x, 10, same=True)
    scores = score_labels(x, labels, len(ds.classes), found.sims, found.index, seed=seed)
    truth = np.array([r in flipped for r in rel])
    n = int(truth.sum())
    top = np.argsort(-scores.score)[:n]
    ranks = np.empty(len(rel))
    ranks[np.argsort(scores.score)] = np.arange(1, len(rel) + 1)
    auroc = (ranks[truth].sum() - n * (n + 1) / 2) / (n * (len(rel) - n))
    return {"flipped": n, "precision_at_n": float(truth[top].mean()), "auroc": float(auroc), "images": len(rel)}


def exact_trashnet(tmp: Path) -> dict[str, Any]:
    from graft.insight.doctor import doctor

    result = doctor(SHARED / "trashnet_half", out=tmp / "trash-out", html=False)
    known = {
        frozenset({"train/glass/glass115.jpg", "val/metal/metal91.jpg"}),
        frozenset({"val/glass/glass176.jpg", "val/plastic/plastic152.jpg"}),
        frozenset({"train/glass/glass389.jpg", "train/plastic/plastic332.jpg"}),
    }
    found = {frozenset(f.files) for f in result.of("exact_duplicate")}
    conflicts = {frozenset(f.files) for f in result.of("label_conflict")}
    return {"known": 3, "found": len(known & found), "invented": len(found - known), "conflicts": len(conflicts)}


def exact_planted(tmp: Path) -> dict[str, Any]:
    """Byte copies and pixel-identical re-saves (PNG at two compression levels) planted into hymenoptera."""
    from PIL import Image
    from planted import copy_tree

    from graft.insight.doctor import doctor

    data = tmp / "exact"
    copy_tree(SHARED / "hymenoptera_data", data)
    rng = random.Random(0)
    files = rng.sample(images(data / "train") + images(data / "val"), 12)
    planted = []
    for i, f in enumerate(files):
        if i % 3 == 2:
            with Image.open(f) as im:
                a, b = data / "train" / f.parent.name / f"px{i}_a.png", data / "train" / f.parent.name / f"px{i}_b.png"
                im.save(a, compress_level=1)
                im.save(b, compress_level=9)
                planted.append({a.relative_to(data).as_posix(), b.relative_to(data).as_posix()})
        else:
            other = "bees" if f.parent.name == "ants" and i % 3 == 1 else f.parent.name  # every third: a conflict
            t = data / "train" / other / f"copy{i}_{f.name}"
            t.write_bytes(f.read_bytes())
            planted.append({t.relative_to(data).as_posix(), f.relative_to(data).as_posix()})
    result = doctor(data, out=tmp / "exact-out", html=False)
    found = [set(f.files) for f in result.of("exact_duplicate")]
    hits = sum(any(p <= g for g in found) for p in planted)
    invented = sum(not any(p <= g for p in planted) for g in found)
    return {"planted": len(planted), "found": hits, "invented": invented}


def build(n: int, dst: Path, seed: int = 0) -> None:
    """``n`` images in a train/val layout: hymenoptera's images, then edited copies of them."""
    src = images(SHARED / "hymenoptera_data")
    src = [p for p in src if p.suffix.lower() in (".jpg", ".jpeg")]
    rng = random.Random(seed)
    for i in range(n):
        f = src[i % len(src)]
        split = "val" if i % 5 == 0 else "train"
        t = dst / split / f.parent.name / f"{i:06d}.jpg"
        if i < len(src):
            t.parent.mkdir(parents=True, exist_ok=True)
            t.write_bytes(f.read_bytes())
        else:
            edited_copy(f, t, rng.choice(list(TRANSFORMS)), rng)


def startup(env: dict[str, str]) -> float:
    """Seconds of a process that imports what the doctor needs and does nothing (the best of 3)."""
    code = "import torch, graft.insight.doctor.run"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def timing(n: int, tmp: Path) -> dict[str, Any]:
    data = tmp / f"size{n}"
    if n == 397:
        data = SHARED / "hymenoptera_data"
    else:
        build(n, data)
    env = dict(os.environ, GRAFT_CACHE_DIR=str(tmp / f"cache{n}"), GRAFT_NO_PROGRESS="1")
    load = os.getloadavg()[0]
    args = ["doctor", str(data), "--out", str(tmp / f"out{n}")]
    cold, out = _graft(args, env)
    if out.returncode not in (0, 3):
        raise SystemExit(out.stderr[-2000:])
    cold_t = json.loads((tmp / f"out{n}/doctor.json").read_text())["timings"]
    warm, _ = _graft(args, env)
    report = json.loads((tmp / f"out{n}/doctor.json").read_text())
    return {
        "images": report["summary"]["images"],
        "load": round(load, 2),
        "startup_s": round(startup(env), 2),
        "cold_s": round(cold, 2),
        "cold_features_s": cold_t["features"],
        "cold_scan_s": cold_t["scan"],
        "warm_s": round(warm, 2),
        "warm_similarity_s": report["timings"]["similarity"],
        "warm_timings": report["timings"],
        "findings": report["summary"]["found"],
    }


def train_warning(tmp: Path) -> dict[str, bool]:
    env = dict(os.environ, GRAFT_CACHE_DIR=str(tmp / "cache-train"), GRAFT_NO_PROGRESS="1")
    said = {}
    for name, data in (("planted", tmp / "leak"), ("hymenoptera", SHARED / "hymenoptera_data")):
        _, out = _graft(["train", str(data), "--epochs", "1", "--out", str(tmp / "runs"), "--name", name], env)
        said[name] = "have a near-copy in train" in out.stdout
    return said


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="graft-doctor-bench-") as name:
        tmp = Path(name)
        os.environ["GRAFT_CACHE_DIR"] = str(tmp / "cache")
        figures["leakage"] = leakage(tmp)
        print(figures["leakage"], flush=True)
        for data in ("hymenoptera_data", "trashnet_half"):
            figures[f"labels_{data}"] = label_noise(data, tmp)
            print(data, figures[f"labels_{data}"], flush=True)
        figures["exact_planted"] = exact_planted(tmp)
        figures["exact_trashnet"] = exact_trashnet(tmp)
        print(figures["exact_planted"], figures["exact_trashnet"], flush=True)
        figures["train_warning"] = train_warning(tmp)
        print(figures["train_warning"], flush=True)
        figures["timing"] = []
        for n in [397, *map(int, args.sizes.split(","))]:
            figures["timing"].append(timing(n, tmp))
            print(figures["timing"][-1], flush=True)
    table = _table(figures)
    print(table)
    if args.record:
        from benchmarks.results import record

        lk, ht = figures["leakage"], figures["timing"][0]
        headline = (
            f"planted leakage recall {lk['recall']:.2f} / precision {lk['precision']:.2f}; label noise precision "
            f"{figures['labels_hymenoptera_data']['precision_at_n']:.2f} (hymenoptera), "
            f"{figures['labels_trashnet_half']['precision_at_n']:.2f} (trashnet_half); hymenoptera warm "
            f"{ht['warm_s']:.1f} s (start-up {ht['startup_s']:.1f} s: {ht['warm_s'] - ht['startup_s']:.1f} s beyond), "
            f"cold {ht['cold_s'] - ht['cold_features_s'] - ht['startup_s']:.1f} s beyond the features; load "
            f"{max(r['load'] for r in figures['timing']):.1f} at most"
        )
        record("graft doctor (mobilenet_v2, CPU)", table, {"graft doctor (bench_doctor)": headline})
    return 0


def _table(f: dict[str, Any]) -> str:
    lk = f["leakage"]
    lines = [
        "| check | figure |",
        "| --- | --- |",
        f"| planted leakage (15 val copies in train) | recall {lk['recall']:.3f}, precision {lk['precision']:.3f} |",
        f"| lowest similarity per transform | {lk['lowest_similarity_per_transform']} |",
    ]
    for name in ("hymenoptera_data", "trashnet_half"):
        r = f[f"labels_{name}"]
        lines.append(
            f"| label noise 10% {name} ({r['flipped']} flipped of {r['images']}) | precision at N "
            f"{r['precision_at_n']:.3f}, AUROC {r['auroc']:.4f} |"
        )
    ep, et = f["exact_planted"], f["exact_trashnet"]
    lines.append(f"| exact duplicates planted | {ep['found']} of {ep['planted']} found, {ep['invented']} invented |")
    lines.append(
        f"| trashnet_half known identical cross-class files | {et['found']} of 3 found, {et['invented']} invented, "
        f"{et['conflicts']} label conflicts |"
    )
    lines.append(
        f"| graft train warns | planted leak: {f['train_warning']['planted']}, hymenoptera: "
        f"{f['train_warning']['hymenoptera']} |"
    )
    lines += [
        "",
        'Start-up: `python -c "import torch, graft.insight.doctor.run"` (best of 3). Cold beyond = cold - start-up '
        "- features, and - scan too (the scan's validating decode feeds the feature pass). Warm beyond = warm - "
        "start-up, also without the similarity product (all pairs: quadratic; its share: of the steps doctor.json "
        "times) and per image.",
        "",
        "| images | load (1 min) | start-up s | cold s | features s | scan s | cold beyond features s | cold beyond "
        "scan + features s | warm s | warm beyond start-up s | similarity s (share) | warm beyond start-up and "
        "similarity, ms per image |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in f["timing"]:
        beyond = r["cold_s"] - r["cold_features_s"] - r["startup_s"]
        warm = r["warm_s"] - r["startup_s"]
        share = r["warm_similarity_s"] / sum(r["warm_timings"].values())  # of the doctor's own steps
        lines.append(
            f"| {r['images']} | {r['load']} | {r['startup_s']} | {r['cold_s']} | {r['cold_features_s']} | "
            f"{r['cold_scan_s']} | {beyond:.2f} | {beyond - r['cold_scan_s']:.2f} | {r['warm_s']} | {warm:.2f} | "
            f"{r['warm_similarity_s']} ({share:.0%}) | {1000 * (warm - r['warm_similarity_s']) / r['images']:.2f} |"
        )
    steps = list(f["timing"][0]["warm_timings"])
    lines += [
        "",
        "Warm steps (s, doctor.json's timings): " + ", ".join(steps),
        "",
        "| images | " + " | ".join(steps) + " |",
        "| ---: | " + " | ".join("---:" for _ in steps) + " |",
        *(
            f"| {r['images']} | " + " | ".join(str(r["warm_timings"].get(k, "")) for k in steps) + " |"
            for r in f["timing"]
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
