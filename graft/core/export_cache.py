"""Exported ONNX bodies kept across processes, one file per module state and input shape.

Exporting a body and checking it against torch is most of what a cold frozen run pays before its first feature
(MobileNetV2 on this project's 2-core CPU: ~1.5 s of an 8 s run: the fx trace, the TorchScript exporter, which
imports ``onnx``, and torch's first forward, where oneDNN builds its kernels). The result depends only on the
module (its class, structure and every parameter and buffer), the input's channels and size, and the versions of
torch and ONNX Runtime, so a later process with the same pretrained weights loads the checked export instead.
Trained weights (a fine-tuned body) give another key; the folder keeps the :data:`KEEP` most recently used
files, so fine-tuned runs cannot fill the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import torch

from graft.core.atomic import atomic_write_bytes
from graft.core.paths import cache_root

#: Files kept in the folder (the most recently used): ~9 MB each for MobileNetV2, ~100 MB for a ResNet-101.
KEEP = 8
#: Part of every key: raise it when what an export holds or how it is checked changes.
FORMAT = 1


def folder() -> Path:
    return cache_root() / "onnx-bodies"


def module_key(module: torch.nn.Module) -> str:
    """A digest of everything a traced export of ``module`` depends on except the input's shape: its class and
    structure, every parameter and buffer (names, dtypes, shapes, bytes) and the versions that export and run it.
    Hashing MobileNetV2's 14 MB of weights takes ~10 ms."""
    import onnxruntime

    h = hashlib.sha256()
    for part in (FORMAT, torch.__version__, onnxruntime.__version__, type(module).__qualname__, repr(module)):
        h.update(str(part).encode())
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def _path(key: str, shape: tuple[int, ...]) -> Path:
    return folder() / f"{key}-{'x'.join(map(str, shape))}.onnx"


def has_any(key: str) -> bool:
    """Whether some export of the module with ``key`` is kept (for any input shape)."""
    return any(folder().glob(f"{key}-*.onnx"))


def exists(key: str, shape: tuple[int, ...]) -> bool:
    return _path(key, shape).is_file()


def read(key: str, shape: tuple[int, ...]) -> bytes | None:
    """The kept export of ``key`` for inputs of ``shape`` (channels, height, width), or None. A file that cannot
    be read counts as absent (the caller exports again)."""
    path = _path(key, shape)
    try:
        data = path.read_bytes()
        os.utime(path)  # most recently used: kept the longest
    except OSError:
        return None
    return data


def write(key: str, shape: tuple[int, ...], data: bytes) -> None:
    """Keep ``data`` (an export that passed its check) and drop the least recently used files beyond :data:`KEEP`.
    A cache that cannot be written (read-only or full disk) only costs the next process the export."""
    with contextlib.suppress(OSError):
        folder().mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(_path(key, shape), data)
        kept = sorted(folder().glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP:]:
            old.unlink(missing_ok=True)
