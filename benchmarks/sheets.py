"""Contact sheets: pairs of images side by side, each with a caption, as PNG pages a person can look through."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

#: Thumbnail height, the widest a thumbnail may be, the gap between things (pixels), and rows per page.
HEIGHT, MAX_WIDTH, GAP, ROWS = 200, 320, 8, 30
LINE = 14


def _thumb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((MAX_WIDTH, HEIGHT))
            return im.copy()
    except OSError:
        return Image.new("RGB", (HEIGHT, HEIGHT), (128, 0, 0))  # unreadable: a dark red square


def contact_sheets(pairs: list[tuple[Path, Path, str]], dst: Path) -> list[Path]:
    """Writes ``dst`` (``NAME.png``; ``NAME-2.png``... when more than :data:`ROWS` pairs) with one row per pair
    ``(image a, image b, caption)``; returns the files written (none for no pairs)."""
    width = 2 * MAX_WIDTH + 3 * GAP
    chars = width // 7
    font = ImageFont.load_default(size=12)
    written = []
    for page, start in enumerate(range(0, len(pairs), ROWS), 1):
        rows = []
        for a, b, caption in pairs[start : start + ROWS]:
            lines = [w for part in caption.splitlines() for w in textwrap.wrap(part, chars) or [""]]
            rows.append((_thumb(a), _thumb(b), lines))
        height = sum(HEIGHT + len(lines) * LINE + 2 * GAP for *_, lines in rows) + GAP
        sheet = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(sheet)
        y = GAP
        for ta, tb, lines in rows:
            sheet.paste(ta, (GAP, y))
            sheet.paste(tb, (2 * GAP + MAX_WIDTH, y))
            y += HEIGHT + GAP // 2
            for line in lines:
                draw.text((GAP, y), line, fill="black", font=font)
                y += LINE
            y += GAP + GAP // 2
            draw.line((0, y - GAP // 2, width, y - GAP // 2), fill=(200, 200, 200))
        out = dst if page == 1 else dst.with_name(f"{dst.stem}-{page}{dst.suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out)
        written.append(out)
    return written
