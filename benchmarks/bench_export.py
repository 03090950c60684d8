"""Every format graft exports, side by side on this machine: ``graft export`` to each, then one table of val
accuracy, images/s at batch 1 and 32, latency and size, all measured in this one process on the same images.

    python -m benchmarks.bench_export [--data DIR] [--out DIR] [--archs mobilenet_v2,efficientnet_lite0]
                                      [--formats ...] [--calib 128] [--record]

For each architecture a frozen run is trained on the data (graft's defaults, CPU) unless ``OUT/<arch>`` exists,
then exported by the command line to every format (``graft export RUN --format F [--int8]``; an export already
in the run is reused). Each row runs the model in its own runtime, as its ``predict.py`` would (the runner
functions of :mod:`graft.deploy.standalone_predict`), except three that need torch: *torch eager* (the trained
network as PyTorch runs it by default: BatchNorm unfolded, no graft tricks), *graft float* (what ``graft predict``
runs) and *TorchScript*. Accuracy and top-1 agreement with graft's model come from the run's whole val split;
images/s is the median of repeated runs on one batch of 32 val images and on one image, one model at a time with
the machine's cores. Run it alone: the 1-minute load average is printed and recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GRAFT = [sys.executable, "-m", "graft"]

#: Row name -> (graft export arguments, folder or file in the run, model file in it).
EXPORTS: dict[str, tuple[list[str], str, str]] = {
    "ONNX": (["--format", "onnx"], "model.onnx", ""),
    "ONNX int8": (["--format", "onnx", "--int8"], "onnx-int8", "model.onnx"),
    "OpenVINO": (["--format", "openvino"], "openvino", "model.xml"),
    "OpenVINO int8": (["--format", "openvino", "--int8"], "openvino-int8", "model.xml"),
    "LiteRT": (["--format", "tflite"], "tflite", "model.tflite"),
    "LiteRT int8": (["--format", "tflite", "--int8"], "tflite-int8", "model.tflite"),
    "TorchScript": (["--format", "torchscript"], "model.torchscript.pt", ""),
    "Core ML": (["--format", "coreml"], "coreml", "model.mlpackage"),
    "Core ML int8": (["--format", "coreml", "--int8"], "coreml-int8", "model.mlpackage"),
}


def sh(args: list[str]) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(args[2:] if args[:2] == GRAFT[:2] else args), flush=True)
    return subprocess.run(args, text=True, capture_output=True, cwd=ROOT)


def train(data: Path, out: Path, arch: str) -> Path:
    run = out / arch
    if not (run / "model.json").exists():
        done = sh([*GRAFT, "train", str(data), "--arch", arch, "--mode", "freeze", "--device", "cpu", "--out",
                   str(out), "--name", arch, "--exist-ok"])  # fmt: skip
        if done.returncode:
            sys.exit(done.stderr)
    return run


def export_all(run: Path, rows: list[str], calib: int) -> dict[str, dict[str, Any]]:
    """Each format's export (made unless present): its model path, export seconds, or the error line."""
    made: dict[str, dict[str, Any]] = {}
    for row in rows:
        args, where, model = EXPORTS[row]
        path = run / where / model if model else run / where
        entry: dict[str, Any] = {"path": path}
        if not path.exists():
            start = time.perf_counter()
            done = sh([*GRAFT, "export", str(run), *args, *(["--calib", str(calib)] if "--int8" in args else [])])
            entry["export_s"] = time.perf_counter() - start
            if done.returncode:
                entry["error"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
        made[row] = entry
    return made


def size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    size = path.stat().st_size
    if path.suffix == ".xml":  # OpenVINO's weights live beside its graph
        size += path.with_suffix(".bin").stat().st_size
    return size


def runners(clf: Any, made: dict[str, dict[str, Any]]) -> dict[str, Callable[[Any], Any]]:
    """Row name -> float32 NCHW numpy batch -> logits, for every row that can run on this machine."""
    import torch

    from graft.deploy import standalone_predict as sp
    from graft.deploy.formats import torchscript_runner

    eager = clf.float_model().to("cpu").float().eval()

    def torch_eager(x: Any) -> Any:
        with torch.inference_mode():
            return eager(torch.from_numpy(x)).numpy()

    def graft_float(x: Any) -> Any:
        return clf.logits(torch.from_numpy(x)).numpy()

    out: dict[str, Callable[[Any], Any]] = {"torch eager": torch_eager, "graft float": graft_float}
    for row, entry in made.items():
        path = entry["path"]
        if "error" in entry or not path.exists():
            continue
        if path.suffix == ".pt":
            scripted = torchscript_runner(path.read_bytes())
            out[row] = (lambda run: lambda x: run(torch.from_numpy(x)))(scripted)
        elif path.suffix in sp.RUNTIMES:  # as the folder's predict.py runs it
            info = json.loads(path.with_name(path.name + ".json").read_text())
            out[row] = sp.RUNTIMES[path.suffix](path, info)
    return out


def measure(run: Path, made: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from graft.deploy.bundle import speeds, val_figures
    from graft.inference.loading import load

    clf = load(run, device="cpu")
    models = runners(clf, made)
    print(f"measuring {', '.join(models)} (1-minute load average {os.getloadavg()[0]:.1f})", flush=True)
    figures = val_figures(clf, run, models)
    batch = figures.pop("_timing_batch")
    timed = speeds(models, batch)
    rows = []
    for name in [*models, *(r for r in made if r not in models)]:
        entry = made.get(name, {})
        row: dict[str, Any] = {"row": name, "export_s": entry.get("export_s")}
        if name in models:
            row |= {
                "val_acc": figures[f"{name}_val_acc"],
                "agreement": figures[f"{name}_top1_agreement"],
                "ips32": timed[f"{name}_images_per_s"],
                "ips1": timed[f"{name}_images_per_s_batch1"],
            }
        else:
            row["note"] = entry.get("error") or "not run here: no Core ML runtime on Linux"
            record = entry["path"].parent / "export.json" if "error" not in entry else None
            if record is not None and record.is_file():  # graft's interpreter of the written program, at export
                f = json.loads(record.read_text())
                key = "int8" if f.get("int8") else "fp32"
                if f.get("interpreted"):
                    row |= {"val_acc": f[f"{key}_val_acc"], "agreement": f[f"{key}_top1_agreement"]}
                    row["note"] += "; accuracy from graft's interpreter of its ML program (PyTorch)"
        path = entry.get("path")
        row["mb"] = size_bytes(path) / 1e6 if path is not None and path.exists() else None
        rows.append(row)
    float_mb = next((r["mb"] for r in rows if r["row"] == "ONNX" and r["mb"]), None)
    if float_mb is None:
        float_mb = sum(p.numel() * 4 for p in clf.float_model().parameters()) / 1e6
    for r in rows:
        if r["row"] in ("torch eager", "graft float"):
            r["mb"] = float_mb  # the same float32 weights in PyTorch
    return rows


def table(arch: str, rows: list[dict[str, Any]]) -> str:
    def f(v: Any, spec: str) -> str:
        return "" if v is None else format(v, spec)

    base = {r["row"]: r for r in rows}
    lines = [
        f"**{arch}**",
        "",
        "| format | val acc | top-1 = graft's | img/s batch 32 | vs its float | img/s batch 1 | latency ms | MB "
        "| export s | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        fl = base.get(r["row"].removesuffix(" int8")) if r["row"].endswith(" int8") else None
        ratio = f"{r['ips32'] / fl['ips32']:.2f}x" if fl and fl.get("ips32") and r.get("ips32") else ""
        latency = f(1000 / r["ips1"], ".1f") if r.get("ips1") else ""
        lines.append(
            f"| {r['row']} | {f(r.get('val_acc'), '.4f')} | {f(r.get('agreement'), '.4f')} | "
            f"{f(r.get('ips32'), '.1f')} | {ratio} | {f(r.get('ips1'), '.1f')} | {latency} | {f(r['mb'], '.2f')} | "
            f"{f(r.get('export_s'), '.0f')} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/hymenoptera_data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/export")
    parser.add_argument("--archs", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--formats", default=",".join(EXPORTS), help="rows to export and measure")
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--record", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    rows_wanted = [r.strip() for r in args.formats.split(",") if r.strip()]
    tables, load_before = [], os.getloadavg()[0]
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        run = train(args.data, args.out, arch)
        made = export_all(run, rows_wanted, args.calib)
        tables.append(table(arch, measure(run, made)))
        print(tables[-1], flush=True)
    note = (
        f"Frozen runs on {args.data.name} (graft's defaults); {os.cpu_count()} cores; 1-minute load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after. 'vs its float': an int8 row's images/s at "
        "batch 32 over its float row in the same runtime. LiteRT's interpreter runs one image at a time (its "
        "tensors have a fixed batch size), so its batch-32 figure is 32 invocations."
    )
    print(note)
    if args.record:
        from benchmarks.results import record

        record("Every export format on this machine (bench_export)", "\n\n".join(tables) + "\n\n" + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
