"""``graft predict ... --out FILE.csv``: every image under the inputs into a CSV, streaming; under torchrun each
process classifies its share and rank 0 merges the parts in input order."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core import distributed as dist
from graft.core.config.data import BATCH_SIZE
from graft.core.config.inference import TOP_K
from graft.core.errors import GraftError
from graft.inference.classifier import Classifier
from graft.inference.paths import OnSkip, iter_paths


@dataclass(frozen=True)
class CsvSummary:
    """What :func:`predict_to_csv` wrote."""

    path: Path
    images: int
    errors: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


CSV_COLUMNS = ("path", "label", "probability", "top_k", "error")
#: a multi-label run's CSV: the labels over their thresholds (``;``-separated, most probable first) and theirs
MULTILABEL_COLUMNS = ("path", "labels", "probabilities", "error")


def predict_to_csv(
    clf: Classifier,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    top_k: int = TOP_K.default,
    batch_size: int = BATCH_SIZE.default,
    workers: int | None = None,
    names: dict[str, str] | None = None,
    shard: tuple[int, int] = (0, 1),
    follow_links: bool = False,
    on_skip: OnSkip | None = None,
) -> CsvSummary:
    """Classify every image under ``inputs`` (files or folders) into a CSV file, streaming.

    Columns: ``path``, ``label`` and ``probability`` (the top class), ``top_k`` (a JSON object mapping the top
    ``top_k`` labels to their probabilities, best first) and ``error`` (why a file could not be read; its other
    cells are then empty); a multi-label run's columns are ``path``, ``labels`` (every label over its threshold,
    ``;``-separated, most probable first; empty when none is), ``probabilities`` (theirs, JSON) and ``error``. Rows
    are in :func:`iter_paths` order and written batch by batch to ``OUT.partial``,
    renamed to ``out`` at the end, so memory stays constant and an interrupted run keeps the rows it finished.
    A progress bar shows on an interactive terminal. ``top_k`` and ``batch_size`` default as ``graft predict``'s;
    ``names`` maps class names to display names.
    ``shard=(i, n)`` classifies only every ``n``-th file from the ``i``-th (one process's share under torchrun,
    see :func:`graft.core.distributed.predict_to_csv`). ``follow_links`` and ``on_skip`` are :func:`iter_paths`'s.
    """
    import csv
    import itertools
    import sys
    import time

    from graft.core.progress import progress

    out = Path(out)
    index, count = shard
    paths = itertools.islice(iter_paths(inputs, follow_links=follow_links, on_skip=on_skip), index, None, count)
    bar = sys.stderr.isatty()  # then a cheap walk first, for the bar's total
    total = sum(1 for _ in iter_paths(inputs, follow_links=follow_links)) if bar else None
    total = len(range(index, total, count)) if total is not None else None
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    names = names or {}
    images = errors = 0
    start = time.perf_counter()
    with open(partial, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:  # non-UTF-8 names
        writer = csv.writer(f, lineterminator="\n")
        multilabel = getattr(clf, "multilabel", False)
        writer.writerow(MULTILABEL_COLUMNS if multilabel else CSV_COLUMNS)
        results = clf.predict_paths(paths, top_k=top_k, batch_size=batch_size, workers=workers)
        for r in progress(results, desc="predict", total=total):
            images += 1
            if multilabel and r.error is None:  # no label over its threshold is an answer, not an error
                preds = [(names.get(p.label, p.label), p.probability) for p in r.predictions or []]
                probs = json.dumps({label: round(prob, 6) for label, prob in preds}, ensure_ascii=False)
                writer.writerow([r.path, ";".join(label for label, _ in preds), probs, ""])
            elif r.error is not None or not r.predictions:
                errors += 1
                writer.writerow([r.path, *[""] * (2 if multilabel else 3), r.error or "no prediction"])
            else:
                preds = [(names.get(p.label, p.label), p.probability) for p in r.predictions]
                top = json.dumps({label: round(prob, 6) for label, prob in preds}, ensure_ascii=False)
                writer.writerow([r.path, preds[0][0], f"{preds[0][1]:.6f}", top, ""])
            if images % batch_size == 0:
                f.flush()
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, out)
    return CsvSummary(out, images, errors, time.perf_counter() - start)


def read_category_names(path: Path) -> dict[str, str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GraftError(f"cannot read --category-names {path}: {e}; it must be a JSON object") from None
    if not isinstance(names, dict):
        raise GraftError(f"--category-names {path} must hold a JSON object mapping class names to display names")
    return {str(k): str(v) for k, v in names.items()}


def predict_to_csv_sharded(
    clf: Any, inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], **kw: Any
) -> Any:
    """:func:`predict_to_csv` with the files shared out: rank ``r`` classifies every
    ``world_size``-th file from the ``r``-th into ``OUT.rank<r>``; rank 0 then merges the parts into ``OUT`` in
    input order (streaming) and deletes them. Returns the summary of the whole run on rank 0 (and the summary of
    its own share on the others)."""
    if not dist.is_distributed():
        return predict_to_csv(clf, inputs, out, **kw)
    import torch.distributed as tdist

    out = Path(out)
    r, w = dist.rank(), dist.world_size()
    part = out.with_name(f"{out.name}.rank{r}")
    mine = predict_to_csv(clf, inputs, part, shard=(r, w), **kw)
    summaries: list[Any] = [None] * w
    tdist.all_gather_object(summaries, (mine.images, mine.errors, mine.seconds))
    if not dist.is_main():
        dist.barrier()  # rank 0 merges
        return mine
    parts = [out.with_name(f"{out.name}.rank{i}") for i in range(w)]
    merge_parts(parts, out)
    for p in parts:
        p.unlink(missing_ok=True)
    dist.barrier()
    return CsvSummary(
        out,
        images=sum(s[0] for s in summaries),
        errors=sum(s[1] for s in summaries),
        seconds=max(s[2] for s in summaries),
    )


def merge_parts(parts: list[Path], out: Path) -> None:
    """Interleave the part files' rows (part ``i`` holds rows ``i, i + w, ...``) into ``out``, atomically."""
    partial = out.with_name(out.name + ".partial")
    files = [open(p, newline="", encoding="utf-8", errors="surrogateescape") for p in parts]  # noqa: SIM115
    try:
        readers = [csv.reader(f) for f in files]
        headers = [next(rd) for rd in readers]  # one per part, all alike
        with open(partial, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(headers[0])
            while True:  # part i holds rows i, i + w, ...: the first part to run out ends the last round
                rows = []
                for rd in readers:
                    row = next(rd, None)
                    if row is None:
                        break
                    rows.append(row)
                writer.writerows(rows)
                if len(rows) < len(readers):
                    break
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in files:
            f.close()
    os.replace(partial, out)


def stream_csv(out: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[str]]) -> tuple[int, bool]:
    """Write ``rows`` under ``header`` as they come (a video's frames: any number, from a camera without end) to
    ``OUT.partial``, flushed every 32 rows, fsynced and renamed to ``out`` at the end. Ctrl-C ends ``rows``
    instead of the command: the rows written so far are kept; an error leaves no file. Returns ``(rows written,
    interrupted)``."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    n, interrupted = 0, False
    try:
        with open(partial, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            try:
                for row in rows:
                    writer.writerow(row)
                    n += 1
                    if n % 32 == 0:
                        f.flush()
            except KeyboardInterrupt:
                interrupted = True
            f.flush()
            os.fsync(f.fileno())
    except Exception:
        partial.unlink(missing_ok=True)  # the error says what went wrong; half a table is left nowhere
        raise
    os.replace(partial, out)
    return n, interrupted
