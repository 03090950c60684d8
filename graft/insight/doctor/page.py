"""doctor.html: one self-contained page (thumbnails embedded as base64 JPEG, no script), a gallery per kind of
finding, pairs side by side with their similarity, most certain first."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

from graft.insight.doctor.findings import KINDS, SERIOUS, DoctorResult, Finding

#: Findings shown per kind (all of them are in doctor.json and doctor.csv).
SHOWN = 48
THUMB = 160

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.serious h2{color:#b00020}.note{color:#555;font-size:13px}
table.summary td{padding:2px 12px 2px 0}.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa;font-size:12px;max-width:360px}
.card .imgs{display:flex;gap:4px}.card img{max-width:160px;max-height:160px;display:block}
.card .name{word-break:break-all;max-width:160px}.score{font-weight:bold}
"""


def _thumb(path: Path) -> str:
    try:
        from graft.data import load_rgb

        im = load_rgb(path, draft=THUMB)
        im.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    except Exception:  # an unreadable file has no picture: its card says why
        return ""


def _thumbs(paths: list[Path]) -> dict[Path, str]:
    """The shown files' thumbnails, a few at a time (PIL decodes, scales and encodes outside the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(unique, pool.map(_thumb, unique), strict=True))


def _card(f: Finding, result: DoctorResult, root: Path, cache: dict[Path, str]) -> str:
    cells = []
    for file in f.files:
        src = cache.get(root / file, "")
        facts = result.files.get(file, {})
        img = f'<img src="{src}" alt="{html.escape(file)}">' if src else "<div>(no picture)</div>"
        label = f"{facts.get('split', '')}/{facts.get('label', '')}" if facts else ""
        cells.append(f'<div>{img}<div class="name">{html.escape(file)}</div><div>{html.escape(label)}</div></div>')
    shown = {k: v for k, v in f.evidence.items() if k not in ("drop", "keep") and not isinstance(v, dict)}
    details = "; ".join(f"{k}: {html.escape(str(v))}" for k, v in shown.items())
    what = "similarity" if len(f.files) == 2 and f.kind in ("leakage", "near_duplicate") else "score"
    return (
        f'<div class="card"><div class="imgs">{"".join(cells)}</div>'
        f'<div><span class="score">{what} {f.score:.3f}</span></div><div>{details}</div></div>'
    )


def render(result: DoctorResult, root: Path) -> str:
    shown = {k: result.of(k)[:SHOWN] for k in KINDS if k != "imbalance"}
    cache = _thumbs([root / file for found in shown.values() for f in found for file in f.files])
    s = result.summary
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{result.count(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in KINDS.items()
        if result.count(k)
    )
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>graft doctor: {html.escape(root.name)}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>graft doctor: {html.escape(str(root))}</h1>",
        f"<p>{s['images']} images ({s['train']} train, {s['val']} val), {len(s['classes'])} classes, "
        f"features of {html.escape(s['arch'])}. Exit status {result.exit_code}.</p>",
        f"<table class='summary'>{rows or '<tr><td>nothing found</td></tr>'}</table>",
        *(f"<p class='note'>{html.escape(a)}</p>" for a in s.get("advice", [])),
    ]
    for kind, what in KINDS.items():
        total = result.count(kind)
        if not total or kind == "imbalance":
            continue
        cls = " class='serious'" if kind in SERIOUS else ""
        more = f" (the {SHOWN} highest of {total}; all in doctor.csv)" if total > SHOWN else ""
        cards = "".join(_card(f, result, root, cache) for f in shown[kind])
        parts.append(f"<section{cls} id='{kind}'><h2>{kind}: {total}</h2><p class='note'>{html.escape(what)}")
        parts.append(f"{more}</p><div class='grid'>{cards}</div></section>")
    parts.append("</body></html>")
    return "".join(parts)


def write_page(path: Path, result: DoctorResult, root: Path, **_: Any) -> None:
    from graft.core.atomic import atomic_write_text

    atomic_write_text(path, render(result, root))
