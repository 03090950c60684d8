"""Classify images with a graft export, without graft or torch: the model's runtime, numpy and Pillow only.

    python predict.py IMAGE... [--top-k 5] [--json] [--model model.onnx]

Every folder export of ``graft export`` (``--int8``, ``--format openvino``, ``--format tflite``) copies this file
into its folder as ``predict.py``; ``requirements.txt`` beside it names the one runtime it needs. The runtime
follows the model file: ``.onnx`` runs in ONNX Runtime, ``.xml`` (with its ``.bin``) in OpenVINO, ``.tflite`` in
the LiteRT interpreter (``ai-edge-litert``); without ``--model`` it is the one model file in this folder. It reads
the class names and the preprocessing from ``<model>.json`` (the sidecar graft writes next to the model) and
reproduces graft's own steps: decode (JPEG drafts at the resize size, EXIF orientation, first frame, images more
than 16 times longer than wide cropped to their centre, transparency composited over white, 16-bit scaled to
8-bit), resize the shorter side with antialiasing, centre crop, scale to [0, 1], normalize, NCHW float32.
Pillow's resize and torchvision's differ by a grey level here and there, so probabilities match ``graft
predict`` to about 1e-3, not bit for bit. It prints one line per image, ``PATH  LABEL PROB  LABEL PROB ...``,
like ``graft predict``; an unreadable file prints ``PATH  error: REASON`` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Longest side / shortest side kept; a longer image is cropped to its centre (as graft does).
MAX_ASPECT = 16
BATCH = 16


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha composited over white; 16-bit and float data scaled, not clipped."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im).astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
            a = a / 257.0
        elif mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif lo < 0 or hi > 255:
            a = (a - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str, draft: int) -> Image.Image:
    with Image.open(path) as im:
        if im.format in ("JPEG", "MPO"):
            im.draft("RGB", (draft, draft))
        im.load()
        try:
            frame = ImageOps.exif_transpose(im)
        except Exception:  # a malformed EXIF block: use the image as stored
            frame = im.copy()
    w, h = frame.size
    if w > MAX_ASPECT * h:
        left = (w - MAX_ASPECT * h) // 2
        frame = frame.crop((left, 0, left + MAX_ASPECT * h, h))
    elif h > MAX_ASPECT * w:
        top = (h - MAX_ASPECT * w) // 2
        frame = frame.crop((0, top, w, top + MAX_ASPECT * w))
    return to_rgb(frame)


def preprocess(im: Image.Image, p: dict) -> np.ndarray:
    """RGB image -> float32 (3, S, S): shorter side to ``resize_size``, centre crop, scale, normalize."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = p["resize_size"], int(p["resize_size"] * long / short)  # torchvision's rounding
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[p["interpolation"]]
    im = im.resize(size, resample)
    s = p["input_size"]
    top, left = round((im.height - s) / 2.0), round((im.width - s) / 2.0)  # torchvision's centre (round half even)
    x = np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.float32) / 255.0
    x = (x - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def onnxruntime_runner(model: Path, info: dict):
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return lambda x: session.run([info["output"]["name"]], {info["input"]["name"]: x})[0]


def openvino_runner(model: Path, info: dict):
    # OpenVINO reports each import to Google Analytics unless openvino_telemetry is missing: graft's script does not
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino as ov

    # f32: OpenVINO would otherwise run float models in bf16 on CPUs that have it (graft verified them in f32)
    compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: np.asarray(compiled(x)[0])


def litert_runner(model: Path, info: dict):
    import os

    from ai_edge_litert.interpreter import Interpreter

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    interpreter = Interpreter(model_path=str(model), num_threads=threads)  # the default is one thread
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        # the interpreter's tensors have a fixed batch size: one image at a time
        rows = []
        for image in x:
            interpreter.set_tensor(inp["index"], _quantized(image[None], inp))
            interpreter.invoke()
            rows.append(_dequantized(interpreter.get_tensor(out["index"]), out))
        return np.concatenate(rows)

    return run


def _quantized(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input -> the tensor's dtype (an integer input tensor carries its scale and zero point)."""
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantized(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


RUNTIMES = {".onnx": onnxruntime_runner, ".xml": openvino_runner, ".tflite": litert_runner}


def find_model(folder: Path) -> Path:
    """The one model file in ``folder`` (model.onnx, model.xml or model.tflite)."""
    found = [folder / f"model{suffix}" for suffix in RUNTIMES if (folder / f"model{suffix}.json").is_file()]
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise SystemExit(f"error: name the model with --model: {folder} holds {names}")
    return found[0]


def predict(model: Path, paths: list[str], top_k: int) -> list[dict]:
    info = json.loads(Path(str(model) + ".json").read_text(encoding="utf-8"))
    p, classes = info["preprocess"], info["classes"]
    if model.suffix not in RUNTIMES:
        raise SystemExit(f"error: {model} is not a model this script runs (.onnx, .xml or .tflite)")
    run = RUNTIMES[model.suffix](model, info)
    results: list[dict] = []
    for start in range(0, len(paths), BATCH):
        group, arrays = paths[start : start + BATCH], []
        for path in group:
            try:
                arrays.append(preprocess(load_rgb(path, p["resize_size"]), p))
                results.append({"path": path})
            except Exception as e:  # one unreadable file must not stop the others
                results.append({"path": path, "error": str(e) or type(e).__name__})
        if not arrays:
            continue
        logits = np.asarray(run(np.stack(arrays)), dtype=np.float64)
        probs = iter(softmax(logits))
        for r in results[-len(group) :]:
            if "error" not in r:
                row = next(probs)
                order = np.argsort(-row, kind="stable")[:top_k]
                r["predictions"] = [{"label": classes[i], "probability": float(row[i])} for i in order]
    return results


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Classify images with a graft export (no torch needed).")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--model", type=Path, help="the model file, its .json beside (default: the one model in this folder)"
    )
    args = parser.parse_args(argv)
    results = predict(args.model or find_model(here), args.images, max(1, args.top_k))
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    for r in results if not args.json else []:
        if "error" in r:
            print(f"{r['path']}  error: {r['error']}")
        else:
            print(f"{r['path']}  " + "  ".join(f"{q['label']} {q['probability']:.3f}" for q in r["predictions"]))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
