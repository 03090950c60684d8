"""doctor.html: one self-contained page (pictures embedded as base64 JPEG, no script), a gallery per kind of
finding, most certain first. A pair whose pixels were compared (leakage, near_duplicate, same_scene) shows what
the comparison found, in words and in two pictures (:mod:`graft.insight.doctor.pictures`): the matched points,
and the first image laid over the second."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.insight.doctor.findings import KINDS, SERIOUS, DoctorResult, Finding

if TYPE_CHECKING:
    from PIL import Image

#: Findings shown per kind (all of them are in doctor.json and doctor.csv).
SHOWN = 48
THUMB = 160
#: Pair findings whose evidence holds the verdict on their pixels (graft.features.copies.Verdict.evidence).
PAIRS = ("leakage", "near_duplicate", "same_scene")
#: Each image of a pair's pictures: this high, at most this wide (decoded at PAIR_SIDE, then fitted).
PAIR_HEIGHT, PAIR_WIDTH, PAIR_SIDE = 160, 220, 256
HOW_TO_READ = (
    "How to read a pair: first the two images, their matched points joined by coloured lines; then the left image "
    "laid over the right one by those matches, half and half. One crisp picture means the same photograph (a "
    "copy); ghosts and doubled edges mean another shot of the scene."
)
_NAMES = {"copy": "copy", "same_scene": "same scene", "similar": "similar"}
_TAILS = {"same_scene": " \u2014 another shot", "similar": " \u2014 not the same photograph"}
#: Evidence the caption and the pictures show (the rest is listed as it is).
_PICTURED = ("kind", "inliers", "agreement", "mirrored", "transform", "points", "drop", "keep")

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff;max-width:1400px;overflow-wrap:break-word}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.serious h2{color:#b00020}.note{color:#4a4a4a;font-size:13px;max-width:70em}
table.summary td{padding:2px 12px 2px 0;vertical-align:top}table.summary td:first-child{white-space:nowrap}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid>*{min-width:0}
.card{border:1px solid #ccc;border-radius:6px;padding:6px;background:#fafafa;font-size:12px;max-width:360px}
.card .imgs{display:flex;gap:4px}.card .imgs img{max-width:160px;max-height:160px;display:block}
.card .name{word-break:break-all;max-width:160px}.score{font-weight:bold}
.card.pair{max-width:min(100%,720px)}.verdict{font-size:14px;font-weight:600;margin:2px 0 6px}
.verdict.copy,.verdict.identical{color:#a0001c}.verdict.same_scene{color:#7a4d00}.verdict.similar{color:#333}
.pics{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.pics figure{margin:0;max-width:100%}.pics img{display:block;max-width:100%;height:auto}
.pics figcaption{color:#4a4a4a;font-size:11px;margin-top:2px}.files{margin:6px 0 2px;word-break:break-all}
@media (max-width:600px){body{margin:10px}h1{font-size:18px}}
"""


def _load(path: Path, side: int) -> Image.Image | None:
    try:
        from graft.data import load_rgb

        im = load_rgb(path, draft=side)
        im.thumbnail((side, side))
        return im
    except Exception:  # an unreadable file has no picture: its card says why
        return None


def _uri(im: Image.Image) -> str:
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumb(path: Path) -> str:
    im = _load(path, THUMB)
    return _uri(im) if im is not None else ""


def _has_verdict(f: Finding) -> bool:
    return f.kind in PAIRS and len(f.files) == 2 and f.evidence.get("kind", "identical") != "identical"


def _fit(im: Image.Image) -> Image.Image:
    s = min(PAIR_HEIGHT / im.height, PAIR_WIDTH / im.width)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), resample=2)  # bilinear


#: A picture as a data URI and its width in pixels ("", 0: nothing to draw).
Picture = tuple[str, int]
#: A pair's two pictures: the matched points, the overlay.
Pictures = tuple[Picture, Picture]


def _picture(im: Image.Image) -> Picture:
    return _uri(im), im.width


def _pictures(f: Finding, root: Path) -> Pictures:
    """A pair's matched points and its aligned overlay."""
    from graft.insight.doctor.pictures import aligned, matches

    a, b = (_load(root / file, PAIR_SIDE) for file in f.files)
    if a is None or b is None:
        return ("", 0), ("", 0)
    a, b = _fit(a), _fit(b)
    ev = f.evidence
    mirrored = bool(ev.get("mirrored"))
    drawn = _picture(matches(a, b, ev.get("points") or [], mirrored))
    transform = ev.get("transform")
    return drawn, _picture(aligned(a, b, transform, mirrored)) if transform else ("", 0)


def _render(paths: list[Path], pairs: list[Finding], root: Path) -> tuple[dict[Path, str], dict[int, Pictures]]:
    """The shown files' thumbnails and the shown pairs' pictures (by ``id`` of the finding), a few at a time (PIL
    and OpenCV decode, scale, warp and encode outside the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        thumbs = dict(zip(unique, pool.map(_thumb, unique), strict=True))
        drawn = dict(zip(map(id, pairs), pool.map(lambda f: _pictures(f, root), pairs), strict=True))
    return thumbs, drawn


def caption(evidence: dict[str, Any]) -> str:
    """What the pixels said of a pair, in a line: "copy: 143 matched points, 97% of the detail lines up
    (mirrored)"; "" for a finding without a verdict."""
    kind = evidence.get("kind")
    if kind is None:
        return ""
    if kind == "identical":
        return "identical pixels"
    text = f"{_NAMES.get(kind, kind)}: {evidence.get('inliers', 0)} matched points, "
    text += f"{round(100 * float(evidence.get('agreement', 0.0)))}% of the detail lines up"
    return text + (" (mirrored)" if evidence.get("mirrored") else "") + _TAILS.get(kind, "")


def _details(f: Finding) -> str:
    skip = _PICTURED if f.kind in PAIRS else ("drop", "keep")
    shown = {k: v for k, v in f.evidence.items() if k not in skip and not isinstance(v, dict)}
    text = {k: ", ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in shown.items()}
    return "; ".join(f"{k}: {html.escape(v)}" for k, v in text.items())


def _label(result: DoctorResult, file: str) -> str:
    facts = result.files.get(file, {})
    return f"{facts.get('split', '')}/{facts.get('label', '')}" if facts else ""


def _pair_card(f: Finding, result: DoctorResult, drawn: Pictures) -> str:
    kind = str(f.evidence.get("kind", ""))
    matched, overlay = drawn
    mirrored = " (left one shown mirrored)" if f.evidence.get("mirrored") else ""
    figures = []
    if matched[0]:
        figures.append((matched, "matched points", f"matched points{mirrored}"))
    if overlay[0]:
        figures.append((overlay, "aligned", "left laid over right: crisp = same photo, ghosts = another shot"))
    pics = "".join(  # a figure as wide as its picture: the caption wraps under it
        f'<figure style="width:{width}px"><img src="{src}" alt="{alt}"><figcaption>{html.escape(text)}</figcaption>'
        "</figure>"
        for (src, width), alt, text in figures
    )
    files = "<br>".join(
        f"{side}: {html.escape(file)}" + (f" ({html.escape(label)})" if (label := _label(result, file)) else "")
        for side, file in zip(("left", "right"), f.files, strict=True)
    )
    return (
        f'<div class="card pair"><div class="verdict {html.escape(kind)}">{html.escape(caption(f.evidence))}</div>'
        f'<div class="pics">{pics or "<div>(no picture)</div>"}</div><div class="files">{files}</div>'
        f'<div><span class="score">similarity {f.score:.3f}</span></div><div>{_details(f)}</div></div>'
    )


def _card(f: Finding, result: DoctorResult, root: Path, cache: dict[Path, str]) -> str:
    cells = []
    for file in f.files:
        src = cache.get(root / file, "")
        img = f'<img src="{src}" alt="{html.escape(file)}">' if src else "<div>(no picture)</div>"
        label = html.escape(_label(result, file))
        cells.append(f'<div>{img}<div class="name">{html.escape(file)}</div><div>{label}</div></div>')
    what = "similarity" if len(f.files) == 2 and f.kind in PAIRS else "score"
    verdict = caption(f.evidence) if f.kind in PAIRS else ""
    line = f'<div class="verdict identical">{html.escape(verdict)}</div>' if verdict else ""
    return (
        f'<div class="card">{line}<div class="imgs">{"".join(cells)}</div>'
        f'<div><span class="score">{what} {f.score:.3f}</span></div><div>{_details(f)}</div></div>'
    )


def render(result: DoctorResult, root: Path) -> str:
    shown = {k: result.of(k)[:SHOWN] for k in KINDS if k != "imbalance"}
    pairs = [f for found in shown.values() for f in found if _has_verdict(f)]
    plain = [root / file for found in shown.values() for f in found if not _has_verdict(f) for file in f.files]
    cache, drawn = _render(plain, pairs, root)
    s = result.summary
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{result.count(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in KINDS.items()
        if result.count(k)
    )
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>graft doctor: "
        f"{html.escape(root.name)}</title><style>{_CSS}</style></head><body>",
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
        how = f"</p><p class='note'>{html.escape(HOW_TO_READ)}" if kind in PAIRS else ""
        cards = "".join(
            _pair_card(f, result, drawn[id(f)]) if _has_verdict(f) else _card(f, result, root, cache)
            for f in shown[kind]
        )
        parts.append(f"<section{cls} id='{kind}'><h2>{kind}: {total}</h2><p class='note'>{html.escape(what)}")
        parts.append(f"{more}{how}</p><div class='grid'>{cards}</div></section>")
    parts.append("</body></html>")
    return "".join(parts)


def write_page(path: Path, result: DoctorResult, root: Path, **_: Any) -> None:
    from graft.core.atomic import atomic_write_text

    atomic_write_text(path, render(result, root))
