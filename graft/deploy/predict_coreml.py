"""Classify images with a graft Core ML export on macOS: coremltools, Pillow and numpy only.

    python predict_coreml.py IMAGE... [--top-k 5] [--json] [--model model.mlpackage]

``graft export RUN --format coreml`` copies this file into its folder. Core ML runs only on Apple platforms, so
graft checked the package's spec but never ran it; this is a minimal example of calling it. The model takes the
centre crop as its image input and normalizes it itself (mean and std are inside it); this script decodes the image
(EXIF orientation applied, transparency over white), resizes its shorter side to the sidecar's ``resize_size``
and crops the centre ``input_size`` square, as graft does. On iOS, Vision's ``VNCoreMLRequest`` with
``imageCropAndScaleOption = .centerCrop`` crops the same centre (scaled straight to ``input_size``, a little more
context than graft's resize-then-crop). It prints ``PATH  LABEL PROB  LABEL PROB ...`` per image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_crop(path: str, p: dict):
    """The image as graft feeds it: RGB, shorter side resized to resize_size, centre input_size crop."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im.convert("RGBA"))
        im = im.convert("RGB")
    w, h = im.size
    scale = p["resize_size"] / min(w, h)
    size = (p["resize_size"], int(h * scale)) if w <= h else (int(w * scale), p["resize_size"])
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[p["interpolation"]]
    im = im.resize(size, resample)
    s = p["input_size"]
    left, top = round((im.width - s) / 2.0), round((im.height - s) / 2.0)
    return im.crop((left, top, left + s, top + s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model", default=str(Path(__file__).with_name("model.mlpackage")))
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import coremltools as ct

    info = json.loads(Path(args.model + ".json").read_text())
    model = ct.models.MLModel(args.model)
    rows, status = [], 0
    for path in args.images:
        try:
            out = model.predict({info["input"]["name"]: load_crop(path, info["preprocess"])})
        except Exception as e:  # an unreadable image: report it and go on
            print(f"{path}  error: {e}")
            status = 1
            continue
        probs = sorted(out[info["output"]["probabilities"]].items(), key=lambda kv: -kv[1])[: args.top_k]
        rows.append({"path": path, "predictions": [{"label": k, "probability": float(v)} for k, v in probs]})
        if not args.json:
            print(f"{path}  " + "  ".join(f"{k} {v:.4f}" for k, v in probs))
    if args.json:
        print(json.dumps(rows, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
