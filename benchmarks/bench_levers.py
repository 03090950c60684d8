"""Accuracy levers measured: class balance on an imbalanced hymenoptera (frozen runs on stored features, a few
seeds), and augmentation policies on short fine-tunes. Appends to benchmarks/RESULTS.md.

    python -m benchmarks.bench_levers imbalance [--seeds 3]
    python -m benchmarks.bench_levers augment [--data DIR ...] [--configs standard,trivialaugment,...]

The imbalanced set: hymenoptera's train/bees cut to a fifth (seeded choice, symbolic links in a temporary folder);
val unchanged (70 ants, 83 bees), so balanced accuracy and accuracy both mean something there.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from benchmarks.results import record

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
AUGMENT = {
    "standard": {},
    "trivialaugment": {"augment": "trivialaugment"},
    "mixup 0.2": {"mixup": 0.2},
    "cutmix 1.0": {"cutmix": 1.0},
    "random-erasing 0.25": {"random_erasing": 0.25},
}


def imbalanced_copy(
    src: Path, dst: Path, *, cut: str = "bees", keep: float = 0.2, seed: int = 0, splits: tuple[str, ...] = ("train",)
) -> Path:
    """``src`` (train/ + val/) as symbolic links, with ``<split>/<cut>`` reduced to ``keep`` of its files for each
    of ``splits``."""
    for split in ("train", "val"):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.is_file())
            if split in splits and cls.name == cut:
                files = sorted(random.Random(seed).sample(files, max(1, round(len(files) * keep))))
            (dst / split / cls.name).mkdir(parents=True, exist_ok=True)
            for f in files:
                os.symlink(f, dst / split / cls.name / f.name)
    return dst


def _wilson(acc: float, n: int) -> str:
    from graft.core.metrics import wilson_interval

    lo, hi = wilson_interval(round(acc * n), n)
    return f"{lo:.3f}-{hi:.3f}"


def imbalance(seeds: int, cut_val: bool) -> None:
    splits = ("train", "val") if cut_val else ("train",)
    with tempfile.TemporaryDirectory() as tmp:
        data = imbalanced_copy(SHARED / "hymenoptera_data", Path(tmp) / "hymenoptera_bees_fifth", splits=splits)
        n_bees = len(list((data / "train" / "bees").iterdir()))
        n_val_bees = len(list((data / "val" / "bees").iterdir()))
        rows = _balance_rows(data, seeds, Path(tmp))
    val = f"val cut alike: 70 ants, {n_val_bees} bees" if cut_val else "val unchanged: 70 ants, 83 bees"
    body = (
        f"hymenoptera with train/bees cut to a fifth ({n_bees} bees vs 123 ants in train; {val}), mobilenet_v2 "
        f"frozen, graft's defaults otherwise (10 epochs on stored features), mean of seeds 0-{seeds - 1}. "
        "Machine shared with other jobs.\n\n" + _BALANCE_HEADER + "\n".join(rows)
    )
    record(f"Class balance on an imbalanced hymenoptera (bench_levers imbalance{' --cut-val' * cut_val})", body)


_BALANCE_HEADER = (
    "| --balance | --select-by (chosen) | val acc | val balanced acc | balanced acc range |\n"
    "| --- | --- | --- | --- | --- |\n"
)


def natural(data: Path, seeds: int) -> None:
    """The balance options on a dataset as it is (its own imbalance in train and val)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = _balance_rows(data, seeds, Path(tmp))
    body = (
        f"{data.name} as it is, mobilenet_v2 frozen, graft's defaults otherwise (10 epochs on stored features), mean "
        f"of seeds 0-{seeds - 1}. Machine shared with other jobs.\n\n" + _BALANCE_HEADER + "\n".join(rows)
    )
    record(f"Class balance on {data.name} (bench_levers natural)", body)


def _balance_rows(data: Path, seeds: int, tmp: Path) -> list[str]:
    import graft

    rows = []
    for balance in ("none", "weights", "sampler"):
        for select in ("acc", "auto"):
            accs, bals = [], []
            for seed in range(seeds):
                run = graft.train(data, balance=balance, select_by=select, seed=seed, device="cpu",
                                  out=tmp / "runs", log=[])  # fmt: skip
                accs.append(run.metrics["best_val_acc"])
                bals.append(run.metrics["best_val_balanced_acc"])
                chosen = run.metrics["selected_by"]
            rows.append(
                f"| {balance} | {select} ({chosen}) | {sum(accs) / seeds:.4f} | {sum(bals) / seeds:.4f} | "
                f"{min(bals):.4f}-{max(bals):.4f} |"
            )
            print(rows[-1], flush=True)
    return rows


def augment(datasets: list[Path], configs: list[str], head_epochs: int, epochs: int) -> None:
    import graft

    rows = []
    for data in datasets:
        for name in configs:
            began = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                run = graft.train(data, mode="finetune", head_epochs=head_epochs, epochs=epochs, device="cpu",
                                  out=Path(tmp), log=[], **AUGMENT[name])  # fmt: skip
            m = run.metrics
            rows.append(
                f"| {data.name} | {name} | {m['best_val_acc']:.4f} | {_wilson(m['best_val_acc'], m['n_val'])} | "
                f"{m['best_val_balanced_acc']:.4f} | {m['best_epoch']} | {time.perf_counter() - began:.0f} s |"
            )
            print(rows[-1], flush=True)
    body = (
        f"mobilenet_v2 fine-tuned: --head-epochs {head_epochs} --epochs {epochs}, seed 0, graft's defaults otherwise; "
        "val accuracy with its Wilson 95% interval. Machine shared with other jobs (times are not comparable).\n\n"
        "| data | lever | val acc | 95% CI | val balanced acc | best epoch | time |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    )
    record("Augmentation levers on short fine-tunes (bench_levers augment)", body)


def views(datasets: list[Path], policies: list[str], k: int, seeds: int) -> None:
    """Frozen heads on stored features with ``k`` augmented views per training image, per ``--augment`` policy."""
    import graft

    rows = []
    for data in datasets:
        for policy in policies:
            began, runs = time.perf_counter(), []
            with tempfile.TemporaryDirectory() as tmp:
                for seed in range(seeds):
                    runs.append(graft.train(data, feature_views=k, augment=policy, seed=seed, device="cpu",
                                            out=Path(tmp), log=[]).metrics)  # fmt: skip
            acc = sum(m["best_val_acc"] for m in runs) / seeds
            bal = sum(m["best_val_balanced_acc"] for m in runs) / seeds
            rows.append(
                f"| {data.name} | {policy} | {acc:.4f} | {_wilson(acc, runs[0]['n_val'])} | {bal:.4f} | "
                f"{time.perf_counter() - began:.0f} s |"
            )
            print(rows[-1], flush=True)
    body = (
        f"mobilenet_v2 frozen, --feature-views {k} (the views drawn with each --augment policy), graft's defaults "
        f"otherwise, mean of seeds 0-{seeds - 1} (the views are the same for every seed: seeded by view); Wilson "
        "interval of the mean accuracy. Machine shared with other jobs (load ~10); times include the views' feature "
        "pass, computed once per policy.\n\n"
        "| data | --augment | val acc | 95% CI | val balanced acc | time |\n| --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
    )
    record(f"Augmentation policies on --feature-views {k} (bench_levers views)", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["imbalance", "natural", "augment", "views"])
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cut-val", action="store_true", help="imbalance: cut val's bees to a fifth as well")
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED / "hymenoptera_data"])
    parser.add_argument("--configs", default=",".join(AUGMENT))
    parser.add_argument("--head-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if args.what == "imbalance":
        imbalance(args.seeds, args.cut_val)
    elif args.what == "natural":
        for data in args.data:
            natural(data, args.seeds)
    elif args.what == "views":
        views(args.data, ["standard", "trivialaugment"], args.views, args.seeds)
    else:
        augment(args.data, args.configs.split(","), args.head_epochs, args.epochs)


if __name__ == "__main__":
    main()
