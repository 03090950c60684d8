"""Deploying without torch: ``graft export RUN --format onnx --int8`` of frozen runs, and the runtime's size.

    python -m benchmarks.bench_onnx_int8 [--data DIR] [--out DIR] [--archs mobilenet_v2,efficientnet_lite0]
                                         [--calib 128] [--no-venv] [--record]

For each architecture a frozen run is trained on the data (graft's defaults, seed 0, CPU) unless ``OUT/<arch>``
exists, then exported with ``--int8`` (ONNX Runtime static int8): val accuracy fp32 / int8 in ONNX Runtime, images/s
of both on the same batch (32) with the same threads, model MB (all from the folder's export.json). Then a real
runtime venv is made (``python -m venv`` + ``pip install onnxruntime numpy pillow``, from the package index), the
export's ``predict.py`` runs in it on one val image, and its size (``du``) is set beside the graft venv's. Run it
alone: the 1-minute load average is printed and recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRAFT = [sys.executable, "-m", "graft"]
RUNTIME = ("onnxruntime", "numpy", "pillow")


def sh(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(args), flush=True)
    return subprocess.run(args, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def export_figures(data: Path, out: Path, arch: str, calib: int) -> dict[str, object]:
    run = out / arch
    if not (run / "model.json").exists():
        sh([*GRAFT, "train", str(data), "--arch", arch, "--mode", "freeze", "--device", "cpu", "--out", str(out),
            "--name", arch, "--exist-ok"])  # fmt: skip
    start = time.perf_counter()
    done = sh([*GRAFT, "export", str(run), "--format", "onnx", "--int8", "--calib", str(calib), "--json"],
              stdout=subprocess.PIPE)  # fmt: skip
    figures = json.loads(done.stdout)
    figures["export_seconds"] = time.perf_counter() - start
    figures["folder"] = str(run / "onnx-int8")
    return figures


def du_bytes(path: Path) -> int:
    return int(
        subprocess.run(["du", "-sb", str(path.resolve())], capture_output=True, text=True, check=True).stdout.split()[0]
    )


def runtime_venv(folder: Path, image: Path) -> dict[str, object]:
    """A real torch-free venv: its size, its packages' versions, and predict.py's answer for one image."""
    with tempfile.TemporaryDirectory(prefix="graft-runtime-") as tmp:
        venv = Path(tmp) / "venv"
        base = getattr(sys, "_base_executable", sys.executable)
        sh([base, "-m", "venv", str(venv)])
        start = time.perf_counter()
        sh([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", *RUNTIME])
        seconds = time.perf_counter() - start
        line = sh([str(venv / "bin/python"), str(folder / "predict.py"), str(image), "--top-k", "1"],
                  stdout=subprocess.PIPE).stdout.strip()  # fmt: skip
        no_torch = subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True).returncode
        freeze = sh([str(venv / "bin/python"), "-m", "pip", "freeze"], stdout=subprocess.PIPE).stdout.split()
        return {
            "bytes": du_bytes(venv),
            "install_seconds": seconds,
            "predict_line": line,
            "torch_importable": no_torch == 0,
            "packages": [p for p in freeze if p.split("==")[0].lower() in RUNTIME],
        }


def table(rows: dict[str, dict[str, object]]) -> str:
    lines = [
        "| model | fp32 val acc | int8 val acc | top-1 agreement | fp32 img/s | int8 img/s | int8/fp32 | fp32 MB "
        "| int8 MB | calibration | export s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arch, f in rows.items():
        lines.append(
            f"| {arch} | {f['fp32_val_acc']:.4f} | {f['int8_val_acc']:.4f} | {f['top1_agreement']:.4f} "
            f"| {f['fp32_images_per_s']:.1f} | {f['int8_images_per_s']:.1f} | {f['speedup']:.2f}x "
            f"| {f['fp32_bytes'] / 1e6:.2f} | {f['int8_bytes'] / 1e6:.2f} | {f['calibration_images']} images "
            f"| {f['export_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/hymenoptera_data")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "graft-bench-onnx-int8")
    ap.add_argument("--archs", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--no-venv", action="store_true", help="skip the runtime venv (it needs the package index)")
    ap.add_argument("--record", action="store_true", help="append the figures to benchmarks/RESULTS.md")
    args = ap.parse_args()
    os.environ.setdefault("GRAFT_NO_PROGRESS", "1")
    load_before = os.getloadavg()[0]
    rows = {arch: export_figures(args.data, args.out, arch, args.calib) for arch in args.archs.split(",")}
    body = table(rows)
    print(body)
    timing = next(iter(rows.values()))["timing"]
    loads = ", ".join(f"{f['timing']['load_avg_1m']:.1f}" for f in rows.values())
    notes = [
        f"Batch {timing['batch_size']}, {timing['threads']} ONNX Runtime threads for both models; 1-minute load "
        f"average {load_before:.1f} before, {loads} while timing (machine shared with other jobs)."
    ]
    headline = "; ".join(
        f"{a}: val acc {f['fp32_val_acc']:.4f} -> {f['int8_val_acc']:.4f}, {f['int8_images_per_s']:.0f} vs "
        f"{f['fp32_images_per_s']:.0f} images/s, {f['fp32_bytes'] / 1e6:.1f} -> {f['int8_bytes'] / 1e6:.1f} MB"
        for a, f in rows.items()
    )
    if not args.no_venv:
        image = sorted((args.data / "val/bees").glob("*.jpg"))[0]
        venv = runtime_venv(Path(str(next(iter(rows.values()))["folder"])), image)
        graft_venv = du_bytes(Path(sys.prefix))
        notes.append(
            f"Runtime venv (`python -m venv` + `pip install {' '.join(RUNTIME)}`: {', '.join(venv['packages'])}): "
            f"{venv['bytes'] / 2**20:.0f} MiB, installed in {venv['install_seconds']:.0f} s, `import torch` "
            f"{'works (!)' if venv['torch_importable'] else 'fails'}; its predict.py: `{venv['predict_line']}`. "
            f"graft's venv ({sys.prefix}): {graft_venv / 2**30:.2f} GiB, "
            f"{graft_venv / venv['bytes']:.0f}x the runtime's."
        )
        headline += f"; torch-free runtime venv {venv['bytes'] / 2**20:.0f} MiB vs graft's {graft_venv / 2**30:.1f} GiB"
    print("\n".join(notes))
    if args.record:
        from benchmarks.results import record

        record(
            "ONNX Runtime int8 export, deployed without torch (bench_onnx_int8)",
            body + "\n\n" + "\n\n".join(notes),
            {"ONNX int8 export (bench_onnx_int8)": headline},
        )


if __name__ == "__main__":
    main()
