"""fp32 vs int8 on hymenoptera: post-training quantization of a freeze and a finetune run, and a QAT run.

    python -m benchmarks.bench_quantize [--data DIR] [--out DIR] [--freeze RUN] [--finetune RUN] [--qat RUN]
                                        [--calib N] [--activation-bits auto,7,8] [--remeasure] [--record]
    python -m benchmarks.bench_quantize --contention 0,1 [--rounds R] [--freeze RUN] [--record]

Runs not given are trained here (mobilenet_v2; freeze: defaults; finetune: --epochs 4; qat: the same schedule
with --mode qat). Each float run goes through ``graft quantize`` once per ``--activation-bits`` value (auto: the
CPU's choice; 7 or 8 forced; RUN-int8, RUN-int8-a7, RUN-int8-a8) unless that int8 run exists; a forced setting
the CPU's kernels get wrong (8 without VNNI) is a row that says so. ``graft predict --out``
over the int8 run's val images checks that it reproduces ``int8_val_acc``. ``--remeasure`` times the int8 runs
(and their float models) again, in this process, and rewrites the speed figures of their quantization.json: what
to do when the machine was busy while they were made. Prints (and with --record appends to RESULTS.md) one row per
int8 run. Run it alone: timings on a shared 2-core machine are meaningless (the 1-minute load average is printed).

``--contention N[,N...]`` measures only the freeze run's int8 program against graft's float path (the classifiers
``graft predict`` loads) while N competing processes (pure-Python busy loops, started before and killed after each
condition) use the CPU: images/s at batch 32 and 1, in turns (int8, float, int8, ...) for ``--rounds`` rounds, the
median and min-max per row and the int8/float ratio of the medians per condition.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def remeasure(int8_run: Path, float_run: Path | None) -> None:
    """Time ``int8_run`` and its float model again and rewrite the speed figures of its quantization.json."""
    import torch

    import graft
    from graft import int8 as Q
    from graft.core import atomic
    from graft.core import checkpoint as ckpt
    from graft.core.heads import HeadSpec
    from graft.inference import PROGRAM_FILE
    from graft.inference.float_classifier import FloatClassifier
    from graft.models.backbones import get_backbone
    from graft.models.model import build_for_inference

    int8 = graft.load(int8_run)
    if float_run is not None:
        fp32, fp32_file = graft.load(float_run, device="cpu"), (float_run / ckpt.MODEL_FILE).read_bytes()
    else:  # a QAT run has no float weights file: the same architecture (speed and size do not depend on values)
        meta = int8.meta
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.get("arch_kwargs", {}).items()}
        model = build_for_inference(
            get_backbone(meta["arch"]), len(meta["classes"]), HeadSpec.from_dict(meta["head"]), kwargs
        )
        fp32, fp32_file = FloatClassifier(model.eval(), meta, torch.device("cpu"), int8_run), Q.float_file(model)
    path = int8_run / Q.QUANT_FILE
    old = json.loads(path.read_text())
    new = Q.measure(
        fp32, int8, old["fp32_val_acc"], old["int8_val_acc"], fp32_file, (int8_run / PROGRAM_FILE).read_bytes()
    )
    if "fp32_bytes" in old and float_run is None:
        new["fp32_bytes"], new["fp32_deflated_bytes"] = old["fp32_bytes"], old["fp32_deflated_bytes"]
    atomic.atomic_write_json(path, old | new)
    print(f"remeasured {int8_run}: {Q.QuantizeResult(int8_run, old | new).summary()}", flush=True)


BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def competitors(n: int) -> Iterator[None]:
    """``n`` CPU-bound processes running for the duration of the block; killed however it is left."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP]))
        time.sleep(0.5)  # started and spinning before anything is timed
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def in_turns(runners: dict[str, Callable[[Any], Any]], batch: Any, rounds: int, calls: int) -> dict[str, list[float]]:
    """images/s of each ``calls`` calls per runner, the runners taking turns for ``rounds`` rounds (a passing burst
    of load then hits all of them, not one)."""
    for run in runners.values():
        run(batch)  # warm-up: compiles what is compiled lazily
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(calls):
                start = time.perf_counter()
                run(batch)
                rates[name].append(len(batch) / (time.perf_counter() - start))
    return rates


def contention(int8_run: Path, float_run: Path, conditions: list[int], rounds: int) -> str:
    """The table of ``--contention``: int8 and float images/s per condition and batch size."""
    import torch

    import graft

    fp32 = graft.load(float_run, device="cpu")
    runners = {"int8": graft.load(int8_run).logits, "float": fp32.logits}
    size = fp32.preprocess.input_size
    torch.manual_seed(0)
    images = torch.randn(32, 3, size, size)
    lines = [
        "| competitors | batch | runner | median img/s | min | max | int8/float | load before |",
        "|" + " --- |" * 8,
    ]
    for n in conditions:
        for batch, calls in ((32, 3), (1, 10)):
            load = f"{os.getloadavg()[0]:.2f}"
            with competitors(n):
                rates = in_turns(runners, images[:batch], rounds, calls)
            medians = {name: statistics.median(r) for name, r in rates.items()}
            for name, r in rates.items():
                ratio = f"{medians['int8'] / medians['float']:.2f}x" if name == "int8" else ""
                lines.append(
                    f"| {n} | {batch} | {name} | {medians[name]:.1f} | {min(r):.1f} | {max(r):.1f} | {ratio} | {load} |"
                )
            print(lines[-2], lines[-1], sep="\n", flush=True)
    return "\n".join(lines) + (
        f"\n\nmobilenet_v2 freeze run on hymenoptera, its int8 program (graft quantize, graft.load) against graft's "
        f"float predict path (graft.load, CPU), random input, {rounds} rounds in turns ({torch.get_num_threads()} "
        "torch threads). 'competitors': pure-Python busy-loop processes running while measured. 'load before': "
        "the 1-minute load average before the condition started (other work on the machine distorts the figures)."
    )


def quantized(run: Path, bits: str, calib: int) -> Path | None:
    """``run``'s int8 run for ``--activation-bits bits`` (made by ``graft quantize`` unless it exists); None when
    the CPU's kernels get that setting wrong (the error line printed says why)."""
    int8_run = run.parent / (f"{run.name}-int8" if bits == "auto" else f"{run.name}-int8-a{bits}")
    if not (int8_run / "quantization.json").exists():
        try:
            sh([*GRAFT, "quantize", str(run), "--calib", str(calib), "--activation-bits", bits,
                "--name", int8_run.name, "--exist-ok"])  # fmt: skip
        except subprocess.CalledProcessError:
            return None
    return int8_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hymenoptera_data")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-quantize")
    parser.add_argument("--freeze", type=Path)
    parser.add_argument("--finetune", type=Path)
    parser.add_argument("--qat", type=Path)
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--activation-bits", default="auto", help="comma-separated auto, 7, 8: one PTQ run each")
    parser.add_argument("--remeasure", action="store_true")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--contention", help="comma-separated numbers of competing processes, e.g. 0,1")
    parser.add_argument("--rounds", type=int, default=5, help="--contention: rounds of turns per condition")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    freeze = args.freeze or train(args.data, args.out, "freeze", "--mode", "freeze")
    if args.contention is not None:
        int8_run = quantized(freeze, "auto", args.calib)
        assert int8_run is not None, "graft quantize failed with this CPU's own setting"
        body = contention(int8_run, freeze, [int(n) for n in args.contention.split(",")], args.rounds)
        print(body)
        if args.record:
            from benchmarks.results import record

            record("Int8 vs float under CPU contention (busy-loop competitors)", body)
        return
    finetune = args.finetune or train(args.data, args.out, "finetune", "--mode", "finetune", "--epochs", "4")
    qat = args.qat or train(args.data, args.out, "qat", "--mode", "qat", "--epochs", "4", "--calib", str(args.calib))
    int8_runs, failed = [], []
    for run in (freeze, finetune):
        for bits in args.activation_bits.split(","):
            label = f"PTQ of {run.name}" + ("" if bits == "auto" else f", --activation-bits {bits}")
            int8_run = quantized(run, bits, args.calib)
            if int8_run is None:  # e.g. 8 bits without VNNI
                failed.append(label)
                continue
            int8_runs.append((label, int8_run, run))
    int8_runs.append(("QAT", qat, None))
    if args.remeasure:
        for _, int8_run, float_run in int8_runs:
            remeasure(int8_run, float_run)
    header = (
        "| run | act bits | fp32 val acc | int8 val acc | predict acc | fp32 MB | int8 MB | fp32/int8 size "
        "| fp32 eager img/s | fp32 graft img/s | int8 img/s | int8/fp32 eager | int8/fp32 graft | fp32 ms (b1) "
        "| int8 ms (b1) | load |\n|" + " --- |" * 16
    )
    lines = [header]
    for label, run, _ in int8_runs:
        q = json.loads((run / "quantization.json").read_text())
        acc = predict_accuracy(run, args.out)
        bits = q["quantization"].get("activation_bits", "?")
        lines.append(
            f"| {label} | {bits} | {q['fp32_val_acc']:.4f} | {q['int8_val_acc']:.4f} | {acc:.4f} "
            f"| {q['fp32_bytes'] / 1e6:.2f} | {q['int8_bytes'] / 1e6:.2f} | {q['fp32_bytes'] / q['int8_bytes']:.2f}x "
            f"| {q['fp32_images_per_s']:.1f} | {q['fp32_graft_images_per_s']:.1f} | {q['int8_images_per_s']:.1f} "
            f"| {q['int8_images_per_s'] / q['fp32_images_per_s']:.2f}x "
            f"| {q['int8_images_per_s'] / q['fp32_graft_images_per_s']:.2f}x | {q['fp32_latency_ms']:.1f} "
            f"| {q['int8_latency_ms']:.1f} | {q.get('load_average_1min')} |"
        )
    lines += [f"| {label} | failed: the compiled kernels disagree with the reference |" + " |" * 14 for label in failed]
    body = "\n".join(lines) + (
        "\n\nmobilenet_v2 (IMAGENET1K_V1) on hymenoptera (244 train / 153 val), CPU, 2 threads, batch 32 "
        f"(latency: batch 1), {args.calib} calibration images (activation ranges: 99.99th percentile), torchao PT2E "
        "X86InductorQuantizer + torch.compile "
        "(inductor, freezing). 'fp32 eager' is the float model as the tutorial runs it (the issue's reference); "
        "'fp32 graft' is graft's float predict path (BatchNorm folded, ONNX Runtime). 'predict acc' is "
        "`graft predict` over the val images of the int8 run. 'load' is the 1-minute load average when timed."
    )
    print(body)
    if args.record:
        from benchmarks.results import record

        record("Int8: fp32 vs int8 (graft quantize, --mode qat)", body)


if __name__ == "__main__":
    main()
