"""``graft predict VIDEO --plot``: a strip of a video's sampled frames, each captioned with its time and label.

Drawn with Pillow alone (no plotting extra needed): a grid of at most a dozen frames, spread evenly over the video
(:class:`graft.inference.video.Keeper` chooses them), four to a row.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft.core.atomic import atomic_write_bytes

#: pixels of one frame's box, and of its two caption lines
CELL = 224
CAPTION = 40
COLUMNS = 4


def frame_strip(results: Sequence[Any], out: str | Path, *, title: str | None = None) -> Path:
    """Draw ``results`` (:class:`graft.inference.video.FrameResult` carrying a thumbnail in ``image``) into one
    PNG at ``out``: each frame fitted into a square box, captioned ``frame N  t=T s`` and its top label with
    the probability (a multi-label run: the labels over their thresholds). Returns ``out``."""
    from PIL import Image, ImageDraw, ImageFont

    out = Path(out)
    cols = max(1, min(COLUMNS, len(results)))
    rows = max(1, -(-len(results) // cols))
    header = 28 if title else 0
    sheet = Image.new("RGB", (cols * CELL, header + rows * (CELL + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    if title:
        draw.text((6, 6), title, fill="black", font=font)
    for k, r in enumerate(results):
        x, y = (k % cols) * CELL, header + (k // cols) * (CELL + CAPTION)
        thumb = r.image.copy()
        thumb.thumbnail((CELL - 8, CELL - 8))
        sheet.paste(thumb, (x + (CELL - thumb.width) // 2, y + CELL - 4 - thumb.height))  # on its caption
        label = "  ".join(f"{p.label} {p.probability:.2f}" for p in r.predictions[: 3 if r.multilabel else 1])
        draw.text((x + 6, y + CELL), f"frame {r.frame}  t={r.time_s:.2f}s", fill="dimgray", font=font)
        draw.text((x + 6, y + CELL + 18), label or "(no label over its threshold)", fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out
