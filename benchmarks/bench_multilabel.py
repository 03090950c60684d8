"""Multi-label figures on real photos: 2x2 mosaics of hymenoptera images, each labelled with the classes it holds.

A third of the mosaics hold ants only, a third bees only, a third both (two tiles of each, in seeded positions);
train mosaics are made of the train split's photos, val mosaics of the val split's, so no photo crosses over. The
set is written to a folder with ``labels.csv`` (``path,labels,split``; labels separated by a space), trained by
``graft train labels.csv --label-delim " "`` in frozen and (short) fine-tuning modes, and scored on val: mAP,
micro/macro F1 at the thresholds the run chose on val, and the share of both-class mosaics that ``graft predict``
gives both labels.

    python -m benchmarks.bench_multilabel [--train 240] [--val 90] [--size 224]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = (("ants",), ("bees",), ("ants", "bees"))


def _photos(root: Path, split: str) -> dict[str, list[Path]]:
    """The split's photos per class, sorted (hymenoptera's placeholder GIF left out: not a photo)."""
    out = {}
    for c in ("ants", "bees"):
        files = sorted(p for p in (root / split / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        out[c] = files
    return out


def _mosaic(tiles: list[Path], size: int) -> object:
    from PIL import Image

    half = size // 2
    canvas = Image.new("RGB", (2 * half, 2 * half))
    for k, path in enumerate(tiles):
        with Image.open(path) as im:
            tile = im.convert("RGB").resize((half, half), Image.BILINEAR)
        canvas.paste(tile, ((k % 2) * half, (k // 2) * half))
    return canvas


def build_mosaics(source: Path, out: Path, *, n_train: int, n_val: int, size: int = 224, seed: int = 0) -> Path:
    """Write ``n_train`` + ``n_val`` mosaics (``size`` pixels square) under ``out`` and ``out/labels.csv``; the
    kinds cycle ants, bees, both, so each is a third (rounded). Returns the table."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        photos = _photos(source, split)
        (out / split).mkdir(exist_ok=True)
        for i in range(n):
            kind = KINDS[i % 3]
            names = [kind[0]] * 4 if len(kind) == 1 else ["ants", "ants", "bees", "bees"]
            rng.shuffle(names)
            tiles = [rng.choice(photos[c]) for c in names]
            rel = f"{split}/{split}{i:04d}.jpg"
            _mosaic(tiles, size).save(out / rel, quality=90)
            rows.append([rel, " ".join(kind), split])
    table = out / "labels.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    return table


def both_label_share(run_dir: Path, table: Path) -> tuple[float, int]:
    """Share of val mosaics holding both classes that ``graft.load(run).predict`` gives both labels, and their count."""
    import graft

    clf = graft.load(run_dir, device="cpu")
    with open(table, newline="", encoding="utf-8") as f:
        both = [table.parent / r["path"] for r in csv.DictReader(f) if r["split"] == "val" and " " in r["labels"]]
    predictions = clf.predict(both)
    hits = sum({p.label for p in preds} == {"ants", "bees"} for preds in predictions)
    return hits / max(len(both), 1), len(both)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2] / "shared/data/hymenoptera_data"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--val", type=int, default=90)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = build_mosaics(args.data, Path(tmp) / "mosaics", n_train=args.train, n_val=args.val, size=args.size)
        runs = {
            "freeze (10 epochs)": ["--mode", "freeze", "--epochs", "10"],
            "finetune (2 head + 2 all epochs)": ["--mode", "finetune", "--head-epochs", "2", "--epochs", "2"],
        }
        for name, options in runs.items():
            run_dir = Path(tmp) / "runs" / name.split()[0]
            start = time.perf_counter()
            command = [sys.executable, "-m", "graft", "train", str(table), "--label-delim", " ", "--device", "cpu"]
            command += [*options, "--seed", str(args.seed), "--out", str(run_dir.parent), "--name", run_dir.name]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            share, n_both = both_label_share(run_dir, table)
            scores = (
                f"val mAP {m['best_val_map']:.4f}, micro F1 {m['val_micro_f1']:.4f}, "
                f"macro F1 {m['val_macro_f1']:.4f}, exact match {m['val_exact_match']:.4f}"
            )
            print(
                f"{name}: {args.train} train / {args.val} val mosaics at {args.size}px: {scores}; both labels "
                f"predicted on {share:.1%} of the {n_both} both-class mosaics; AP {m['val_ap']}; "
                f"thresholds {m['thresholds']}; {seconds:.1f}s (whole process)"
            )


if __name__ == "__main__":
    main()
