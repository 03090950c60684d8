"""Run files: atomic writes, and self-describing models (safetensors weights + model.json; no pickle).

``model.json`` holds everything needed to rebuild the network (architecture, builder kwargs, head, classes,
preprocessing) and the sha256 of ``model.safetensors``, verified on load.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from graft.errors import RunError

FORMAT = "graft-run/1"
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part: temp file in the
    same folder, fsync, rename, fsync of the folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike[str], header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing: is {path.parent} a run directory written by graft train?") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None


def save_weights(path: Path, state_dict: dict[str, Any], metadata: dict[str, str] | None = None) -> str:
    """Save tensors as safetensors (atomically); return the file's sha256."""
    from safetensors.torch import save

    # Fresh contiguous copies: safetensors refuses tensors that share storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_weights(path: Path, *, sha256: str | None = None) -> dict[str, Any]:
    """Load a safetensors file (never unpickles); verify its sha256 when given."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the run did not finish saving its model") from None
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise RunError(
                f"{path} does not match the sha256 recorded in {path.parent / META_FILE} "
                f"(expected {sha256[:16]}..., found {actual[:16]}...): the file was changed or damaged. "
                "Restore it from a backup or train the run again."
            )
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise RunError(f"{path} is not a valid safetensors file ({e})") from None


def next_run_name(out: Path, stem: str) -> str:
    """``NNN-stem`` with NNN one more than the largest number already used in ``out``."""
    used = [int(p.name.split("-", 1)[0]) for p in out.glob("[0-9][0-9][0-9]-*") if p.name[:3].isdigit()]
    return f"{max(used, default=0) + 1:03d}-{stem}"
