"""Classify images with a graft ONNX export, without graft or torch: onnxruntime, numpy and Pillow only.

    python predict.py IMAGE... [--top-k 5] [--json] [--model model.onnx]

``graft export RUN --format onnx --int8`` copies this file into the export folder as ``predict.py``. It reads
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
import onnxruntime as ort
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


def predict(model: Path, paths: list[str], top_k: int) -> list[dict]:
    info = json.loads(Path(str(model) + ".json").read_text(encoding="utf-8"))
    p, classes = info["preprocess"], info["classes"]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
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
        (logits,) = session.run([info["output"]["name"]], {info["input"]["name"]: np.stack(arrays)})
        probs = iter(softmax(logits.astype(np.float64)))
        for r in results[-len(group) :]:
            if "error" not in r:
                row = next(probs)
                order = np.argsort(-row, kind="stable")[:top_k]
                r["predictions"] = [{"label": classes[i], "probability": float(row[i])} for i in order]
    return results


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Classify images with a graft ONNX export (no torch needed).")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--model", type=Path, default=here / "model.onnx", help="the ONNX file (its .json beside)")
    args = parser.parse_args(argv)
    results = predict(args.model, args.images, max(1, args.top_k))
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
