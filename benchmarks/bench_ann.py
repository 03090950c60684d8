"""Approximate neighbours against exact ones on real features: recall and time of the doctor's similarity survey.

The features are those ``graft doctor`` computes (mobilenet_v2, view 0) of the first ``--images`` images of the
``bench_scale`` order (:mod:`benchmarks.scale_images`), extracted once and kept as ``survey-<N>.npz`` in the
cache folder with the scan's perceptual hashes. Then, at each ``--sizes`` (the first rows), ``similarity.survey``
runs exact (the blocked product) and approximate (:mod:`graft.features.ann`), and the table gives both times and
the approximate answers' recall of the exact ones: the k nearest neighbours, the leak searches' nearest row, the
outliers' uncentred neighbours, and the pairs the doctor proposes (``near_pairs`` and ``leaks``), which are what
the copy check sees:

    python -m benchmarks.bench_ann [--images 16000] [--sizes 4000,16000] [--cache DIR] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import scale_images

ROOT = Path(__file__).resolve().parents[1]


def features(n: int, cache: Path) -> Path:
    """``survey-<n>.npz`` (features, phash, phash_flip, n_train) of the first ``n`` images, made once."""
    out = cache / f"survey-{n}.npz"
    if out.exists():
        return out
    scale_images.generate(n, cache, workers=2)
    data = scale_images.subset(n, cache)
    os.environ.setdefault("GRAFT_OFFLINE", "1")
    os.environ.setdefault("GRAFT_CACHE_DIR", tempfile.mkdtemp(prefix="bench-ann-"))
    from graft.core.config.insight import DoctorConfig
    from graft.insight.doctor import run

    cfg = DoctorConfig(data=data, device="cpu")
    ds, feats, preprocess = run.scan_and_features(cfg, lambda name: None)
    measures = run._measures(ds, ds.train + ds.val, preprocess.resize_size)
    np.savez(
        out,
        features=feats.numpy(),
        phash=np.array([m["phash"] for m in measures]),
        phash_flip=np.array([m["phash_flip"] for m in measures]),
        n_train=len(ds.train),
    )
    return out


def _recall(exact: np.ndarray, approx: np.ndarray) -> float:
    """Share of each row's exact neighbours (columns of ``exact``) that ``approx``'s row holds too."""
    if exact.size == 0:
        return 1.0
    hit = (exact[:, :, None] == approx[:, None, :]).any(2)
    return float(hit.mean())


def _pairs(p: object) -> set[tuple[int, int]]:
    return set(zip(p.a.tolist(), p.b.tolist(), strict=True))  # type: ignore[attr-defined]


def compare(npz: Path, n: int) -> dict[str, object]:
    """Exact and approximate survey of the first ``n`` rows: times and recalls."""
    import torch

    from graft.features import ann
    from graft.features import similarity as sim
    from graft.insight.doctor import checks

    d = np.load(npz)
    total, all_train = len(d["features"]), int(d["n_train"])
    n_train = round(n * all_train / total)  # the same share of train rows, train first as the scan gives them
    rows = np.r_[np.arange(n_train), all_train + np.arange(n - n_train)]
    feats = torch.from_numpy(d["features"][rows])
    hashes = sim.Hashes.of(d["phash"][rows].tolist(), d["phash_flip"][rows].tolist())
    out: dict[str, object] = {"images": n}
    found = {}
    for name, limit in (("exact", n + 1), ("approx", 0)):
        t0 = time.perf_counter()
        found[name] = sim.survey(
            feats, checks.K, hashes=hashes, n_train=n_train, raw_k=checks.OUTLIER_K, exact_up_to=limit
        )
        out[f"{name}_s"] = round(time.perf_counter() - t0, 2)
    e, a = found["exact"], found["approx"]
    out["knn_recall"] = round(_recall(e.found.index, a.found.index), 4)
    out["nearest_recall"] = round(_recall(e.found.index[:, :1], a.found.index[:, :1]), 4)
    out["raw_max_err"] = round(float(np.abs(e.raw_sims - a.raw_sims).max()), 4)
    near_e, near_a = _pairs(sim.near_pairs(e.found)), _pairs(sim.near_pairs(a.found))
    leak_e, leak_a = _pairs(e.leaks), _pairs(a.leaks)
    out["proposed"] = len(near_e) + len(leak_e)
    out["proposed_recall"] = round((len(near_e & near_a) + len(leak_e & leak_a)) / max(1, len(near_e) + len(leak_e)), 4)
    out["proposed_extra"] = len(near_a - near_e) + len(leak_a - leak_e)
    out["hash_matches_same"] = bool(len(e.found.matches.query) == len(a.found.matches.query))
    out["threshold"] = ann.EXACT_UP_TO
    return out


COLUMNS = (
    "images",
    "exact_s",
    "approx_s",
    "knn_recall",
    "nearest_recall",
    "raw_max_err",
    "proposed",
    "proposed_recall",
    "proposed_extra",
    "hash_matches_same",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16_000)
    parser.add_argument("--sizes", default="4000,16000")
    parser.add_argument("--cache", type=Path, default=scale_images.CACHE)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    npz = features(args.images, args.cache)
    rows = [compare(npz, int(s)) for s in args.sizes.split(",")]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.record:
        from benchmarks.results import record

        last = rows[-1]
        record(
            "Approximate neighbours (bench_ann)",
            f"{ann_params()}; doctor survey of bench_scale images (mobilenet_v2), 1-minute load "
            f"{os.getloadavg()[0]:.1f}.\n\n{table}",
            {
                "bench_ann": f"{last['images']} images: proposed-pair recall {last['proposed_recall']}, "
                f"kNN recall {last['knn_recall']}, survey {last['exact_s']} s exact, {last['approx_s']} s approximate"
            },
        )
    return 0


def ann_params() -> str:
    from graft.features import ann

    return f"inverted file: {ann.LIST_ROWS} rows a list, {ann.PROBES} probed, exact up to {ann.EXACT_UP_TO} rows"


if __name__ == "__main__":
    sys.exit(main())
