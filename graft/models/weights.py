"""Finding, verifying and safely loading pretrained weight files.

graft never trusts a weights file just because it has the right name: torchvision checks the sha256 of a
file only when it downloads it, never for a file already in the cache, so :func:`resolve` always checks the
file's sha256 against the hash prefix in its name (``resnet18-f37072fd.pth``) or a prefix given explicitly.

Files are looked up locally first, in this order:

1. every folder in ``$GRAFT_WEIGHTS_DIR`` (several may be given, separated by ``os.pathsep``);
2. torch hub's checkpoint cache (``torch.hub.get_dir()/checkpoints``);
3. the files of any installed Python distribution (packages that ship weights for offline machines).

A file found nowhere is downloaded only when that is allowed and the network answers; otherwise
:func:`resolve` fails within a few seconds with a message that says where it looked and what to do.

Nothing here imports torch at module import time, and :func:`is_available` never does either (``graft archs``
uses it and must stay fast).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from graft.core.errors import WeightsError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ResolvedWeights",
    "file_sha256",
    "find_local",
    "is_available",
    "load_state_dict",
    "resolve",
    "search_dirs",
    "sha256_prefix",
]

ENV_WEIGHTS_DIR = "GRAFT_WEIGHTS_DIR"
ENV_OFFLINE = "GRAFT_OFFLINE"

LABEL_ENV = "GRAFT_WEIGHTS_DIR"
LABEL_HUB = "torch hub cache"
LABEL_DOWNLOAD = "download"

PROBE_CONNECT_TIMEOUT_S = 2.0
PROBE_WAIT_S = 2.5

# torchvision-style names end with "-<hex>.<ext>"; torch.hub uses r"-([a-f0-9]*)\." but that also matches an
# empty or very short hash, so require at least 8 hex digits right before the final extension(s).
_HASH_IN_NAME = re.compile(r"-([0-9a-fA-F]{8,64})\.[^-]*$")
_HEX = re.compile(r"[0-9a-f]+")

_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")


@dataclass(frozen=True)
class ResolvedWeights:
    """A verified weights file on this machine."""

    path: Path
    source: str  # "GRAFT_WEIGHTS_DIR" | "torch hub cache" | "package <dist name>" | "download"
    sha256: str  # full hex digest of the file


# ---------------------------------------------------------------------------------------------- where to look


def _env_dirs() -> list[Path]:
    raw = os.environ.get(ENV_WEIGHTS_DIR, "")
    return [Path(os.path.expanduser(p)) for p in raw.split(os.pathsep) if p.strip()]


def _hub_dir() -> Path:
    """``torch.hub.get_dir()``, without importing torch when it is not imported yet.

    If torch is not imported, ``torch.hub.set_dir`` cannot have been called, so the directory follows from the
    environment exactly as torch computes it.
    """
    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    torch_home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(torch_home) / "hub"


def search_dirs() -> list[tuple[str, Path]]:
    """Folders searched for weight files, in order, as ``(label, folder)``."""
    dirs = [(LABEL_ENV, d) for d in _env_dirs()]
    dirs.append((LABEL_HUB, _hub_dir() / "checkpoints"))
    return dirs


_index_lock = threading.Lock()
_package_hits: dict[str, list[tuple[str, Path]]] = {}


def _package_files(filename: str) -> list[tuple[str, Path]]:
    """``(dist name, path)`` of installed files named ``filename``, in sys.path order; memoized per name.

    Each distribution's RECORD is searched as plain text first and parsed only on a hit: ~10 ms over a
    5 GB torch environment, against ~250 ms for parsing every RECORD.
    """
    with _index_lock:
        if filename not in _package_hits:
            hits: list[tuple[str, Path]] = []
            for dist in importlib.metadata.distributions():
                try:
                    if filename not in (dist.read_text("RECORD") or ""):
                        continue
                    name = dist.metadata["Name"] or "?"
                    hits += [(name, Path(dist.locate_file(e))) for e in dist.files or () if e.name == filename]
                except Exception:  # a broken distribution must not break the lookup
                    continue
            _package_hits[filename] = hits
        return _package_hits[filename]


def _clear_package_index() -> None:
    """Forget what was found in installed packages (for tests, or after installing packages in-process)."""
    with _index_lock:
        _package_hits.clear()


def _check_filename(filename: str) -> None:
    if not filename or os.path.basename(filename) != filename or filename in (".", ".."):
        raise ValueError(f"expected a bare file name, got {filename!r}")


def find_local(filename: str) -> tuple[str, Path] | None:
    """The first ``(source label, path)`` of ``filename`` on this machine, or None. Does not hash anything."""
    _check_filename(filename)
    for label, folder in search_dirs():
        candidate = folder / filename
        if candidate.is_file():
            return label, candidate
    for dist_name, candidate in _package_files(filename):
        if candidate.is_file():
            return f"package {dist_name}", candidate
    return None


def is_available(filename: str) -> bool:
    """Whether ``filename`` is on this machine (cheap: no hashing, no network, no torch import)."""
    return find_local(filename) is not None


# ---------------------------------------------------------------------------------------------- hashing


def sha256_prefix(filename: str) -> str | None:
    """The hex sha256 prefix in a torchvision-style name (``resnet18-f37072fd.pth``: ``f37072fd``) or None."""
    match = _HASH_IN_NAME.search(os.path.basename(filename))
    return match.group(1).lower() if match else None


_sha_lock = threading.Lock()
_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Full hex sha256 of a file, streamed; memoized per (real path, size, mtime) within the process."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _sha_lock:
        cached = _sha_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _sha_lock:
        _sha_cache[key] = value
    return value


def _normalize_prefix(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    prefix = prefix.strip().lower()
    if not prefix:
        return None
    if not _HEX.fullmatch(prefix) or len(prefix) > 64:
        raise ValueError(f"sha256_prefix must be hexadecimal (at most 64 digits), got {prefix!r}")
    return prefix


# ---------------------------------------------------------------------------------------------- network


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _probe_target(url: str) -> tuple[str, int] | None:
    """(host, port) a download of ``url`` would connect to first: the proxy if one applies, else the host."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        pparts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if pparts.hostname:
            return pparts.hostname, pparts.port or (443 if pparts.scheme == "https" else 80)
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _network_answers(url: str) -> tuple[bool, str]:
    """TCP-connect to the URL's host (or proxy), DNS included, giving up after :data:`PROBE_WAIT_S` seconds.

    The connection attempt runs in a daemon thread so that a resolver that hangs cannot stall the caller.
    Returns (answered, reason when not).
    """
    target = _probe_target(url)
    if target is None:
        return False, "not a URL graft can download from"
    result: dict[str, object] = {}

    def attempt() -> None:
        try:
            with socket.create_connection(target, timeout=PROBE_CONNECT_TIMEOUT_S):
                result["ok"] = True
        except BaseException as exc:  # reported to the caller
            result["error"] = exc

    thread = threading.Thread(target=attempt, name="graft-weights-probe", daemon=True)
    thread.start()
    thread.join(PROBE_WAIT_S)
    if result.get("ok"):
        return True, ""
    where = f"{target[0]}:{target[1]}"
    if "error" in result:
        err = result["error"]
        detail = getattr(err, "strerror", None) or str(err) or type(err).__name__
        return False, f"no network: cannot connect to {where}: {detail}"
    return False, f"no network: no answer from {where} within {PROBE_WAIT_S:g} s"


def network_allows(url: str) -> bool:
    """True unless GRAFT_OFFLINE is set or the URL's host does not answer within a few seconds."""
    if _truthy(os.environ.get("GRAFT_OFFLINE")):
        return False
    return _network_answers(url)[0]


def _download_candidates() -> list[Path]:
    return [*_env_dirs()[:1], _hub_dir() / "checkpoints"]


def _download_dir() -> Path | None:
    candidates = _download_candidates()
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    return None


def _download(url: str, filename: str, prefix: str | None) -> ResolvedWeights:
    folder = _download_dir()
    if folder is None:
        dirs = ", ".join(str(d) for d in _download_candidates())
        raise WeightsError(
            f"Cannot download {url}: none of these folders is writable: {dirs}. "
            f"Set {ENV_WEIGHTS_DIR} to a writable folder, or put {filename} there yourself."
        )
    import torch.hub

    final = folder / filename
    part = folder / f".{filename}.{uuid.uuid4().hex}.part"
    try:
        try:
            torch.hub.download_url_to_file(url, str(part), hash_prefix=None, progress=sys.stderr.isatty())
        except Exception as exc:
            raise WeightsError(
                f"Downloading {filename} from {url} failed: {exc}. "
                f"Put the file in {folder} yourself, or train from scratch with --pretrained none."
            ) from exc
        digest = file_sha256(part)
        if prefix is not None and not digest.startswith(prefix):
            raise WeightsError(
                f"Downloaded {url} but it is not the expected file: its sha256 is {digest}, expected one "
                f"starting with {prefix}. The download was deleted; try again later, or put a good copy of "
                f"{filename} in {folder}."
            )
        with open(part, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it the file others read
        os.replace(part, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return ResolvedWeights(path=final, source=LABEL_DOWNLOAD, sha256=file_sha256(final))


# ---------------------------------------------------------------------------------------------- resolve


def _verify(path: Path, filename: str, prefix: str | None, url: str | None) -> str:
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"Cannot read weights file {path}: {exc}") from exc
    if prefix is not None and not digest.startswith(prefix):
        fresh = f" (a good copy can be downloaded from {url})" if url else ""
        raise WeightsError(
            f"Weights file {path} is corrupt or not the expected {filename}: its sha256 is {digest}, "
            f"but it should start with {prefix}; delete or replace it{fresh}."
        )
    return digest


def _not_found_message(filename: str, what: str, url: str | None, reason: str) -> str:
    env_dirs = _env_dirs()
    places = [f"{d} (${ENV_WEIGHTS_DIR})" for d in env_dirs] if env_dirs else [f"${ENV_WEIGHTS_DIR} (not set)"]
    places.append(str(_hub_dir() / "checkpoints"))
    head = (
        f"Pretrained weights for {what or filename} are not on this machine: {filename} was not found in "
        f"{', '.join(places)} or any installed package"
    )
    tail = f"and it cannot be downloaded from {url} ({reason})." if url else "and no download URL is known for it."
    return (
        f"{head}, {tail}\n"
        f"Put the file in one of those folders (or set {ENV_WEIGHTS_DIR} to its folder), "
        "or train from scratch with --pretrained none."
    )


def resolve(
    filename: str,
    *,
    url: str | None = None,
    sha256_prefix: str | None = None,
    what: str = "",
    allow_download: bool | None = None,
) -> ResolvedWeights:
    """Find ``filename`` locally (or download it from ``url``) and verify its sha256.

    The expected hash prefix is ``sha256_prefix`` if given, else the one in ``filename``; with neither, the
    file is accepted unverified. A local file whose hash does not match raises :class:`WeightsError` (it is
    never silently replaced). ``allow_download``: True downloads when needed, False never does, None (default)
    downloads unless ``$GRAFT_OFFLINE`` is set, and only if the URL's host answers a TCP connect within 2.5 s.
    ``what`` is the human name used in messages, e.g. ``"resnet18 (ResNet18_Weights.IMAGENET1K_V1)"``.
    """
    _check_filename(filename)
    prefix = _normalize_prefix(sha256_prefix) or _normalize_prefix(_name_prefix(filename))

    found = find_local(filename)
    if found is not None:
        source, path = found
        return ResolvedWeights(path=path, source=source, sha256=_verify(path, filename, prefix, url))

    reason = ""
    if url:
        if allow_download is False:
            reason = "downloading is disabled"
        elif allow_download is None and _truthy(os.environ.get(ENV_OFFLINE)):
            reason = f"downloading is disabled by {ENV_OFFLINE}={os.environ.get(ENV_OFFLINE)}"
        else:
            if allow_download is None:
                answered, reason = _network_answers(url)
            else:
                answered = True
            if answered:
                return _download(url, filename, prefix)
    raise WeightsError(_not_found_message(filename, what, url, reason))


_name_prefix = sha256_prefix  # resolve()'s keyword argument shadows the function of the same name


# ---------------------------------------------------------------------------------------------- loading


def _unwrap(obj: object) -> object:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    return obj


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict without ever executing code from the file.

    ``.safetensors`` files go through ``safetensors.torch.load_file``; anything else through
    ``torch.load(..., map_location="cpu", weights_only=True)``. Common containers (``{"state_dict": ...}``,
    ``{"model": ...}``, ``{"model_state_dict": ...}``) are unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist.")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency
            raise WeightsError(f"Cannot load {path}: the safetensors package is not installed.") from exc
        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"Cannot read safetensors file {path}: {exc}") from exc
    else:
        import pickle

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(
                f"Weights file {path} contains pickled code (not just tensors) and was not loaded, because "
                f"loading it could run arbitrary code ({first}). Use a weights file from a trusted source, "
                "ideally .safetensors."
            ) from exc
        except Exception as exc:
            raise WeightsError(f"Cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc

    obj = _unwrap(obj)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"Weights file {path} does not contain a state dict (found {type(obj).__name__}).")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad or not obj:
        detail = f"entries that are not tensors: {', '.join(bad[:5])}" if bad else "it is empty"
        raise WeightsError(f"Weights file {path} is not a state dict of tensors ({detail}).")
    return dict(obj)
