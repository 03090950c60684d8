"""Files written so that a reader sees the old version or the new one, never a part (temp file, fsync, rename),
and the JSON reads of a run's files."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from graft.core.errors import RunError, WriteError


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
