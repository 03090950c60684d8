"""``report.html``: one self-contained page per run (figures embedded as data URIs; no scripts, no external
CSS, fonts or images), written at the end of ``graft train``.

It shows the config, the data (class counts, an imbalance warning, skipped files with their reasons), the training
curves, the evaluation of the val split (accuracy with its 95% interval, per-class table, confusion matrix,
predictions, top losses with Grad-CAM), timing, model size and the environment.
"""

from __future__ import annotations

import base64
import contextlib
import html
import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core import checkpoint as ckpt
from graft.core.runmeta import RunMeta
from graft.core.runmetrics import RunMetrics

REPORT_FILE = "report.html"
FIGURES = ("curves.png", "confusion_matrix.png", "predictions.png", "top_losses.png")
IMBALANCE_RATIO = 3.0  # as `graft check`
MAX_SKIPPED_LISTED = 500


def write_report(
    run_dir: str | Path,
    *,
    explain: bool = True,
    evaluation: Any = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Evaluate the run on its val split (figures, ``evaluation.json``), draw ``curves.png`` and write
    ``report.html``. Returns the report's path.

    Args:
        run_dir: a finished run directory.
        explain: Grad-CAM overlays on the top losses.
        evaluation: an :class:`graft.insight.evaluation.EvaluationResult` of the val split already written to
            ``run_dir`` (then the run is not evaluated again).
        log: where a one-line summary goes.
    """
    from graft.insight import plots
    from graft.insight.evaluation import evaluate

    started = time.perf_counter()
    run_dir = Path(run_dir)
    figures = True
    try:
        if (run_dir / "results.csv").is_file():  # a graft quantize run trained no epochs: it has no curves
            plots.plot_curves(run_dir / "results.csv", run_dir / "curves.png")
        elif importlib.util.find_spec("matplotlib") is None:
            raise plots.PlotError("figures need matplotlib: pip install 'graft[plots]' (or pip install matplotlib)")
    except plots.PlotError as e:  # no matplotlib: the page is still written, its figures marked missing
        figures = False
        if log is not None:
            log(f"warning: the report has no figures: {e}")
    if evaluation is None:
        evaluate(run_dir, plots=figures, explain=explain, explain_predictions=False, device=_trained_on(run_dir))
    path = run_dir / REPORT_FILE
    atomic.atomic_write_text(path, render_report(run_dir, report_seconds=time.perf_counter() - started))
    if log is not None:
        log(f"report: {path} ({time.perf_counter() - started:.1f}s)")
    return path


def write_run_report(run_dir: str | Path, *, log: Callable[[str], None] = print) -> Path | None:
    """:func:`write_report` for the end of ``graft train``: any failure is a warning, never an error (the
    trained model is saved before this runs)."""
    try:
        return write_report(run_dir, log=log)
    except Exception as e:
        log(
            f"warning: report.html not written ({type(e).__name__}: {e}); the trained model is saved. "
            f"Retry with: graft evaluate {run_dir} --report"
        )
        return None


def _trained_on(run_dir: Path) -> str:
    """The device type the run was trained on when this machine has it, else ``auto``: evaluated there, the val
    phase's numerics (and a frozen run's stored val features, which are keyed by device) are the training's."""
    import torch

    device = (RunMetrics.read(run_dir).device or "auto").split(":")[0]
    present = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    return device if present.get(device) else "auto"


# ----------------------------------------------------------------------------------------------------------------
# rendering


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="muted">{_e(path.name)} is not available.</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _table(header: list[str], rows: list[list[Any]], *, numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if j >= numeric_from else ''}>{_e(v)}</td>" for j, v in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _model_size(run_dir: Path, meta: RunMeta) -> list[tuple[str, Any]]:
    if meta.is_int8:
        return _program_size(run_dir, meta)
    path = run_dir / (meta.weights_file or ckpt.MODEL_FILE)
    if not path.is_file():
        return [("weights file", "missing")]
    total = head = 0
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                count = 1
                for d in f.get_slice(key).get_shape():
                    count *= d
                total += count
                head += count if key.startswith("head.") else 0
    except Exception as e:
        return [("weights file", f"{_size(path.stat().st_size)} (cannot read its header: {e})")]
    return [
        ("weights file", f"{path.name}, {_size(path.stat().st_size)}"),
        ("values stored (parameters and buffers)", f"{total:,}"),
        ("of which the head", f"{head:,}"),
        ("weights sha256", meta.weights_sha256 or "?"),
    ]


def _program_size(run_dir: Path, meta: RunMeta) -> list[tuple[str, Any]]:
    """The model rows of an int8 run: its program file (int8 body and float head in one) and how it was made."""
    info = meta.quantization or {}
    backend = info.get("backend") or {}
    path = run_dir / (meta.program_file or "model.pt2")
    rows: list[tuple[str, Any]] = [
        ("int8 program file", f"{path.name}, {_size(path.stat().st_size)}" if path.is_file() else "missing"),
        ("program sha256", meta.program_sha256 or "?"),
        (
            "quantization",
            f"{info.get('method', '?')}, {backend.get('name', '?')} (reduce_range {backend.get('reduce_range', '?')}), "
            f"{info.get('calibration_images', '?')} calibration images",
        ),
    ]
    if info.get("source_run"):
        rows.append(("quantized from", info["source_run"]))
    return rows


def _environment(meta: RunMeta | None, metrics: RunMetrics) -> list[tuple[str, Any]]:
    import importlib.metadata

    versions = dict((meta.versions if meta else None) or {})
    for package in ("numpy", "pillow", "matplotlib"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.setdefault(package, importlib.metadata.version(package))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("device", metrics.get("device", "?")),
        ("platform", platform.platform()),
        ("processor", platform.processor() or platform.machine()),
        ("CPU cores available", cores),
        *((f"{k} version", v) for k, v in versions.items()),
    ]


def _layout_text(report: dict[str, Any]) -> str:
    """How the run's data was laid out and split, in words."""
    held = f"{report.get('val_split') or 0:.0%} held out (seed {report.get('seed')})"
    if report.get("layout") == "train/val":
        return "train/val folders"
    if report.get("layout") == "table":
        columns = report.get("columns") or {}
        how = f"split column {columns['split']!r}" if columns.get("split") else f"each class {held}"
        return f"table {report.get('table')} (path {columns.get('path')!r}, label {columns.get('label')!r}; {how})"
    return f"one folder per class, {held}"


def _data_section(report: dict[str, Any] | None, metrics: RunMetrics) -> str:
    if not report:
        return '<p class="muted">data_report.json is not available.</p>'
    classes = report.get("classes", [])
    counts = report.get("counts", {"train": {}, "val": {}})
    train, val = counts.get("train", {}), counts.get("val", {})
    rows = [[c, train.get(c, 0), val.get(c, 0)] for c in classes]
    rows.append(["total", sum(train.values()), sum(val.values())])
    parts = [
        _kv(
            [
                ("data folder", report.get("root", "?")),
                ("layout", _layout_text(report)),
                ("classes", len(classes)),
            ]
        ),
        _table(["class", "train images", "val images"], rows),
    ]
    if train:
        big, small = max(train, key=train.__getitem__), min(train, key=train.__getitem__)
        if train[big] > IMBALANCE_RATIO * max(train[small], 0):
            parts.append(
                f'<p class="warn">Warning: classes are imbalanced: {_e(big)} has {train[big]} training images, '
                f"{train[big] / max(train[small], 1):.1f}x the {train[small]} of {_e(small)}. Overall accuracy can "
                "hide a poor smaller class: look at the per-class recall and the balanced accuracy.</p>"
            )
        else:
            parts.append(
                f'<p class="ok">Classes are balanced enough: the largest has {train[big] / max(train[small], 1):.1f}x '
                "the training images of the smallest.</p>"
            )
    skipped = report.get("skipped", [])
    if skipped:
        listed = skipped[:MAX_SKIPPED_LISTED]
        more = f" (the first {len(listed)} listed; all are in data_report.json)" if len(skipped) > len(listed) else ""
        parts.append(f"<h3>Skipped files: {len(skipped)}{more}</h3>")
        parts.append(_table(["file", "reason"], [[s["path"], s["reason"]] for s in listed], numeric_from=9))
    else:
        parts.append('<p class="ok">No file was skipped.</p>')
    return "\n".join(parts)


def _evaluation_section(run_dir: Path, ev: dict[str, Any] | None) -> str:
    if not ev:
        return '<p class="muted">evaluation.json is not available (run graft evaluate).</p>'
    if ev.get("task") == "multilabel":  # mAP, F1 at the thresholds, PR curves
        from graft.insight.multilabel import report_rows

        pairs, header, rows = report_rows(ev)
        thresholds = '<p class="muted">Thresholds were chosen on val to maximize the F1 of each class (dots).</p>'
        curves = _img(run_dir / "pr_curves.png", "precision-recall curve per class")
        return "\n".join([_kv(pairs), _table(header, rows), "<h3>Precision-recall curves</h3>", thresholds, curves])
    lo, hi = ev["accuracy_ci95"]
    best = ev.get("run_best_val_acc")
    pairs = [
        ("images evaluated", f"{ev['n']} ({ev['source']})"),
        ("accuracy", f"{ev['accuracy']:.4f} ({ev['correct']}/{ev['n']}); 95% CI {lo:.4f} to {hi:.4f} (Wilson)"),
        ("balanced accuracy", f"{ev['balanced_accuracy']:.4f}"),
        ("macro F1", f"{ev['macro_f1']:.4f}"),
    ]
    if best is not None:
        pairs.append(("best_val_acc recorded by training", f"{best:.4f}"))
    if ev.get("unreadable"):
        pairs.append(("files that could not be read", len(ev["unreadable"])))
    rows = [
        [m["class"], f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"], m["predicted"]]
        for m in ev["per_class"]
    ]
    notes = "".join(f'<p class="warn">{_e(n)}</p>' for n in ev.get("notes", []))
    wrong = ev["n"] - ev["correct"]
    return "\n".join(
        [
            _kv(pairs),
            _table(["class", "precision", "recall", "F1", "images", "predicted as"], rows),
            notes,
            "<h3>Confusion matrix</h3>",
            _img(run_dir / "confusion_matrix.png", "confusion matrix: counts and normalized by true class"),
            "<h3>Predictions</h3>",
            '<p class="muted">Titles give the predicted class and its probability; wrong predictions are red and '
            "framed, with the true class.</p>",
            _img(run_dir / "predictions.png", "grid of val images with their predicted classes"),
            f"<h3>Top losses ({wrong} misclassified)</h3>",
            '<p class="muted">The most confidently wrong images'
            + (
                ", each with the Grad-CAM map of its predicted class (where the model looked)."
                if ev.get("explained", {}).get("top_losses")
                else "."
            )
            + "</p>",
            _img(run_dir / "top_losses.png", "most confidently misclassified val images with Grad-CAM"),
        ]
    )


def _summary_cards(config: dict[str, Any], metrics: RunMetrics, meta: RunMeta | None, ev: dict[str, Any] | None) -> str:
    """The headline figures at the top of the page: accuracy (and its interval), best epoch, model, time."""
    arch = meta.arch if meta else config.get("arch", "?")
    best = metrics.get("best_val_acc")
    cards = [
        ("best val accuracy", f"{best:.4f}" if isinstance(best, float) else "?"),
        ("best epoch", f"{metrics.get('best_epoch', '?')} of {metrics.get('epochs_run', '?')}" + _selected(metrics)),
        ("architecture", f"{arch} ({config.get('mode', '?')})"),
        ("training time", f"{metrics.get('train_seconds', 0):.1f} s"),
    ]
    if meta and meta.is_int8:  # its accuracy is the int8 program's; the float model's is the reference beside it
        fp32 = metrics.get("fp32_val_acc")
        cards[0] = ("int8 val accuracy", cards[0][1])
        cards[1] = ("float val accuracy", f"{fp32:.4f}" if isinstance(fp32, float) else "?")
        cards[2] = (cards[2][0], f"{arch} ({config.get('mode', '?')}, int8)")
    if isinstance(metrics.get("best_val_map"), float):  # a multi-label run
        cards[0] = ("best val mAP", f"{metrics.best_val_map:.4f}")
    if ev and "accuracy_ci95" in ev:
        lo, hi = ev["accuracy_ci95"]
        cards.insert(1, ("95% CI", f"{lo:.3f} to {hi:.3f}"))
    test = metrics.get("test_acc")
    if isinstance(test, float):  # the held-out test folder, evaluated once with the best model
        lo, hi = metrics.get("test_acc_ci95", [0.0, 1.0])
        shown = f"{test:.4f} ({metrics.get('n_test')} images; CI {lo:.3f} to {hi:.3f})"
        cards.insert(2 if ev else 1, ("test accuracy", shown))
    return "".join(f"<div>{_e(k)}<b>{_e(v)}</b></div>" for k, v in cards)


def _selected(metrics: RunMetrics) -> str:
    """How the best epoch was chosen, when not by val accuracy (``--select-by``)."""
    by = metrics.get("selected_by")
    return f" (by val {by.replace('_', ' ')})" if by and by != "acc" else ""


def _curves_section(run_dir: Path, results: list[dict[str, Any]]) -> str:
    """``curves.png`` and the table of ``results.csv``, one row per epoch."""
    epoch_rows = [
        [int(r["epoch"]), r.get("stage", ""), f"{r['train_loss']:.4f}", f"{r['train_acc']:.4f}",
         f"{r['val_loss']:.4f}", f"{r['val_acc']:.4f}", f"{r['lr']:.3g}", f"{r['seconds']:.2f}"]
        for r in results
    ]  # fmt: skip
    header = ["epoch", "stage", "train loss", "train acc", "val loss", "val acc", "lr", "seconds"]
    if results and "val_balanced_acc" in results[0]:  # runs before these columns existed have none
        header += ["val balanced acc", "val macro F1"]
        for row, r in zip(epoch_rows, results, strict=True):
            row += [f"{r['val_balanced_acc']:.4f}", f"{r['val_macro_f1']:.4f}"]
    return _img(run_dir / "curves.png", "training curves: loss, accuracy and learning rate per epoch") + _table(
        header, epoch_rows, numeric_from=2
    )


def _timing_rows(metrics: RunMetrics, ev: dict[str, Any] | None, report_seconds: float | None) -> list[tuple[str, Any]]:
    timing: list[tuple[str, Any]] = [
        ("whole run (scan, features, training, saving)", f"{metrics.get('train_seconds', 0):.2f} s"),
        ("training epochs", f"{metrics.get('fit_seconds', 0):.2f} s"),
        ("epochs run", metrics.get("epochs_run", "?")),
    ]
    if ev:
        timing.append(("evaluation and figures", f"{ev.get('seconds', 0):.2f} s"))
    if report_seconds is not None:
        timing.append(("this report, all included", f"{report_seconds:.2f} s"))
    return timing


def _model_rows(run_dir: Path, meta: RunMeta | None) -> list[tuple[str, Any]]:
    if meta is None:
        return [("model.json", "missing: the run has not saved a model")]
    pretrained, written = meta.pretrained or {}, meta.to_dict()
    return [
        ("architecture", f"{meta.arch} ({meta.arch_source or '?'})"),
        ("starting weights", f"{pretrained.get('tag') or ''} {pretrained.get('source', '')}".strip() or "?"),
        ("head", json.dumps(written.get("head", {}))),
        ("preprocessing", json.dumps(written["preprocess"])),
        ("classes", ", ".join(meta.classes)),
        *_model_size(run_dir, meta),
    ]


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1.5em 2em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.muted { color: #666; } .warn { color: #8a4b00; background: #fff4e0; padding: 0.5em 0.8em; border-radius: 4px; }
.ok { color: #235c23; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
thead th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: #fafafa; font-weight: 600; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.4em 0; }
.summary { display: flex; gap: 2em; flex-wrap: wrap; font-size: 1.05em; }
.summary div { background: #f6f8fa; padding: 0.6em 1em; border-radius: 6px; }
.summary b { font-size: 1.4em; display: block; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _leaderboard_section(run_dir: Path, *, top: int = 20) -> str:
    """The search's ``leaderboard.csv`` as a table (best first), with its time and budget."""
    import csv

    with open(run_dir / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    auto = atomic.read_json_or(run_dir / "auto.json") or {}
    keys = ["rank", "arch", "hidden", "dropout", "lr", "weight_decay", "balance", "cv_mean", "cv_sd", "seconds"]
    table = _table(keys, [[r.get(k, "") for k in keys] for r in rows[:top]], numeric_from=3)
    note = (
        f"{len(rows)} candidates, {auto.get('metric', 'acc')} over {auto.get('folds', 5)} folds of the train split "
        f"(val not used); search {auto.get('search_seconds', '?')} s"
        + (f" of a {auto['time_budget']} s budget" if auto.get("time_budget") else "")
    )
    return f'<p class="muted">{_e(note)}</p>{table}'


def render_report(run_dir: str | Path, *, report_seconds: float | None = None) -> str:
    """The HTML of ``report.html``, from the run's files (missing pieces are noted, not fatal)."""
    run_dir = Path(run_dir)
    config = atomic.read_json_or(run_dir / "config.json") or {}
    metrics = RunMetrics.read(run_dir)
    meta = RunMeta.read_or_none(run_dir)
    data = atomic.read_json_or(run_dir / "data_report.json")
    ev = atomic.read_json_or(run_dir / "evaluation.json")
    results = []
    if (run_dir / "results.csv").is_file():
        from graft.insight.plots import read_results

        results = read_results(run_dir / "results.csv")

    name = run_dir.resolve().name
    summary = _summary_cards(config, metrics, meta, ev)
    curves = _curves_section(run_dir, results)
    timing = _timing_rows(metrics, ev, report_seconds)
    config_rows = [(k, json.dumps(v) if isinstance(v, list | dict) else v) for k, v in config.items()]
    model_rows = _model_rows(run_dir, meta)
    sections = [
        ("Summary", f'<div class="summary">{summary}</div>'),
        ("Data", _data_section(data, metrics)),
        ("Training curves", curves),
        ("Evaluation on the val split", _evaluation_section(run_dir, ev)),
        ("Timing", _kv(timing)),
        ("Model", _kv(model_rows)),
        ("Config", _kv(config_rows)),
        ("Environment", _kv(_environment(meta, metrics))),
    ]
    if (run_dir / "leaderboard.csv").is_file():  # graft train --auto: every candidate of the search
        sections.insert(1, ("Search (--auto, 5-fold CV on train)", _leaderboard_section(run_dir)))
    body = "\n".join(f"<section><h2>{_e(title)}</h2>\n{content}\n</section>" for title, content in sections)
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>graft run {_e(name)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>graft run {_e(name)}</h1>
<p class="muted">{_e(run_dir.resolve())}, report generated {_e(generated)}</p>
{body}
</body>
</html>
"""
