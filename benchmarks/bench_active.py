"""Label efficiency of graft suggest's ranking: labels needed to reach 95% of the full train set's frozen accuracy.

    python -m benchmarks.bench_active [--datasets trashnet_half,hymenoptera_data] [--seeds 3] [--batch 20]
        [--strategies random,margin,...] [--record] [--plot PATH] [--cache DIR]

Features: mobilenet_v2's pretrained view-0 features of every train and val image, once per dataset, exactly as
``graft doctor`` and frozen training get them (``scan_and_features``); ``GRAFT_CACHE_DIR`` is a fresh temporary
folder unless ``--cache`` names one to reuse.

The head: a multinomial logistic regression on the labelled features (the linear layer that ``graft train --mode
freeze`` trains) with the doctor's loss (mean cross-entropy plus an L2 penalty of 2e-4 on the weights, as
``graft.insight.doctor.labels.fit_folds``), minimised by the doctor's L-BFGS (``labels.lbfgs``) in float64 to a
gradient of 1e-6, each round from the previous round's head. The doctor's own fit stops on float32 rounding: its
head then depends on the order of the rows, and that alone moved a strategy's labels-to-target by up to 0.3x of
random's; converged in float64 the head is the same whatever the order (equal val accuracy, weights within 1%).
Accuracy is on the val split.

Reference: the head fitted on every train image; the target is 95% of its val accuracy. Per seed: 2 labelled train
images per class (picked at random with the seed), the rest of train is the pool (its labels hidden, read from the
ground truth when picked). Each round fits the head, records (labelled count, val accuracy), ranks the pool with
``graft.insight.suggest.rank(probs, pool_feats, strategy=s, n=batch, labelled=labelled_feats, seed=seed+round)``
and labels the first ``batch``, until the pool is empty.

Reported per dataset and strategy: labels needed to first reach the target (the mean over seeds and each seed),
its ratio to random's mean, and the final accuracy; the best strategy per dataset (fewest labels, mean). The plot
(``--plot``, default benchmarks/out/active.png) draws val accuracy against labels, the mean over seeds, one panel per
dataset, with the target line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STRATEGIES = ("random", "margin", "entropy", "diverse")
#: Share of the full train set's accuracy that counts as reached.
TARGET = 0.95
#: Labelled train images per class at the start.
START_PER_CLASS = 2


@dataclass
class Data:
    """A dataset's train and val features and labels."""

    name: str
    classes: int
    x: np.ndarray
    y: np.ndarray
    xv: np.ndarray
    yv: np.ndarray


def load(name: str) -> Data:
    """The view-0 features of ``name``'s train and val images, as the doctor and frozen training compute them."""
    from graft.core.config.insight import DoctorConfig
    from graft.insight.doctor.run import scan_and_features

    ds, feats, _ = scan_and_features(DoctorConfig(data=SHARED / name), lambda _: None)
    f = feats.numpy().astype(np.float32)
    n = len(ds.train)
    y = np.array([s.label for s in ds.train], np.int64)
    yv = np.array([s.label for s in ds.val], np.int64)
    return Data(name, len(ds.classes), f[:n], y, f[n:], yv)


def start(y: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """``START_PER_CLASS`` train rows of each class, picked at random with ``seed``."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), START_PER_CLASS, replace=False) for c in range(classes)]
    return np.concatenate(picks)


def curve(d: Data, strategy: str, seed: int, batch: int) -> list[tuple[int, float]]:
    """(labelled count, val accuracy) after each round of labelling ``batch`` images ranked by ``strategy``."""
    from graft.insight.suggest import fit_head, rank

    labelled = start(d.y, d.classes, seed)
    pool = np.setdiff1d(np.arange(len(d.y)), labelled)
    out: list[tuple[int, float]] = []
    head = None
    for round_ in range(len(d.y)):
        head = fit_head(d.x[labelled], d.y[labelled], d.classes, head)
        out.append((len(labelled), head.accuracy(d.xv, d.yv)))
        if not len(pool):
            break
        order = rank(
            head.probs(d.x[pool]),
            d.x[pool],
            strategy=strategy,
            n=batch,
            labelled=d.x[labelled],
            seed=seed + round_,
        )
        picked = pool[order[:batch]]
        labelled = np.concatenate([labelled, picked])
        pool = np.setdiff1d(pool, picked)
    return out


def labels_needed(points: list[tuple[int, float]], target: float) -> int:
    """The first labelled count whose accuracy reaches ``target`` (the last round's count when none does)."""
    return next((n for n, acc in points if acc >= target - 1e-12), points[-1][0])


def measure(d: Data, seeds: int, batch: int, strategies: tuple[str, ...] = STRATEGIES) -> dict:
    """The reference accuracy, the target and each of ``strategies``' curves (one per seed) on ``d``."""
    from graft.insight.suggest import fit_head

    full = fit_head(d.x, d.y, d.classes).accuracy(d.xv, d.yv)
    curves = {s: [curve(d, s, seed, batch) for seed in range(seeds)] for s in strategies}
    return {"full": full, "target": TARGET * full, "curves": curves}


def table(results: dict[str, dict], batch: int, seeds: int) -> tuple[str, dict[str, str]]:
    """The markdown table and the best strategy per dataset ("name: strategy")."""
    lines = [
        f"Start: {START_PER_CLASS} labelled per class; batch {batch}; {seeds} seeds; target {TARGET:.0%} of the "
        "full train set's frozen val accuracy (linear head on mobilenet_v2 features).",
        "",
        "| dataset | full-train acc | target | strategy | labels to target (mean) | per seed | x random | final acc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    best: dict[str, str] = {}
    for name, r in results.items():
        needed = {s: [labels_needed(c, r["target"]) for c in cs] for s, cs in r["curves"].items()}
        base = float(np.mean(needed["random"]))
        for s, cs in r["curves"].items():
            mean = float(np.mean(needed[s]))
            final = float(np.mean([c[-1][1] for c in cs]))
            per_seed = ", ".join(str(v) for v in needed[s])
            lines.append(
                f"| {name} | {r['full']:.3f} | {r['target']:.3f} | {s} | {mean:.0f} | {per_seed} | "
                f"{mean / base:.2f} | {final:.3f} |"
            )
        best[name] = min(needed, key=lambda s: (float(np.mean(needed[s])), s != "random"))
    lines += ["", "Fewest labels (mean over seeds): " + "; ".join(f"{n}: {s}" for n, s in best.items()) + "."]
    return "\n".join(lines) + "\n", best


def headline(results: dict[str, dict], best: dict[str, str]) -> str:
    parts = []
    for name, r in results.items():
        mean = {s: np.mean([labels_needed(c, r["target"]) for c in cs]) for s, cs in r["curves"].items()}
        parts.append(
            f"{name}: diverse {mean['diverse']:.0f} vs random {mean['random']:.0f} labels to 95% "
            f"({mean['diverse'] / mean['random']:.2f}x), best {best[name]}"
        )
    return "; ".join(parts)


def plot(results: dict[str, dict], path: Path) -> None:
    """Val accuracy against labels (mean over seeds) per strategy, one panel per dataset, with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items(), strict=True):
        for s, cs in r["curves"].items():
            counts = [n for n, _ in cs[0]]
            ax.plot(counts, np.mean([[a for _, a in c] for c in cs], 0), label=s, lw=1.5)
        ax.axhline(r["target"], color="k", ls="--", lw=1, label=f"{TARGET:.0%} of full ({r['target']:.3f})")
        ax.set(title=name, xlabel="labelled train images", ylabel="val accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="trashnet_half,hymenoptera_data")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="a subset to measure (random, the baseline, always is)"
    )
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "out" / "active.png")
    parser.add_argument("--cache", type=Path, default=None, help="GRAFT_CACHE_DIR to reuse (default: a fresh one)")
    args = parser.parse_args()
    strategies = tuple(dict.fromkeys(["random", *args.strategies.split(",")]))
    from graft.insight.suggest import STRATEGIES as KNOWN

    if unknown := [s for s in strategies if s not in KNOWN]:
        parser.error(f"unknown strategy {', '.join(unknown)}: choose among {', '.join(KNOWN)}")
    if args.record and set(strategies) != set(STRATEGIES):
        parser.error("--record measures every strategy: leave --strategies out")
    with tempfile.TemporaryDirectory(prefix="bench_active_") as tmp:
        os.environ["GRAFT_CACHE_DIR"] = str(args.cache or tmp)
        from graft.core.device import one_thread

        began = time.perf_counter()
        results: dict[str, dict] = {}
        for name in args.datasets.split(","):
            t0 = time.perf_counter()
            d = load(name)
            t1 = time.perf_counter()
            with one_thread():  # thin products on a few thousand rows: a thread pool costs more than it saves
                results[name] = measure(d, args.seeds, args.batch, strategies)
            print(f"{name}: features {t1 - t0:.1f} s, curves {time.perf_counter() - t1:.1f} s", flush=True)
    text, best = table(results, args.batch, args.seeds)
    text += f"\nTotal {time.perf_counter() - began:.0f} s (features and every fit).\n"
    print(text)
    plot(results, args.plot)
    print(f"plot: {args.plot}")
    if args.record:
        from benchmarks.results import record

        record(
            "graft suggest: labels to 95% of full-train accuracy",
            text,
            {"suggest (bench_active)": headline(results, best)},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
