"""fp32 vs int8 on hymenoptera: post-training quantization of a freeze and a finetune run, and a QAT run.

    python -m benchmarks.bench_quantize [--data DIR] [--out DIR] [--freeze RUN] [--finetune RUN] [--qat RUN] [--record]

Runs not given are trained here (mobilenet_v2; freeze: defaults; finetune: --head-epochs 3 --epochs 3; qat: the
same schedule with --mode qat). Each float run goes through ``graft quantize``; ``graft predict --out`` over the int8
run's val images checks that it reproduces ``int8_val_acc``. Prints (and with --record appends to RESULTS.md) one row
per int8 run: val accuracy, bytes, images/s at batch 32 (fp32 eager, fp32 as graft predicts, int8 compiled) and
batch-1 latency. Run it alone: timings on a shared 2-core machine are meaningless.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRAFT = [sys.executable, "-m", "graft"]


def sh(args: list[str]) -> None:
    print("$", " ".join(args[2:] if args[:2] == GRAFT[:2] else args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def train(data: Path, out: Path, name: str, *extra: str) -> Path:
    if not (out / name / "model.json").exists():
        sh([*GRAFT, "train", str(data), "--out", str(out), "--name", name, "--exist-ok", *extra])
    return out / name


def predict_accuracy(run: Path, out: Path) -> float:
    """Accuracy of ``graft predict --out`` over the run's val split (class = parent folder name)."""
    report = json.loads((run / "data_report.json").read_text())
    root = Path(report["root"])
    val = [root / rel for rel in report["split"]["val"]]
    folders = sorted({p.parent for p in val})
    csv_path = out / f"{run.name}-predict.csv"
    sh([*GRAFT, "predict", str(run), *map(str, folders), "--out", str(csv_path)])
    rows = list(csv.DictReader(csv_path.open()))
    wanted = {str(p) for p in val}
    rows = [r for r in rows if r["path"] in wanted]
    return sum(r["label"] == Path(r["path"]).parent.name for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hymenoptera_data")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-quantize")
    parser.add_argument("--freeze", type=Path)
    parser.add_argument("--finetune", type=Path)
    parser.add_argument("--qat", type=Path)
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    schedule = ["--head-epochs", "3", "--epochs", "3"]
    freeze = args.freeze or train(args.data, args.out, "freeze", "--mode", "freeze")
    finetune = args.finetune or train(args.data, args.out, "finetune", "--mode", "finetune", *schedule)
    qat = args.qat or train(args.data, args.out, "qat", "--mode", "qat", *schedule, "--calib", str(args.calib))
    int8_runs = []
    for run in (freeze, finetune):
        sh([*GRAFT, "quantize", str(run), "--calib", str(args.calib), "--exist-ok"])
        int8_runs.append((f"PTQ of {run.name}", run.parent / f"{run.name}-int8"))
    int8_runs.append(("QAT", qat))
    header = (
        "| run | fp32 val acc | int8 val acc | predict acc | fp32 MB | int8 MB | fp32 eager img/s | fp32 graft img/s "
        "| int8 img/s | int8/fp32 eager | fp32 ms (b1) | int8 ms (b1) |\n|" + " --- |" * 12
    )
    lines = [header]
    for label, run in int8_runs:
        q = json.loads((run / "quantization.json").read_text())
        acc = predict_accuracy(run, args.out)
        lines.append(
            f"| {label} | {q['fp32_val_acc']:.4f} | {q['int8_val_acc']:.4f} | {acc:.4f} | {q['fp32_bytes'] / 1e6:.2f} "
            f"| {q['int8_bytes'] / 1e6:.2f} | {q['fp32_images_per_s']:.1f} | {q['fp32_fused_images_per_s']:.1f} "
            f"| {q['int8_images_per_s']:.1f} | {q['int8_images_per_s'] / q['fp32_images_per_s']:.2f}x "
            f"| {q['fp32_latency_ms']:.1f} | {q['int8_latency_ms']:.1f} |"
        )
    body = "\n".join(lines) + (
        "\n\nmobilenet_v2 (IMAGENET1K_V1) on hymenoptera, CPU, batch 32 (latency: batch 1), "
        f"{args.calib} calibration images, torchao PT2E X86InductorQuantizer + torch.compile. "
        "'fp32 eager' is the float model as the tutorial runs it; 'fp32 graft' is graft's float predict path "
        "(BatchNorm folded, channels_last). 'predict acc' is `graft predict` over the val images of the int8 run."
    )
    print(body)
    if args.record:
        from benchmarks.results import record

        record("Int8: fp32 vs int8 (graft quantize, --mode qat)", body)


if __name__ == "__main__":
    main()
