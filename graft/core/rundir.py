"""A run directory's own files, read and written in one place: its name (``NNN-arch-mode``), the split it was trained on
(``data_report.json``), the model's description (``model.json``), results.csv's columns and the weights file.

Training, int8 runs, evaluation, quantization and export all go through here, so a run written by one is read
the same way by the others. Atomic writes are :mod:`graft.core.atomic`, the safetensors model format
:mod:`graft.core.checkpoint`."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core import atomic
from graft.core import checkpoint as ckpt
from graft.core.config import TrainConfig
from graft.core.deps import import_torchvision
from graft.core.errors import ConfigError, DataError, RunError
from graft.core.heads import HeadSpec
from graft.core.version import __version__

DATA_REPORT = "data_report.json"
RESULTS_FILE = "results.csv"
RESULTS_HEADER = [
    *("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "stage"),
    *("val_balanced_acc", "val_macro_f1"),
]


#: what graft writes into a run directory about one model (its description and weights, its evaluations, exports,
#: search, trackers, resume state): a new run into the same folder (--exist-ok) removes them first, so none of the
#: previous model's results is taken for the new one's. Anything else in the folder is the user's and stays.
PREVIOUS_RESULTS = (
    *("config.json", "data_report.json", "model.json", "model.safetensors", "results.csv", "metrics.json"),
    *("evaluation.json", "per_class.csv", "confusion_matrix.png", "top_losses.png", "predictions.png", "pr_curves.png"),
    *("report.html", "curves.png", "leaderboard.csv", "auto.json", "members", "eval-test", "resume.safetensors"),
    *("tensorboard", "mlflow.json", "quantization.json", "model.pt2", "onnx-int8"),
    *("model.onnx", "model.onnx.json", "model.torchscript.pt", "model.torchscript.pt.json"),
)


def make_run_dir(cfg: TrainConfig) -> Path:
    """``--out/--name`` (or the next free ``NNN-<arch>-<mode>``), created; an existing one only with --exist-ok,
    and then without the previous model's results (:func:`clear_previous_results`)."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    name = cfg.name or next_run_name(cfg.out, f"{cfg.arch.replace('/', '_')}-{cfg.mode}")
    run_dir = cfg.out / name
    existed = run_dir.exists()
    if existed and not cfg.exist_ok:
        raise ConfigError(
            f"run directory {run_dir} already exists: choose another --name, or pass --exist-ok to replace its files"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if existed and (run_dir / "config.json").exists():  # a run was here (not the --auto search's own folder)
        clear_previous_results(run_dir)
    return run_dir


def clear_previous_results(run_dir: Path) -> list[str]:
    """Remove the results a previous run left in ``run_dir`` (:data:`PREVIOUS_RESULTS`, the ``lr_find-*`` range
    tests of ``--lr auto``, and ``graft evaluate``'s ``eval-*`` folders, known by their evaluation.json); a link
    is removed, never followed. The names removed, sorted."""
    import shutil

    names = set(PREVIOUS_RESULTS) | {p.name for p in run_dir.glob("lr_find-*.csv")}
    names |= {p.name for p in run_dir.glob("lr_find-*.png")}
    names |= {p.name for p in run_dir.glob("eval-*") if (p / "evaluation.json").is_file() and not p.is_symlink()}
    removed = []
    for name in sorted(names):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def write_start(run_dir: Path, cfg: TrainConfig, dataset: Any, precision: dict[str, Any] | None = None) -> None:
    """What a run records before its first epoch: the resolved options (config.json; ``precision``: the resolved
    ``--precision`` and the CPU features that decided it) and the data it found and how it split it
    (data_report.json, whose ``split`` every later command reads back)."""
    stages = cfg.stages()
    resolved = {"resolved_lr": stages[-1][2], "stages": stages}
    if precision is not None:
        resolved["resolved_precision"] = precision
    atomic.atomic_write_json(run_dir / "config.json", cfg.to_dict() | resolved)
    write_data_report(run_dir, dataset)


def write_data_report(run_dir: Path, dataset: Any, **found: Any) -> None:
    """data_report.json; ``found``: what the run learnt about its data later (the val images with a near-copy in
    train), written with the rest when it is known."""
    report = dataset.report.to_dict() | {"split": dataset.split_dict()} | found
    if dataset.report.layout == "table":  # a table's paths do not name their class: keep the labels beside them
        report["split_labels"] = dataset.split_labels()
    atomic.atomic_write_json(run_dir / DATA_REPORT, report)


def check_same_split(run_dir: Path, dataset: Any) -> None:
    """A resumed run must see the images its first part trained on, split the same way."""
    saved = atomic.read_json(run_dir / DATA_REPORT).get("split")
    if saved != dataset.split_dict():
        raise DataError(
            f"--resume {run_dir}: the dataset changed since the run started (its train/val split differs from "
            f"{run_dir / DATA_REPORT}); resume with the same images, or start a new run"
        )


@dataclass(frozen=True)
class SavedSplit:
    """One split as ``data_report.json`` saved it: file names relative to the data root, in saved order."""

    root: Path
    rels: list[str]
    layout: str
    labels: dict[str, str] | None = None  # rel -> class name, saved for a table (its paths do not name the class)

    def class_of(self, rel: str) -> str:
        if self.labels is not None:
            return self.labels[rel]
        parts = Path(rel).parts
        return parts[1] if self.layout == "train/val" else parts[0]

    def items(self, classes: list[str]) -> tuple[list[Path], list[int], list[str]]:
        """(paths, labels) of the files whose class is among ``classes``, and the names of those whose class is
        not (each caller decides whether that is an error)."""
        index = {c: i for i, c in enumerate(classes)}
        paths, labels, unknown = [], [], []
        for rel in self.rels:
            name = self.class_of(rel)
            if name in index:
                paths.append(self.root / rel)
                labels.append(index[name])
            else:
                unknown.append(rel)
        return paths, labels, unknown


def read_split(run_dir: Path, split: str) -> SavedSplit | None:
    """The saved ``train`` or ``val`` split of a run, or None when data_report.json is missing, damaged or has
    none (each caller says what to do instead)."""
    report = atomic.read_json_or(run_dir / DATA_REPORT)
    try:
        rels = list(report["split"][split])
        labels = report.get("split_labels")
        named = dict(zip(rels, labels[split], strict=True)) if labels else None
        return SavedSplit(Path(report["root"]), rels, str(report.get("layout", "")), named)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RunSplit:
    """A run's saved split as files: ``paths`` in saved order, their class indices (``labels``: empty when no
    classes were given) and the data root they were found under."""

    root: Path
    paths: list[Path]
    labels: list[int]


def run_split(
    run_dir: Path,
    split: str = "val",
    classes: Sequence[str] | None = None,
    *,
    fix: str | None = None,
    skip_unknown: bool = False,
    check_files: bool = True,
) -> RunSplit:
    """The ``train`` or ``val`` images a run was trained and validated on (``data_report.json``), in saved order.

    ``classes``: keep the files of these classes and label them (a file of another class is an error, or left
    out with ``skip_unknown``); None keeps every file. ``check_files``: the data must still be where it was
    trained (the first file is looked for). ``fix`` ends the error messages: what the caller's user can do.

    Raises:
        RunError: no saved split, the images moved, or a class the model does not know.
    """
    default = f"pass the data folder: graft evaluate {run_dir} DATA" if split == "val" else None
    fix = fix or default or "put the data back where the run was trained, or train the run again"
    saved = read_split(run_dir, split)
    if saved is None:
        raise RunError(f"{run_dir / DATA_REPORT} has no saved {split} split (missing or damaged); {fix}")
    if check_files and saved.rels and not (saved.root / saved.rels[0]).exists():
        raise RunError(
            f"the run's {split} images are not under {saved.root} any more (e.g. {saved.rels[0]} is missing); {fix}"
        )
    if classes is None:
        return RunSplit(saved.root, [saved.root / rel for rel in saved.rels], [])
    paths, labels, unknown = saved.items(list(classes))
    if unknown and not skip_unknown:
        raise RunError(
            f"{run_dir / DATA_REPORT} lists {unknown[0]}, whose class {saved.class_of(unknown[0])!r} the "
            "model does not know"
        )
    return RunSplit(saved.root, paths, labels)


def model_meta(
    cfg: TrainConfig, spec: Any, weights: Any, pretrained: Any, preprocess: Any, classes: list[str]
) -> dict[str, Any]:
    """``model.json`` of a float run: everything needed to rebuild the model without pickle."""
    torchvision = import_torchvision()
    return {
        "format": ckpt.FORMAT,
        "arch": spec.name,
        "arch_source": spec.source,
        "arch_kwargs": spec.arch_kwargs(weights),
        "in_features": spec.in_features,
        "classes": classes,
        "head": HeadSpec(cfg.hidden, cfg.dropout).to_dict(),
        "preprocess": preprocess.to_dict(),
        "mode": cfg.mode,
        "pretrained": pretrained.to_dict(),
        "versions": {
            "graft": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
    }


def save_model(
    run_dir: Path, model: nn.Module, meta: dict[str, Any], *, best: dict[str, torch.Tensor] | None = None
) -> None:
    """Weights (with a copy of model.json inside) first, then model.json: see :func:`graft.core.checkpoint.save_model`.

    ``best``: a state dict kept by the loop for an earlier epoch (of the whole model, or of the head during a head
    stage, possibly under a DDP ``module.`` prefix) to save instead of the model's current weights."""
    state = model.state_dict()
    if best is not None:
        best = {k.removeprefix("module."): v for k, v in best.items()}
        state = state | (best if best.keys() <= state.keys() else {f"head.{k}": v for k, v in best.items()})
    ckpt.save_model(run_dir, state, meta)


def next_run_name(out: Path, stem: str) -> str:
    """``NNN-stem`` with NNN one more than the largest number already used in ``out``."""
    used = [int(p.name.split("-", 1)[0]) for p in out.glob("[0-9][0-9][0-9]-*") if p.name[:3].isdigit()]
    return f"{max(used, default=0) + 1:03d}-{stem}"
