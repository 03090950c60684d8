"""``README.md`` of a run directory: a model card in the Hugging Face convention (YAML front matter with
``library_name``, ``tags`` and a ``model-index`` of the val metrics, then the description, the data, the metrics
with their intervals, the intended use and limits, and how to load the model).

Everything comes from the run's own files (model.json, config.json, metrics.json, data_report.json, and
evaluation.json / quantization.json when present), so ``graft evaluate`` can write it again after it updates them.
The front matter is written by a small emitter of its own (plain mappings, lists and JSON-quoted strings), so
graft needs no YAML package.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core.metrics import wilson_interval
from graft.core.runmeta import RunMeta
from graft.core.runmetrics import RunMetrics
from graft.training.callbacks import Callback

CARD_FILE = "README.md"
IMBALANCE_RATIO = 3.0  # as graft check and the report
MAX_REASONS = 10


class ModelCard(Callback):
    """README.md at the end of a run (after the report, whose evaluation it quotes); a failure only warns."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        try:
            write_model_card(run_dir)
        except Exception as e:
            self.log(f"warning: {CARD_FILE} not written ({type(e).__name__}: {e}); the trained model is saved")


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``RUN/README.md`` from the run's files; returns its path."""
    run_dir = Path(run_dir)
    path = run_dir / CARD_FILE
    atomic.atomic_write_text(path, render_model_card(run_dir))
    return path


def render_model_card(run_dir: str | Path) -> str:
    """The model card of a run directory, as Markdown with YAML front matter."""
    run = _Run(Path(run_dir))
    sections = [
        f"# {run.dir.name}\n\n{run.summary()}",
        _description(run),
        _data(run),
        _metrics(run),
        _limits(run),
        _usage(run),
    ]
    return "---\n" + to_yaml(_front_matter(run)) + "---\n\n" + "\n\n".join(s.rstrip() for s in sections) + "\n"


class _Run:
    """The files of a run directory that a card quotes."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.meta = RunMeta.read(run_dir)
        self.config = atomic.read_json_or(run_dir / "config.json") or {}
        self.metrics = RunMetrics.read(run_dir)
        self.data = atomic.read_json_or(run_dir / "data_report.json") or {}
        ev = atomic.read_json_or(run_dir / "evaluation.json")
        # a multi-label evaluation has no accuracy: its card gives the mAP and F1 of metrics.json (:func:`_metrics`)
        self.evaluation = ev if ev and ev.get("source") == "val split" and ev.get("task") != "multilabel" else None
        self.quant = atomic.read_json_or(run_dir / "quantization.json")
        self.classes: list[str] = list(self.meta.classes)

    @property
    def int8(self) -> bool:
        return self.quant is not None

    def val_accuracy(self) -> tuple[float, int, int, tuple[float, float]] | None:
        """(accuracy, correct, n, Wilson 95% interval) of the val split: the evaluation's, else metrics.json's."""
        if self.evaluation is not None:
            ev = self.evaluation
            return ev["accuracy"], ev["correct"], ev["n"], tuple(ev["accuracy_ci95"])  # type: ignore[return-value]
        acc, n = self.metrics.get("best_val_acc"), self.metrics.get("n_val")
        if acc is None or not n:
            return None
        correct = round(acc * n)  # accuracy = correct / n exactly: this recovers the count
        return acc, correct, n, wilson_interval(correct, n)

    def test_accuracy(self) -> tuple[float, int, tuple[float, float]] | None:
        """(accuracy, n, 95% interval) on the dataset's held-out test folder, when the run evaluated one."""
        m = self.metrics
        if m.get("test_acc") is None or not m.get("n_test"):
            return None
        lo, hi = m.get("test_acc_ci95") or (0.0, 1.0)
        return m.test_acc, m.n_test, (lo, hi)

    def summary(self) -> str:
        arch, mode = self.meta.arch, self.meta.mode or "?"
        what = f"An image classifier of {len(self.classes)} classes ({_names(self.classes)}), trained by "
        what += f"[graft](https://pypi.org/project/graft/) from `{arch}` ({_mode_words(mode, self.int8)})."
        val = self.val_accuracy()
        if val is not None:
            acc, correct, n, (lo, hi) = val
            what += f" Val accuracy {acc:.4f} ({correct}/{n}; 95% interval {lo:.3f}-{hi:.3f})."
        return what


def _front_matter(run: _Run) -> dict[str, Any]:
    tags = ["graft", "image-classification", "transfer-learning", run.meta.arch]
    tags += [run.meta.mode or ""] + (["int8"] if run.int8 else [])
    card: dict[str, Any] = {
        "library_name": "graft",
        "pipeline_tag": "image-classification",
        "tags": [t for t in tags if t],
    }
    val = run.val_accuracy()
    if val is None:
        return card
    metrics = [{"type": "accuracy", "value": round(val[0], 6), "name": "Val accuracy"}]
    if run.evaluation is not None:
        ev = run.evaluation
        metrics.append(
            {"type": "balanced_accuracy", "value": round(ev["balanced_accuracy"], 6), "name": "Val balanced accuracy"}
        )
        metrics.append({"type": "f1", "value": round(ev["macro_f1"], 6), "name": "Val macro F1"})
    card["metrics"] = [m["type"] for m in metrics]
    dataset = {"name": Path(str(run.data.get("root", "data"))).name, "type": "imagefolder", "split": "validation"}
    task = {"type": "image-classification", "name": "Image Classification"}
    results = [{"task": task, "dataset": dataset, "metrics": metrics}]
    test = run.test_accuracy()
    if test is not None:
        test_metrics = [{"type": "accuracy", "value": round(test[0], 6), "name": "Test accuracy"}]
        results.append({"task": task, "dataset": dataset | {"split": "test"}, "metrics": test_metrics})
    card["model-index"] = [{"name": run.dir.name, "results": results}]
    return card


def _description(run: _Run) -> str:
    meta, cfg = run.meta, run.config
    pre, weights = meta.preprocess, meta.pretrained or {}
    head = meta.to_dict().get("head") or {}
    start = weights.get("tag") or weights.get("source") or "?"
    if weights.get("sha256"):
        start += f" (`{Path(weights.get('file') or 'weights').name}`, sha256 {weights['sha256'][:12]}...)"
    hidden = head.get("hidden") or []
    layers = " -> ".join(str(w) for w in [meta.in_features or "?", *hidden, len(run.classes)])
    shape = "one Linear layer" if not hidden else "an MLP"
    dropout = f", dropout {head['dropout']}" if head.get("dropout") else ""
    rows = [
        ("Backbone", f"`{meta.arch}` ({meta.arch_source or '?'})"),
        ("Starting weights", start),
        ("Mode", _mode_words(meta.mode or "?", run.int8)),
        ("Head", f"{shape}: {layers}{dropout}"),
        (
            "Input",
            f"{pre.input_size} px centre crop of a {pre.resize_size} px resize "
            f"({pre.interpolation}), normalised with mean {list(pre.mean)} and std {list(pre.std)}",
        ),
        ("Weights file", _weights_file(run)),
        ("Training", _training_words(cfg, run.metrics)),
        ("Versions", ", ".join(f"{k} {v}" for k, v in (meta.versions or {}).items())),
    ]
    tracked = atomic.read_json_or(run.dir / "mlflow.json")
    if tracked:
        rows.append(("MLflow", f"run `{tracked['run_id']}` of experiment {tracked['experiment']!r}"))
    return "## Model description\n\n" + _table(["", ""], rows)


def _mode_words(mode: str, int8: bool) -> str:
    words = {
        "freeze": "frozen backbone: only the new head was trained",
        "finetune": "fine-tuned: the head first, then every layer",
        "qat": "quantization-aware fine-tuning, then converted to int8",
    }.get(mode, mode)
    return words + ("; int8 backbone, float head (CPU)" if int8 and mode != "qat" else "")


def _weights_file(run: _Run) -> str:
    meta = run.meta
    if run.int8:
        q = (run.quant or {}).get("quantization", {})
        bits = q.get("activation_bits")
        return f"`{meta.program_file or 'model.pt2'}` (torch.export program, int8 weights" + (
            f", {bits}-bit activations)" if bits else ")"
        )
    sha = meta.weights_sha256
    return f"`{meta.weights_file or 'model.safetensors'}`" + (f" (sha256 {sha[:12]}...)" if sha else "")


def _training_words(cfg: dict[str, Any], metrics: RunMetrics) -> str:
    if not cfg:
        return "config.json is not available"
    parts = [f"{metrics.get('epochs_run', '?')} epochs run of {cfg.get('epochs')}"]
    if metrics.get("best_epoch"):
        parts[0] += f" (best: epoch {metrics.best_epoch})"
    lr = cfg.get("lr") or "graft's default for each stage"
    parts.append(f"{cfg.get('optimizer')}, lr {lr}, {cfg.get('scheduler')} schedule")
    parts.append(f"batch size {cfg.get('batch_size')}, seed {cfg.get('seed')}")
    if metrics.get("train_seconds") is not None:
        parts.append(f"{metrics.train_seconds:.0f} s on {metrics.device or '?'}")
    return "; ".join(parts) + " (all options: `config.json`)"


def _data(run: _Run) -> str:
    report = run.data
    counts = report.get("counts") or {}
    train, val = counts.get("train", {}), counts.get("val", {})
    lines = ["## Training data", ""]
    root, layout = report.get("root", "?"), report.get("layout", "?")
    how = {
        "train/val": "separate train and val folders",
        "split": f"one folder per class, {report.get('val_split', 0) or 0:.0%} of each class held out for val "
        f"(seed {report.get('seed')})",
        "table": f"the table `{report.get('table')}`",
    }.get(layout, layout)
    lines += [f"`{root}`: {how}.", ""]
    rows = [(f"`{c}`", train.get(c, 0), val.get(c, 0)) for c in run.classes]
    rows.append(("**total**", sum(train.values()), sum(val.values())))
    lines.append(_table(["class", "train images", "val images"], rows))
    skipped = report.get("skipped") or []
    if skipped:
        reasons = Counter(str(s.get("reason", "?")) for s in skipped)
        lines += ["", f"{len(skipped)} file(s) were skipped (the list is in `data_report.json`):", ""]
        lines += [f"- {n} x {reason}" for reason, n in reasons.most_common(MAX_REASONS)]
        if len(reasons) > MAX_REASONS:
            lines.append(f"- ... and {len(reasons) - MAX_REASONS} other reason(s)")
    return "\n".join(lines)


def _metrics(run: _Run) -> str:
    lines = ["## Metrics", ""]
    m = run.metrics
    if m.best_val_map is not None:  # a multi-label run: mAP, and F1 at the per-class thresholds chosen on val
        rows = [("val mAP", f"{m.best_val_map:.4f}")] + [
            (f"val {k} F1 at the thresholds", f"{m.get(f'val_{k}_f1', float('nan')):.4f}") for k in ("micro", "macro")
        ]
        return "\n".join([*lines, _table(["metric", "value"], rows), "", f"Thresholds: `{m.get('thresholds')}`"])
    val = run.val_accuracy()
    if val is None:
        return "\n".join([*lines, "No val accuracy was recorded (metrics.json is missing or incomplete)."])
    acc, correct, n, (lo, hi) = val
    rows: list[tuple[Any, ...]] = [("val accuracy", f"{acc:.4f} ({correct}/{n})", f"{lo:.4f}-{hi:.4f} (Wilson)")]
    ev = run.evaluation
    if ev is not None:
        rows.append(("val balanced accuracy", f"{ev['balanced_accuracy']:.4f}", ""))
        rows.append(("val macro F1", f"{ev['macro_f1']:.4f}", ""))
    test = run.test_accuracy()
    if test is not None:
        t_acc, t_n, (t_lo, t_hi) = test
        rows.append(
            (
                "test accuracy (held-out folder)",
                f"{t_acc:.4f} ({round(t_acc * t_n)}/{t_n})",
                f"{t_lo:.4f}-{t_hi:.4f} (Wilson)",
            )
        )
    if run.int8 and run.quant:
        rows.append(("fp32 val accuracy (before int8)", f"{run.quant.get('fp32_val_acc', float('nan')):.4f}", ""))
    lines.append(_table(["metric", "value", "95% interval"], rows))
    if ev is not None and ev.get("per_class"):
        per_class = [
            (f"`{m['class']}`", f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"])
            for m in ev["per_class"]
        ]
        lines += ["", "Per class (val):", "", _table(["class", "precision", "recall", "F1", "support"], per_class)]
    else:
        lines += ["", "Per-class figures: `graft evaluate` writes them (evaluation.json, per_class.csv)."]
    figures = [f"![{name}]({name})" for name in ("curves.png", "confusion_matrix.png") if (run.dir / name).is_file()]
    if figures:
        lines += ["", " ".join(figures)]
    if (run.dir / "report.html").is_file():
        lines += ["", "The full report, with the misclassified images: `report.html`."]
    return "\n".join(lines)


def _limits(run: _Run) -> str:
    val = run.val_accuracy()
    lines = [
        "## Intended use and limitations",
        "",
        f"- Classifies an image as one of these {len(run.classes)} classes only: {_names(run.classes, 20)}. An "
        "image of anything else (out of distribution) still gets one of them, often with a high probability; "
        "there is no 'none of these' answer.",
        "- The best epoch was chosen on the val images, so the val accuracy is slightly optimistic; "
        + (
            "the test accuracy (a folder training never read) is not."
            if run.test_accuracy()
            else "`graft evaluate RUN TEST_DATA` on images the run never saw measures it without that bias."
        ),
    ]
    if val is not None:
        _, _, n, (lo, hi) = val
        lines.append(
            f"- {n} val images: the accuracy is known to within {lo:.3f}-{hi:.3f} (95%), and it holds for images "
            "like these (same sources, framing and quality)."
        )
    leaked = run.metrics.get("val_near_copies_in_train")
    if leaked:
        lines.append(
            f"- **{leaked} of {run.metrics.get('n_val', '?')} val images have a near-copy in the training images**: "
            "the val accuracy is optimistic (`data_report.json` lists the pairs; `graft doctor DATA` finds them)."
        )
    train = (run.data.get("counts") or {}).get("train") or {}
    if train and max(train.values()) > IMBALANCE_RATIO * max(min(train.values()), 1):
        big, small = max(train, key=train.__getitem__), min(train, key=train.__getitem__)
        lines.append(
            f"- Imbalanced training data ({train[big]} `{big}` vs {train[small]} `{small}` images): the overall "
            "accuracy can hide a weak smaller class (see the per-class figures)."
        )
    if run.int8:
        lines.append("- The int8 program runs on the CPU only; its first prediction compiles it (tens of seconds).")
    return "\n".join(lines)


def _usage(run: _Run) -> str:
    path = str(run.dir)
    quoted = path if all(c.isalnum() or c in "/._-" for c in path) else json.dumps(path)
    top = min(len(run.classes), 5) or 1
    return "\n".join(
        [
            "## How to use",
            "",
            "```bash",
            f"graft predict {quoted} IMAGE_OR_FOLDER --top-k {top}",
            f"graft serve {quoted}                  # http://127.0.0.1:8000/",
            f"graft evaluate {quoted} TEST_DATA     # accuracy on other labelled images",
            "```",
            "",
            "```python",
            "import graft",
            "",
            f"clf = graft.load({json.dumps(path)})",
            f'clf.predict("image.jpg", top_k={top})',
            "```",
            "",
            f"Needs `pip install graft` ({'with torchao; CPU' if run.int8 else 'torch and torchvision'}); "
            "the model files are loaded without pickle and checked against their sha256 in `model.json`.",
        ]
    )


def _names(classes: list[str], limit: int = 8) -> str:
    shown = ", ".join(f"`{c}`" for c in classes[:limit])
    return shown + (f" and {len(classes) - limit} more" if len(classes) > limit else "")


def _table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block YAML of plain mappings, lists and scalars; strings JSON-quoted (JSON strings are YAML scalars)."""
    pad = " " * indent
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                out.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                out.append(f"{pad}{key}: {_scalar(item)}\n")
        return "".join(out)
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, dict) and item:
                body = to_yaml(item, indent + 2)
                out.append(f"{pad}- {body[indent + 2 :]}")  # the first key on the dash's line
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
        return "".join(out)
    return f"{pad}{_scalar(value)}\n"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value), ensure_ascii=False)
