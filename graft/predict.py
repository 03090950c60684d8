"""Load a run and classify images: ``graft.load(run_dir).predict(images, top_k=5)``."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft import checkpoint as ckpt
from graft.errors import GraftError, ImageError, RunError
from graft.heads import HeadSpec
from graft.preprocess import Preprocess, eval_transform
from graft.runtime import autocast, fast_inference, pick_device, prepare_input

ImageInput = str | os.PathLike[str] | Any  # a path or a PIL image


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability}


@dataclass(frozen=True)
class PathResult:
    """The predictions for one file, or why it could not be read."""

    path: str
    predictions: list[Prediction] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [p.to_dict() for p in self.predictions or []]}


class Classifier:
    """A trained run, ready to predict. Build it with :func:`load`."""

    def __init__(
        self, model: torch.nn.Module, meta: dict[str, Any], device: torch.device, run_dir: Path, *, prepare: bool = True
    ) -> None:
        self.model = model.eval()
        self.meta = meta
        self.device = device
        self.run_dir = run_dir
        self.classes: list[str] = list(meta["classes"])
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        self._transform = eval_transform(self.preprocess)
        if prepare:
            self.prepare()

    def prepare(self) -> Classifier:
        """Build the runner of the body now (:func:`graft.runtime.fast_inference`: BatchNorm folded by torch.fx).

        :func:`load` does this unless told not to (a run's report reads the stored val features and needs only
        the head). It must happen before images are decoded on other threads: torch.fx's tracing patches
        ``nn.Module.__call__`` for the whole process, and would catch a transform running meanwhile."""
        self._inference  # noqa: B018
        return self

    def float_model(self) -> torch.nn.Module | None:
        """The eager float model, whose ``body`` and ``head`` can be used apart: the head on a frozen run's stored
        features (``graft evaluate``), the body's layers for Grad-CAM. None for a classifier that runs one compiled
        program with no such parts (an int8 run)."""
        return self.model

    @functools.cached_property
    def _inference(self) -> torch.nn.Sequential:
        return torch.nn.Sequential(fast_inference(self.model.body, self.device), self.model.head).eval()

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed batch ``(B, 3, H, W)``."""
        with autocast(self.device):
            return self._inference(prepare_input(batch, self.device, self._inference[0])).float().cpu()

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5, batch_size: int = 32
    ) -> list[list[Prediction]] | list[Prediction]:
        """Top-k predictions. One image (path or PIL image) -> a list of :class:`Prediction`; a list of
        images -> a list of such lists. An unreadable file raises :class:`graft.errors.ImageError`."""
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        out: list[list[Prediction]] = []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([self._tensor(x) for x in items[start : start + batch_size]])
            out.extend(self._top_k(self.logits(batch), top_k))
        return out[0] if single else out

    def predict_paths(
        self, paths: Iterable[Path], *, top_k: int = 5, batch_size: int = 32, workers: int | None = None
    ) -> Iterator[PathResult]:
        """Stream over files in order; a bad file yields a result with ``error`` instead of stopping.

        ``workers`` threads decode ahead of the model (default :func:`decode_threads`; 0 decodes in this thread).
        At most two batches of decoded images are held at a time, so memory stays constant however many files
        ``paths`` yields (it may be a lazy iterator, e.g. :func:`iter_paths`)."""
        pending: list[tuple[Path, torch.Tensor]] = []

        def flush() -> Iterator[PathResult]:
            if pending:
                preds = self._top_k(self.logits(torch.stack([t for _, t in pending])), top_k)
                yield from (PathResult(str(p), predictions=pr) for (p, _), pr in zip(pending, preds, strict=True))
                pending.clear()

        for path, tensor, error in self._decoded(paths, workers=workers, ahead=2 * batch_size):
            if tensor is None:
                yield from flush()
                yield PathResult(str(path), error=error)
                continue
            pending.append((path, tensor))
            if len(pending) == batch_size:
                yield from flush()
        yield from flush()

    def tensor(self, image: ImageInput) -> torch.Tensor:
        """One image (a path or a PIL image) as the model's input ``(3, H, W)``: what :meth:`predict` feeds
        :meth:`logits` in a batch. An unreadable file raises :class:`graft.errors.ImageError`."""
        return self._tensor(image)

    def _decoded(
        self, paths: Iterable[Path], *, workers: int | None, ahead: int
    ) -> Iterator[tuple[Path, torch.Tensor | None, str | None]]:
        """``(path, tensor, None)`` or ``(path, None, reason)`` in input order, decoded ``ahead`` files in advance."""
        import itertools
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        def decode(path: Path) -> tuple[Path, torch.Tensor | None, str | None]:
            try:
                return path, self._tensor(path), None
            except ImageError as e:
                return path, None, e.reason

        n = decode_threads() if workers is None else workers
        if n <= 0:
            yield from map(decode, paths)
            return
        it = iter(paths)
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="graft-decode") as pool:
            window = deque(pool.submit(decode, p) for p in itertools.islice(it, max(1, ahead)))
            while window:
                item = window.popleft().result()
                for p in itertools.islice(it, 1):
                    window.append(pool.submit(decode, p))
                yield item

    def _tensor(self, image: ImageInput) -> torch.Tensor:
        from PIL import Image

        from graft.data import load_rgb

        if isinstance(image, Image.Image):
            return self._transform(image.convert("RGB"))
        return self._transform(load_rgb(image, draft=self.preprocess.resize_size))

    def _top_k(self, logits: torch.Tensor, k: int) -> list[list[Prediction]]:
        probs = logits.softmax(dim=1)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [Prediction(self.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)]
            for vs, ix in zip(values, indices, strict=True)
        ]


def is_int8(meta: dict[str, Any]) -> bool:
    """Whether ``model.json`` content ``meta`` describes an int8 run (``graft quantize``, ``graft train --int8``,
    ``--mode qat``): their writer (:func:`graft.quantization.finish_int8_run`) records the program file and a
    ``quantization`` block with its format. The one test every command uses."""
    info = meta.get("quantization")
    quantized = isinstance(info, dict) and str(info.get("format", "")).startswith("graft-int8/")
    return quantized or bool(meta.get("program_file"))


def read_meta(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/model.json`` as a dict, or None when it is missing, unreadable or not an object (a float run's
    loader then recovers it from the weights file, see :func:`graft.checkpoint.load_model`)."""
    try:
        meta = ckpt.read_json(run_dir / ckpt.META_FILE)
    except RunError:
        return None
    return meta if isinstance(meta, dict) else None


def load(run_dir: str | os.PathLike[str], *, device: str = "auto", prepare: bool = True) -> Classifier:
    """Rebuild a trained model from its run directory (``model.json`` + ``model.safetensors``; no pickle).

    ``prepare=False`` leaves the body's runner to :meth:`Classifier.prepare` (for callers that may need only the
    head)."""
    from graft.backbones import get_backbone
    from graft.model import build_for_inference

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist; pass a folder written by graft train")
    meta = read_meta(run_dir)
    if meta is not None and is_int8(meta):
        from graft.quantization import load_int8

        return load_int8(run_dir, meta, device=device)
    meta, state = ckpt.load_model(run_dir)  # sha256 verified; a crash between the two writes is resolved
    if meta.get("format") != ckpt.FORMAT:
        raise RunError(f"{run_dir / ckpt.META_FILE} has format {meta.get('format')!r}; this graft reads {ckpt.FORMAT}")
    spec = get_backbone(meta["arch"])
    arch_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.get("arch_kwargs", {}).items()}
    model = build_for_inference(spec, len(meta["classes"]), HeadSpec.from_dict(meta["head"]), arch_kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(f"{run_dir / ckpt.MODEL_FILE} does not fit the model described in model.json: {e}") from None
    dev = pick_device(device)
    return Classifier(model.to(dev), meta, dev, run_dir, prepare=prepare)


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders walked recursively (sorted, hidden entries left out): ``list(iter_paths(paths))``."""
    return list(iter_paths(paths))


def iter_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files as given, folders walked recursively, lazily: one folder's entries in memory at a time.

    Entries are sorted by name within each folder (the same order as sorting the full paths); hidden entries are
    left out; symbolic links are followed, a folder reached twice is walked once; a broken link is yielded (reading
    it then says why it fails). A path that does not exist raises :class:`GraftError` before anything is yielded.
    """
    given = [Path(p) for p in paths]
    for p in given:
        if not (p.exists() or p.is_symlink()):
            raise GraftError(f"{p} does not exist; pass image files or folders of images")
    return _walk_given(given)


def _walk_given(given: list[Path]) -> Iterator[Path]:
    for p in given:
        if p.is_dir():
            yield from _walk_folder(p, set())
        else:
            yield p


def _walk_folder(folder: Path, seen: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        st = folder.stat()
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:  # an unreadable folder holds nothing we can read
        return
    if (st.st_dev, st.st_ino) in seen:
        return
    seen.add((st.st_dev, st.st_ino))
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk_folder(folder / e.name, seen)
        elif e.is_file() or e.is_symlink():
            yield folder / e.name


def decode_threads() -> int:
    """Threads decoding images ahead of the model in :meth:`Classifier.predict_paths`: half the cores, 1 to 4.

    The model's own threads use every core; on 2 cores one decoding thread ran the val folder ~1.5x faster than
    none, and two were slower than one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


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


def predict_to_csv(
    clf: Classifier,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    names: dict[str, str] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> CsvSummary:
    """Classify every image under ``inputs`` (files or folders) into a CSV file, streaming.

    Columns: ``path``, ``label`` and ``probability`` (the top class), ``top_k`` (a JSON object mapping the top
    ``top_k`` labels to their probabilities, best first) and ``error`` (why a file could not be read; its other
    cells are then empty). Rows are in :func:`iter_paths` order and written batch by batch to ``OUT.partial``,
    renamed to ``out`` at the end, so memory stays constant and an interrupted run keeps the rows it finished.
    A progress bar shows on an interactive terminal. ``names`` maps class names to display names.
    ``shard=(i, n)`` classifies only every ``n``-th file from the ``i``-th (one process's share under torchrun,
    see :func:`graft.distributed.predict_to_csv`).
    """
    import csv
    import itertools
    import sys
    import time

    from graft.runtime import progress

    out = Path(out)
    index, count = shard
    paths = itertools.islice(iter_paths(inputs), index, None, count)
    total = sum(1 for _ in iter_paths(inputs)) if sys.stderr.isatty() else None  # a cheap walk, for the bar only
    total = len(range(index, total, count)) if total is not None else None
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    names = names or {}
    images = errors = 0
    start = time.perf_counter()
    with open(partial, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:  # non-UTF-8 names
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        results = clf.predict_paths(paths, top_k=top_k, batch_size=batch_size, workers=workers)
        for r in progress(results, desc="predict", total=total):
            images += 1
            if r.error is not None or not r.predictions:
                errors += 1
                writer.writerow([r.path, "", "", "", r.error or "no prediction"])
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
