"""Frozen-backbone features, computed once per image and kept on disk.

A frozen backbone maps an image to the same vector in every epoch, so graft runs it once per image (eval mode,
no grad, batched, channels_last) and trains the head on the stored vectors. The store is keyed by everything
the vector depends on (:func:`store_key`): architecture, builder kwargs, sha256 of the starting weights, device,
preprocessing, view, and the engine that ran the body (ONNX Runtime or torch, whose rows differ in the last bits:
one store never mixes them, so a run's val rows are the very rows ``graft evaluate`` reads back); a file is
identified by its absolute path, size and modification time, so an edited image is recomputed. A second run,
another head or another seed reuses the features.

Layout of one store (``$GRAFT_CACHE_DIR/features/<key>/``): ``features.f32``, a raw float32 matrix appended
to and read through ``numpy.memmap`` (memory does not grow with the number of images beyond the matrix that is
asked for), and ``index.json``, mapping file identity -> (row, checksum). Every row read is checked against its
checksum; a damaged row is recomputed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.atomic import atomic_write_json
from graft.core.device import autocast, prepare_input, release_freed_memory
from graft.core.fast_inference import OnnxRuntimeModule, fast_inference
from graft.core.loaders import inference_loader, threaded_batches
from graft.core.paths import cache_root
from graft.core.preprocess import Preprocess, eval_crop, normalize, train_crop
from graft.core.progress import progress
from graft.data.datasets import ImageDataset
from graft.data.folders import Sample
from graft.data.images import DecodedImages, load_rgb

CACHE_VERSION = 1
#: The engines a body's rows can come from (see :func:`graft.core.fast_inference.fast_inference`).
ENGINES = ("onnxruntime", "torch")


def body_key(
    arch: str, arch_kwargs: Mapping[str, Any], weights_sha256: str | None, device: str
) -> dict[str, Any] | None:
    """Which body computed a store's rows: architecture, builder kwargs, the sha256 of its weights, device type.
    None when the weights are not known exactly (random init differs per seed): such rows are never stored.
    :func:`store_key` adds preprocessing, view and engine; training, int8 training and evaluation all build their
    keys from this, so a store written by one is found by the others."""
    if not weights_sha256:
        return None
    return {"arch": arch, "arch_kwargs": dict(arch_kwargs), "weights_sha256": weights_sha256, "device": device}


def store_key(
    *,
    arch: str,
    preprocess: Preprocess,
    view: int,
    engine: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    weights_sha256: str | None = None,
    device: str = "cpu",
    augment: str = "standard",
    precision: str = "auto",
) -> dict[str, Any]:
    """The key of one feature store: everything its rows depend on. Training and ``graft evaluate`` both build
    keys here, so evaluation finds exactly the rows training's val phase used.

    ``engine`` is the engine that computed the rows (``"onnxruntime"`` or ``"torch"``): both run the same
    BatchNorm-folded body, but their kernels round differently, and rows of both in one matrix would make a run's
    val accuracy a mixture that neither engine reproduces. ``precision``: a torch pass in another precision than
    inference's (``bf16`` on the CPU, ``fp32`` on a CUDA GPU) computes other rows; ``auto`` keeps the old keys."""
    if engine not in ENGINES:
        raise ValueError(f"unknown feature engine {engine!r}; one of {', '.join(ENGINES)}")
    # augmented views (view > 0) of another --augment policy are other rows; the standard ones keep their old key
    policy = {"augment": augment} if view and augment != "standard" else {}
    policy |= {"precision": precision} if precision != "auto" and engine == "torch" else {}
    return policy | {
        "version": CACHE_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "weights_sha256": weights_sha256,
        "device": device,
        "preprocess": preprocess.to_dict(),
        "view": view,
        "engine": engine,
    }


def planned_engine(device: torch.device) -> str:
    """The engine :func:`graft.core.fast_inference.fast_inference` gives a body that torch.fx traces: ONNX Runtime
    on the CPU when it is installed and ``GRAFT_ENGINE`` is not ``torch``, else torch. Known without building
    anything, so a store can be read without running the body; a body that falls back to torch is settled by
    :func:`body_engine`."""
    if device.type != "cpu" or os.environ.get("GRAFT_ENGINE", "auto") == "torch":
        return "torch"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def body_engine(body: nn.Module, samples: Sequence[Sample], preprocess: Preprocess, device: torch.device) -> str:
    """The engine that computes ``body``'s rows in this process: that of its :func:`fast_inference` runner.

    An ONNX Runtime runner decides at its first image batch whether it stays on ONNX Runtime (the export and a
    check against torch) or falls back to torch; that decision is made here on the first two of ``samples`` (eval
    view), the first images the extraction would feed it, and ``fast_inference`` hands the same runner to the
    extraction that follows (same weights)."""
    runner = fast_inference(body, device, keep=True)
    if not isinstance(runner, OnnxRuntimeModule):
        return "torch"
    if not runner._tried and samples:
        crop = eval_crop(preprocess)
        example = torch.stack([crop(load_rgb(s.path, draft=preprocess.resize_size)) for s in samples[:2]])
        with torch.inference_mode():
            runner(prepare_input(normalize(preprocess)(example), device, runner))
    return "onnxruntime" if runner._session is not None else "torch"


@torch.inference_mode()
def extract_features(
    body: nn.Module,
    samples: Sequence[Sample],
    preprocess: Preprocess,
    *,
    device: torch.device,
    batch_size: int = 32,
    workers: int = 0,
    desc: str = "features",
    view: int = 0,
    decoded: DecodedImages | None = None,
    augment: str = "standard",
    precision: str = "auto",
) -> torch.Tensor:
    """``(len(samples), F)`` float32 features of ``body`` in eval mode, in sample order.

    ``view`` 0 is the eval transform (resize, centre crop); ``view`` k > 0 is a training augmentation (random
    resized crop and flip, then the ``augment`` policy) drawn from a generator seeded with k, so each view is
    reproducible. ``precision``: that of a torch pass (:func:`graft.core.device.autocast`; not ONNX Runtime's).
    """
    body = fast_inference(body, device, keep=True)
    if isinstance(body, OnnxRuntimeModule):
        body.ready((3, preprocess.input_size, preprocess.input_size))
    if view:
        torch.manual_seed(view)  # augmentations draw from the global RNG; workers derive their seeds from it
    # uint8 crops per image, normalized a batch at a time: the same values as eval_transform/train_transform, a
    # quarter of the bytes to collate, and one vectorized pass instead of a slower one per image
    crop = train_crop(preprocess, augment) if view else eval_crop(preprocess)
    to_float = normalize(preprocess)
    dataset = ImageDataset(samples, crop, draft=preprocess.resize_size, decoded=decoded)
    if workers:
        loader: Any = inference_loader(dataset, batch_size=batch_size, workers=workers)
    else:
        loader = threaded_batches(dataset, batch_size=batch_size)
    chunks = []
    for step, (images, _) in enumerate(progress(loader, desc=desc), 1):
        images = to_float(images.to(device, non_blocking=True))  # uint8 moves a quarter of the bytes
        with autocast(device, precision):
            chunks.append(body(prepare_input(images, device, body)).float().cpu())
        del images
        if step % 8 == 0:  # memory stays flat however many images (see release_freed_memory)
            release_freed_memory()
    return torch.cat(chunks) if chunks else torch.empty(0)


def file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _row_checksum(row: np.ndarray) -> int:
    return zlib.crc32(row.tobytes())


class FeatureStore:
    """One append-only feature matrix for one key (:func:`store_key`: backbone, weights, preprocessing, view,
    engine)."""

    def __init__(self, key: dict[str, Any], root: Path | None = None) -> None:
        canonical = json.dumps(key, sort_keys=True)
        self.key = json.loads(canonical)  # as stored: tuples become lists
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:24]
        self.dir = (root or cache_root()) / "features" / digest
        self.matrix_path = self.dir / "features.f32"
        self.index_path = self.dir / "index.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time across processes (two runs may share a cache)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        try:
            index = json.loads(self.index_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"key": self.key, "dim": None, "rows": {}}
        if index.get("key") != self.key:  # a digest collision or a foreign file: start over
            return {"key": self.key, "dim": None, "rows": {}}
        return index

    def _matrix(self, dim: int) -> np.ndarray | None:
        if not self.matrix_path.exists():
            return None
        rows = self.matrix_path.stat().st_size // (4 * dim)
        if rows == 0:
            return None
        return np.memmap(self.matrix_path, dtype=np.float32, mode="r", shape=(rows, dim))

    def lookup(self, identities: Sequence[str]) -> tuple[dict[int, np.ndarray], list[int]]:
        """Rows found (position -> vector, checksum verified) and positions still to compute."""
        index = self._read_index()
        dim, rows = index["dim"], index["rows"]
        matrix = self._matrix(dim) if dim else None
        found: dict[int, np.ndarray] = {}
        missing: list[int] = []
        for i, ident in enumerate(identities):
            entry = rows.get(ident)
            if matrix is not None and entry is not None and entry[0] < matrix.shape[0]:
                row = matrix[entry[0]]
                if _row_checksum(np.asarray(row)) == entry[1]:
                    found[i] = row
                    continue
            missing.append(i)
        return found, missing

    def add(self, identities: Sequence[str], features: np.ndarray) -> None:
        """Append rows; the index is rewritten atomically after the rows are on disk."""
        if not len(identities):
            return
        features = np.ascontiguousarray(features, dtype=np.float32)
        with self._locked():
            index = self._read_index()
            dim = index["dim"] or int(features.shape[1])
            if dim != features.shape[1]:
                raise RuntimeError(f"feature width changed ({dim} -> {features.shape[1]}) under one cache key")
            size = self.matrix_path.stat().st_size if self.matrix_path.exists() else 0
            start = size // (4 * dim)
            with open(self.matrix_path, "r+b" if size else "wb") as f:
                f.seek(start * 4 * dim)  # drop a partial row left by a crash
                f.write(features.tobytes())
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
            for j, ident in enumerate(identities):
                index["rows"][ident] = [start + j, _row_checksum(features[j])]
            index["dim"] = dim
            atomic_write_json(self.index_path, index)


def cached_features(
    body: nn.Module,
    samples: Sequence[Sample],
    preprocess: Preprocess,
    key: dict[str, Any],
    *,
    device: torch.device,
    batch_size: int = 32,
    workers: int = 0,
    desc: str = "features",
    view: int = 0,
    decoded: DecodedImages | None = None,
    extract: Callable[..., torch.Tensor] = extract_features,
    write: bool = True,
    augment: str = "standard",
    root: Path | None = None,
    precision: str = "auto",
) -> tuple[torch.Tensor, int]:
    """Features of ``samples`` (``view`` as in :func:`extract_features`) from the store, computing (and storing)
    only the missing ones. Returns the ``(N, F)`` matrix and how many rows were computed now.

    ``key`` names the body (``arch``, ``arch_kwargs``, ``weights_sha256``, ``device``: the fields of
    :func:`store_key` that the caller knows). The rows are read from, and added to, the store of the engine that
    computes them here: the planned one (:func:`planned_engine`) unless rows are missing and the body's runner
    turns out to run on torch (:func:`body_engine`), whose store is then used for every row.

    ``extract`` computes the missing rows (``graft.core.distributed.sharded`` splits them across torchrun's processes);
    ``write=False`` leaves the store as it is (ranks other than 0, which stores the rows of all); ``root``: the
    cache folder (default :func:`graft.core.paths.cache_root`).
    """
    engine = planned_engine(device)
    where = {"preprocess": preprocess, "view": view, "augment": augment, "precision": precision}
    store = FeatureStore(store_key(**key, **where, engine=engine), root)
    identities = [file_identity(s.path) for s in samples]
    found, missing = store.lookup(identities)
    if missing:
        used = body_engine(body, [samples[i] for i in missing], preprocess, device)
        if used != engine:  # rows found under the planned engine are not this body's rows here: none is kept
            store = FeatureStore(store_key(**key, **where, engine=used), root)
            found, missing = store.lookup(identities)
    if missing:
        new = extract(
            body,
            [samples[i] for i in missing],
            preprocess,
            device=device,
            batch_size=batch_size,
            workers=workers,
            desc=desc,
            view=view,
            decoded=decoded,
            augment=augment,
            precision=precision,
        ).numpy()
        if write:
            store.add([identities[i] for i in missing], new)
        found.update(zip(missing, new, strict=True))
    if not samples:
        return torch.empty(0), 0
    matrix = np.stack([found[i] for i in range(len(samples))])
    return torch.from_numpy(matrix), len(missing)
