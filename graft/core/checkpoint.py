"""Run files: atomic writes, and self-describing models (safetensors weights + model.json; no pickle).

``model.json`` holds everything needed to rebuild the network (architecture, builder kwargs, head, classes,
preprocessing) and the sha256 of ``model.safetensors``, verified on load. The weights file also carries a copy of
``model.json`` in its safetensors metadata, with the sha256 of its tensor bytes: the pair is written weights first,
and a crash between the two writes (new weights, old ``model.json``) is recognised on load, which then uses the
copy inside the weights file. Any other mismatch is a damaged or changed file and an error.

:func:`save_state` / :func:`load_state` store nested training state (optimizer, scheduler, RNG states) the same
way: tensors as safetensors, everything else as JSON in its metadata; nothing is ever unpickled.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from graft.core.errors import RunError, WriteError

FORMAT = "graft-run/1"
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part: temp file in the
    same folder, fsync, rename, fsync of the folder."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600; graft's files get the usual umask mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(path, e) from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_error(path: Path, e: OSError) -> WriteError:
    return WriteError(
        e.errno,
        f"cannot write {path}: {e.strerror or e}. The previous version of the file (if any) is intact; "
        "free some disk space or fix the folder's permissions, then run the command again (graft train --resume "
        "continues a training run from its last finished epoch).",
    )


_MODE: int | None = None


def _file_mode() -> int:
    global _MODE
    if _MODE is None:
        umask = os.umask(0o022)
        os.umask(umask)
        _MODE = 0o666 & ~umask
    return _MODE


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8 text, atomically. A file name that is not valid UTF-8 (held by Python as lone surrogates) is written
    as a ``\\udcXX`` escape: in JSON that is the exact escape of the same string, which reads back unchanged."""
    atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


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


def read_json_or(path: Path, default: Any = None) -> Any:
    """``path``'s JSON, or ``default`` when the file is missing or unreadable: for a run's optional files
    (config.json, metrics.json, evaluation.json), whose absence only leaves something out."""
    try:
        return read_json(path)
    except (RunError, OSError, UnicodeDecodeError):
        return default


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
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the run did not finish saving its model") from None
    return _load_tensors(path, data, sha256=sha256, actual=hashlib.sha256(data).hexdigest())


def _header(data: bytes) -> dict[str, Any]:
    """The JSON header of safetensors bytes (``{}`` when there is none to read)."""
    if len(data) < 8:
        return {}
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return header if isinstance(header, dict) else {}


def _payload_sha256(data: bytes) -> str:
    """sha256 of the tensor bytes of safetensors ``data`` (what follows the header)."""
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(memoryview(data)[8 + n :]).hexdigest()


#: torch dtype name -> safetensors dtype tag (the dtypes graft's models and states hold).
_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


def _serialize(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose metadata also holds the sha256 of the tensor bytes (``graft.tensors_sha256``).

    Written here rather than by ``safetensors.torch.save``: that one needs fresh copies of tensors that share
    storage and a second pass for the metadata, 80 ms for MobileNetV2 against 15 ms here, paid after every
    improved epoch. The layout is safetensors' own (little-endian header length, JSON header with sorted keys
    padded to 8 bytes, tensors back to back in name order), read by ``safetensors.torch.load``.
    """
    import torch

    header: dict[str, Any] = {}
    chunks: list[Any] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach()
        tag = _DTYPES.get(str(t.dtype).removeprefix("torch."))
        if tag is None:
            raise TypeError(f"cannot store a {t.dtype} tensor ({name}) in a safetensors file")
        raw = t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()  # a view, copied once by join
        header[name] = {"dtype": tag, "shape": list(t.shape), "data_offsets": [offset, offset + raw.nbytes]}
        chunks.append(raw)
        offset += raw.nbytes
    payload = b"".join(chunks)
    header["__metadata__"] = metadata | {"graft.tensors_sha256": hashlib.sha256(payload).hexdigest()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # tensor data 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text + payload


def save_model(run_dir: Path, state_dict: dict[str, Any], meta: dict[str, Any]) -> str:
    """Write ``model.safetensors`` (with ``meta`` inside), then ``model.json`` naming its sha256; return the sha256.

    Each write is atomic; a crash between the two leaves new weights beside the old ``model.json``, which
    :func:`load_model` recognises (the copy inside the weights verifies) and resolves in favour of the weights.
    """
    meta = {k: v for k, v in meta.items() if k != "weights_sha256"} | {"weights_file": MODEL_FILE}
    data = _serialize(
        state_dict, {"format": FORMAT, "graft.model_json": json.dumps(meta, ensure_ascii=False, sort_keys=True)}
    )
    atomic_write_bytes(run_dir / MODEL_FILE, data)
    sha = hashlib.sha256(data).hexdigest()
    atomic_write_json(run_dir / META_FILE, meta | {"weights_sha256": sha})
    return sha


def _embedded_meta(data: bytes) -> dict[str, Any] | None:
    """The ``model.json`` saved inside safetensors ``data``, when its tensor bytes verify; else None."""
    metadata = _header(data).get("__metadata__") or {}
    text, payload = metadata.get("graft.model_json"), metadata.get("graft.tensors_sha256")
    if not isinstance(text, str) or not isinstance(payload, str) or _payload_sha256(data) != payload:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) else None


def load_model(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(meta, state_dict)`` of a run's model: ``model.json`` and the weights whose sha256 it records.

    When the weights do not match ``model.json`` but carry a verified copy of it (a crash between the two writes
    of :func:`save_model`, or a lost ``model.json``), that copy is used. Never unpickles.

    Raises:
        RunError: a file is missing, damaged or changed.
    """
    try:
        meta: dict[str, Any] | None = read_json(run_dir / META_FILE)
        meta_error: RunError | None = None
    except RunError as e:
        meta, meta_error = None, e
    path = run_dir / ((meta or {}).get("weights_file") or MODEL_FILE)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if meta_error is not None:
            raise meta_error from None
        raise RunError(f"{path} is missing: the run did not finish saving its model") from None
    actual = hashlib.sha256(data).hexdigest()
    expected = (meta or {}).get("weights_sha256")
    if meta is None or (expected is not None and expected != actual):
        embedded = _embedded_meta(data)
        if embedded is not None:
            meta = embedded | {"weights_sha256": actual}
        elif meta_error is not None:
            raise meta_error
    return meta, _load_tensors(path, data, sha256=meta.get("weights_sha256"), actual=actual)


def _load_tensors(path: Path, data: bytes, *, sha256: str | None, actual: str) -> dict[str, Any]:
    from safetensors.torch import load

    if sha256 is not None and actual != sha256:
        raise RunError(
            f"{path} does not match the sha256 recorded in {path.parent / META_FILE} "
            f"(expected {sha256[:16]}..., found {actual[:16]}...): the file was changed or damaged. "
            "Restore it from a backup or train the run again."
        )
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise RunError(f"{path} is not a valid safetensors file ({e})") from None


STATE_FORMAT = "graft-state/1"


def save_state(path: Path, state: Any) -> None:
    """Write nested training state atomically: its tensors as safetensors, the rest (dicts, lists, tuples,
    numbers, strings, NumPy arrays) as JSON in the safetensors metadata. No pickle."""
    tensors: dict[str, Any] = {}
    text = json.dumps(_pack(state, tensors))
    atomic_write_bytes(path, _serialize(tensors, {"format": STATE_FORMAT, "graft.state": text}))


def load_state(path: Path) -> Any:
    """Read what :func:`save_state` wrote (verifying its tensor bytes); never unpickles.

    Raises:
        RunError: the file is missing, not a graft state file, or damaged.
    """
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path} is missing") from None
    metadata = _header(data).get("__metadata__") or {}
    if metadata.get("format") != STATE_FORMAT or not isinstance(metadata.get("graft.state"), str):
        raise RunError(
            f"{path} is not a graft training state file (safetensors with format {STATE_FORMAT}); it was not "
            "loaded. Delete it to start the run over, or resume another run directory."
        )
    if _payload_sha256(data) != metadata.get("graft.tensors_sha256"):
        raise RunError(f"{path} is damaged (its tensor bytes do not match their sha256); it was not loaded")
    try:
        tensors = load(data)
        return _unpack(json.loads(metadata["graft.state"]), tensors)
    except Exception as e:
        raise RunError(f"{path} is damaged ({type(e).__name__}: {e}); it was not loaded") from None


def _pack(obj: Any, tensors: dict[str, Any]) -> Any:
    """``obj`` as JSON values; tensors are moved to ``tensors`` and replaced by ``{"$tensor": name}``."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj
        return {"$tensor": name}
    if isinstance(obj, np.ndarray):
        return {"$ndarray": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"$tuple": [_pack(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [_pack(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"$items": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a graft state file")


def _unpack(obj: Any, tensors: dict[str, Any]) -> Any:
    import numpy as np

    if isinstance(obj, list):
        return [_unpack(x, tensors) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if "$ndarray" in obj:
        return np.array(obj["$ndarray"], dtype=obj["dtype"])
    if "$tuple" in obj:
        return tuple(_unpack(x, tensors) for x in obj["$tuple"])
    if "$items" in obj:
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["$items"]}
    return {k: _unpack(v, tensors) for k, v in obj.items()}


def next_run_name(out: Path, stem: str) -> str:
    """``NNN-stem`` with NNN one more than the largest number already used in ``out``."""
    used = [int(p.name.split("-", 1)[0]) for p in out.glob("[0-9][0-9][0-9]-*") if p.name[:3].isdigit()]
    return f"{max(used, default=0) + 1:03d}-{stem}"
