"""``graft suggest`` and :func:`graft.suggest`: a pool of unlabelled images in the order worth labelling them.

The pool is listed (a folder walked as ``graft predict`` walks one, or a table's path column), the images the run
trained on are left out, and one pass through the run's body gives each image its feature (the body's pooled
output) and, through the head, its class probabilities; :func:`graft.insight.suggest.rank` orders them. For
``diverse``, the features of the run's train images (the labelled ones) keep the picks away from what the run has
seen; a frozen run reads them from the feature store its training filled.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.config import SuggestConfig, from_options
from graft.core.config.fields import takes_fields
from graft.core.errors import DataError, GraftError, RunError
from graft.insight.suggest import AUTO, rank

#: the CSV's columns, in order
COLUMNS = ("path", "suggested", "confidence", "rank")


@dataclass(frozen=True)
class SuggestRow:
    """One pool image: the run's most probable class and its probability, and its place (1: label it first)."""

    path: str
    suggested: str
    confidence: float
    rank: int


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@takes_fields(SuggestConfig, "run", "pool")
def suggest(
    run: str | Path, pool: str | Path, /, *, log: Callable[[str], None] = _stderr, **options: Any
) -> list[SuggestRow]:
    """Rank the images of ``pool`` (a folder, or a .csv/.tsv with a path column) by how much labelling each would
    help ``run``; ``options`` are the fields of :class:`SuggestConfig` (``n``, ``strategy``, ``out``, ...).
    ``log``: where the skipped files and notes go.

    Returns every pool image not trained on, as :class:`SuggestRow`, in rank order; with ``out``, also writes
    them there as a CSV."""
    return run_suggest(from_options(SuggestConfig, options, run=run, pool=pool), log=log)


def run_suggest(cfg: SuggestConfig, *, log: Callable[[str], None] = _stderr) -> list[SuggestRow]:
    """:func:`suggest` with a :class:`SuggestConfig` (checked when it was made)."""
    from graft.core.atomic import write_csv
    from graft.inference.loading import load

    if not cfg.run.is_dir():
        raise RunError(f"run directory {cfg.run} does not exist; pass a folder written by graft train")
    trained = _train_paths(cfg.run, log)
    listed = pool_paths(cfg.pool)
    if not listed:
        raise DataError(f"{cfg.pool} holds no files; pass a folder (or CSV) of unlabelled images")
    paths = [p for p in listed if p.resolve() not in trained]
    if not paths:
        raise DataError(
            f"all {len(listed)} files of {cfg.pool} are images the run trained on; pass unlabelled images it has "
            "not seen"
        )
    clf = load(cfg.run, device=cfg.device)
    if clf.multilabel:
        raise RunError(f"{cfg.run} is a multi-label run; graft suggest ranks single-label runs' pools")
    probs, feats, kept = pool_outputs(clf, paths, batch_size=cfg.batch_size, log=log)
    if not kept:
        seen = len(listed) - len(paths)
        found = (
            f"{seen} of its {len(listed)} files are images the run trained on, the other {len(paths)}"
            if seen
            else (f"its {len(paths)} files")
        )
        raise DataError(
            f"{cfg.pool}: {found} could not be read as images; pass a folder (or CSV) of unlabelled images the run "
            "has not seen"
        )
    strategy = AUTO if cfg.strategy == "auto" else cfg.strategy
    labelled = None
    if strategy == "diverse" and feats is not None and trained:
        labelled = train_features(clf, sorted(trained), batch_size=cfg.batch_size, log=log)
    order = rank(probs, feats, strategy=cfg.strategy, n=cfg.n, labelled=labelled, seed=cfg.seed)
    best = probs.argmax(1)
    rows = [
        SuggestRow(str(kept[i]), clf.classes[int(best[i])], float(probs[i, best[i]]), place)
        for place, i in enumerate(order.tolist(), 1)
    ]
    if cfg.out is not None:
        write_csv(cfg.out, list(COLUMNS), [[r.path, r.suggested, f"{r.confidence:.6f}", r.rank] for r in rows])
    return rows


def pool_paths(pool: Path) -> list[Path]:
    """The files of ``pool``: a folder walked recursively (sorted, hidden entries left out, as ``graft predict``
    walks one), or the path column of a .csv/.tsv table (relative paths from the table's folder)."""
    from graft.data.tables import TABLE_SUFFIXES
    from graft.inference.paths import expand_paths

    if not pool.exists():
        raise DataError(f"{pool} does not exist; pass a folder of unlabelled images or a CSV of their paths")
    if pool.is_file() and pool.suffix.lower() in TABLE_SUFFIXES:
        return _table_paths(pool, TABLE_SUFFIXES[pool.suffix.lower()])
    if not pool.is_dir():
        raise DataError(f"{pool} is neither a folder nor a .csv/.tsv table; pass a folder of unlabelled images")
    return expand_paths([pool], on_skip=lambda link, why: _stderr(f"note: {link}: {why}"))


def _table_paths(table: Path, delimiter: str) -> list[Path]:
    from graft.data.tables import PATH_COLUMNS

    try:
        with open(table, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(
            f"cannot read the pool table {table} ({e}); save it as a UTF-8 CSV with a path column"
        ) from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    column = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    if column is None:
        raise DataError(f"{table} has no path column; name the column of image paths one of {', '.join(PATH_COLUMNS)}")
    cells = [r[column].strip() for r in rows[1:] if column < len(r) and r[column].strip()]
    return [table.parent / c for c in cells]


def _train_paths(run: Path, log: Callable[[str], None]) -> set[Path]:
    """The run's train images, resolved (the split ``data_report.json`` saved); empty, with a note, without one."""
    from graft.core.rundir import run_split

    try:
        split = run_split(run, "train", check_files=False)
    except RunError as e:
        log(f"note: the run's train images are not known, none is left out of the pool ({e})")
        return set()
    return {p.resolve() for p in split.paths}


def pool_outputs(
    clf: Any, paths: list[Path], *, batch_size: int, log: Callable[[str], None]
) -> tuple[np.ndarray, np.ndarray | None, list[Path]]:
    """Class probabilities and features (the body's pooled output; None for a run whose body cannot be run apart
    from its head, such as an int8 one) of the readable images at ``paths``, and those paths. An unreadable file is
    skipped with one line to ``log``."""
    import torch

    from graft.core.device import autocast, prepare_input
    from graft.inference.float_classifier import body_and_head

    model = clf.float_model()
    clf.prepare()  # before the decoding threads start (see FloatClassifier.prepare)
    net = body_and_head(model, clf.device) if model is not None else None
    probs, feats, kept = [], [], []
    for batch in clf.batches(paths, batch_size=batch_size):
        for path, why in batch.unreadable:
            log(f"{path}  skipped: {why}")
        if batch.images is None:
            continue
        with torch.inference_mode():
            if net is None:
                logits = clf.predict_logits(batch.images)
            else:
                with autocast(clf.device):
                    f = net[0](prepare_input(batch.images, clf.device, net[0]))
                    logits = net[1](f)
                feats.append(f.float().cpu().numpy())
        probs.append(logits.float().softmax(1).cpu().numpy())
        kept += [paths[i] for i in batch.positions]
    if not kept:
        return np.zeros((0, len(clf.classes))), None, []
    return np.concatenate(probs), (np.concatenate(feats) if feats else None), kept


def train_features(clf: Any, paths: list[Path], *, batch_size: int, log: Callable[[str], None]) -> np.ndarray | None:
    """Features of the run's train images through its body: from the feature store for a frozen run that stored
    them (computing any that are missing), else computed now. None, with a note, when they cannot be read."""
    from graft.data.samples import Sample
    from graft.features.store import body_key, cached_features, extract_features

    model, meta = clf.float_model(), clf.meta
    samples = [Sample(p, 0) for p in paths if p.exists()]
    if model is None or not samples:
        return None
    key = body_key(meta.arch, meta.arch_kwargs, (meta.pretrained or {}).get("sha256"), clf.device.type)
    common = {"device": clf.device, "batch_size": batch_size, "desc": "train features"}
    try:
        if meta.mode == "freeze" and key is not None:
            feats, _ = cached_features(model.body, samples, clf.preprocess, key, **common)
        else:
            feats = extract_features(model.body, samples, clf.preprocess, **common)
    except (GraftError, OSError) as e:
        log(f"note: the run's train images could not be read ({e}); diverse keeps only the picks apart")
        return None
    return feats.numpy()


def format_rows(rows: list[SuggestRow], n: int) -> str:
    """The first ``n`` rows as a table: rank, suggested class, its probability, path."""
    shown = rows[:n]
    width = max([len("suggested"), *(len(r.suggested) for r in shown)])
    lines = [f"{'rank':>4}  {'suggested':<{width}}  confidence  path"]
    lines += [f"{r.rank:>4}  {r.suggested:<{width}}  {r.confidence:>10.3f}  {r.path}" for r in shown]
    return "\n".join(lines)
