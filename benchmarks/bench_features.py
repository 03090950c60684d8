"""Feature extraction at scale: time per image and peak memory over 1k, 4k and 16k images.

Each size runs in a fresh process (so peak RSS is that size's own) on copies of the hymenoptera images under new
names (hard links when the file system allows, so each is a distinct file to graft), with an empty feature cache.
One uncached warm-up batch runs before the timed extraction, so one-time set-up is not counted per image, and the
smallest size runs once untimed before the measured ones (page cache, see ``main``):

    python -m benchmarks.bench_features [--sizes 1000,4000,16000] [--data DIR] [--record]

Printed per size: images, scan seconds, extraction seconds, images/s, peak RSS. Linear growth means the
extraction time per image stays within 15% of the smallest size's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_copies(src: Path, dst: Path, n: int) -> None:
    """``n`` images under ``dst/<class>/`` cycling through the source images, each under a new name."""
    files = sorted(p for p in src.rglob("*.jp*g"))
    for i in range(n):
        f = files[i % len(files)]
        cls = f.parent.name
        target = dst / cls / f"{i:06d}_{f.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)


def child(data: Path) -> dict[str, float]:
    """Scan and extract features of every image in ``data`` (mobilenet_v2, CPU); report times and peak RSS."""
    import torch

    from graft.data import scan
    from graft.features import cached_features, extract_features
    from graft.models.backbones import get_backbone
    from graft.models.model import build_model

    t0 = time.perf_counter()
    ds = scan(data, val_split=0.2, seed=0)
    samples = ds.train + ds.val
    t1 = time.perf_counter()
    model, weights, info = build_model(get_backbone("mobilenet_v2"), len(ds.classes))
    key = {"arch": "mobilenet_v2", "weights_sha256": info.sha256, "device": "cpu"}
    # One uncached batch first: one-time costs (torch.fx import, oneDNN kernel set-up) are not per image.
    extract_features(model.body, samples[:32], weights.preprocess, device=torch.device("cpu"))
    t2 = time.perf_counter()
    feats, computed = cached_features(model.body, samples, weights.preprocess, key, device=torch.device("cpu"))
    t3 = time.perf_counter()
    assert computed == len(samples) and feats.shape[0] == len(samples)
    return {
        "images": len(samples),
        "scan_s": round(t1 - t0, 2),
        "extract_s": round(t3 - t2, 2),
        "images_per_s": round(len(samples) / (t3 - t2), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hymenoptera_data")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    rows = []
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        # The smallest size once, untimed, first: this machine's kernel reclaims idle file pages, and the first
        # process would otherwise also pay for reading the libraries and the images back from disk (the 1k run
        # measured 91 instead of 107-114 images/s that way), which would count against the smallest size only.
        for k, n in enumerate([sizes[0], *sizes]):
            data = Path(tmp) / f"data{n}"
            make_copies(args.data, data, n)
            env = dict(os.environ, GRAFT_CACHE_DIR=str(Path(tmp) / f"cache{k}"))  # always empty
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_features", "--child", str(data)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            if k:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
            shutil.rmtree(data)
    base = rows[0]["extract_s"] / rows[0]["images"]
    lines = [
        "| images | scan s | extraction s | images/s | s per 1k images vs smallest | peak RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = (r["extract_s"] / r["images"]) / base
        cells = [r["images"], r["scan_s"], r["extract_s"], r["images_per_s"], f"{ratio:.3f}", r["peak_rss_mb"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    table = "\n".join(lines)
    print(table)
    worst = max(abs((r["extract_s"] / r["images"]) / base - 1) for r in rows)
    print(f"largest deviation of time per image from the smallest size: {worst:.1%}")
    if args.record:
        from benchmarks.results import record

        rates = " / ".join(f"{r['images_per_s']}" for r in rows)
        sizes = " / ".join(f"{r['images'] // 1000}k" for r in rows)
        headline = (
            f"{sizes} images: {rates} images/s (time per image within {worst:.1%} of the smallest size); "
            f"peak RSS {rows[-1]['peak_rss_mb']} MB at the largest"
        )
        record(
            "Feature extraction at scale (mobilenet_v2, CPU, empty cache)",
            table,
            {"feature extraction at scale (bench_features)": headline},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
