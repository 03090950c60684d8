"""Resuming a training run after a crash or a kill: ``graft train DATA ... --resume RUN_DIR``.

After every finished epoch, ``RUN_DIR/resume.safetensors`` is rewritten atomically (no pickle: tensors as
safetensors, everything else as JSON in its metadata, see :func:`save_state`) with what the next
epoch needs: the model's weights, the optimizer's and the scheduler's state, every RNG state (Python, NumPy, torch,
the data-order generator), the stage, the best weights and accuracy so far and every epoch's results. During a head
stage (frozen body) only the head's weights are stored, with the sha256 of the body's: the body is what the run
started from (its weights file, or the seeded random init), rebuilt identically on resume and checked against
that sha256, so an epoch's state is kilobytes, not two copies of the network. That file is the commit point of an
epoch: a kill at any moment loses at most the epoch in progress, and the files written after
it (results.csv, the best model) are rewritten identically when that epoch runs again.

A resumed CPU run without decoding worker processes (the default on small machines) ends with the same weights and
metrics as a run that was never interrupted. The file is deleted when the run completes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from graft.core import atomic
from graft.core import checkpoint as ckpt
from graft.core.atomic import atomic_write_bytes
from graft.core.config import TrainConfig
from graft.core.errors import ConfigError, RunError

RESUME_FILE = "resume.safetensors"
VERSION = 2
#: State-dict prefix of the part of a :class:`graft.models.model.GraftModel` that a head stage leaves unchanged.
FIXED = "body."

#: Options that only say where the run is (or where it is also logged): they may differ when resuming.
_WHERE = {"out", "name", "exist_ok", "resume", "log", "mlflow_uri", "mlflow_experiment"}
#: Options that change how, not what, is computed: allowed to differ (the resumed run is then not bit-identical).
_HOW = {"batch_size", "device", "workers", "compile", "checkpoint_budget", "precision"}


def check_resumable(cfg: TrainConfig) -> list[str]:
    """Check that ``cfg.resume`` is a run directory started with the same options as ``cfg``; return the names of
    the options that changed how the run computes (``--batch-size``, ``--device``, ``--workers``, ``--compile``,
    ``--precision``).

    Raises:
        ConfigError: not a run directory, a finished run, or other options than the first time.
    """
    run_dir = cfg.resume
    assert run_dir is not None
    if not (run_dir / "config.json").is_file():
        raise ConfigError(
            f"--resume {run_dir}: not a run directory written by graft train (no config.json); "
            "pass the folder of the run to continue, e.g. runs/001-mobilenet_v2-freeze"
        )
    if (run_dir / "metrics.json").is_file() and not (run_dir / RESUME_FILE).is_file():
        raise ConfigError(f"--resume {run_dir}: that run has finished (metrics.json is written); nothing to resume")
    saved = atomic.read_json(run_dir / "config.json")
    given = json.loads(json.dumps(cfg.to_dict()))
    changed = []
    for key, value in given.items():
        before = saved.get(key)
        same = before == value or (key == "data" and Path(str(before)).resolve() == Path(str(value)).resolve())
        if key not in _WHERE and not same:
            changed.append((key, before, value))
    fixed = [c for c in changed if c[0] not in _HOW]
    if fixed:
        options = ", ".join(f"--{k.replace('_', '-')} {b} (now {v})" for k, b, v in fixed)
        raise ConfigError(
            f"--resume {run_dir}: the run was started with other options: {options}. "
            "Resume with the same DATA and options as the first time."
        )
    return [k for k, _, _ in changed]


@dataclass
class Progress:
    """A run's state at the end of its last finished epoch (what :func:`load_progress` returns)."""

    stage_index: int
    stage_first_epoch: int
    history: list[Any]  # EpochResult of every finished epoch, all stages
    best_acc: float  # before the current stage
    best_epoch: int
    state: dict[str, Any]

    @property
    def before_stage(self) -> tuple[float, int, list[Any]]:
        """Best score (the selection metric's), its epoch, and the epochs of the stages before the current one."""
        return self.best_acc, self.best_epoch, self.history[: self.stage_first_epoch - 1]

    def restore(self, model: torch.nn.Module, optimizer: Any, scheduler: Any, generator: torch.Generator) -> Any:
        """Load the weights, optimizer, scheduler and RNG states; return the current stage's ``FitResult``, to be
        passed to ``fit(start=...)``."""
        from graft.training.loop import FitResult

        fixed = self.state.get("fixed")
        if fixed is None:
            model.load_state_dict(self.state["model"])
        else:  # a head stage: the body is the one the run started from, as rebuilt now
            if fixed_sha256(model) != fixed["sha256"]:
                raise RunError(
                    "the frozen backbone's weights differ from those the run started with (another weights file "
                    "for --pretrained?): the run cannot be resumed; start it again without --resume"
                )
            keys = model.load_state_dict(self.state["model"], strict=False)
            if keys.unexpected_keys or any(not k.startswith(FIXED) for k in keys.missing_keys):
                raise RunError(f"the saved state does not fit the model ({keys}); start the run again")
        optimizer.load_state_dict(self.state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(self.state["scheduler"])
        _set_rng(self.state["rng"], generator)
        fit = self.state["fit"]
        best_state = fit["best_state"]
        if fit.get("best_state_fixed"):  # stored without the body: add the (unchanged) body back
            body = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(FIXED)}
            best_state = body | best_state
        return FitResult(
            best_score=fit["best_score"],
            best_epoch=fit["best_epoch"],
            history=self.history[self.stage_first_epoch - 1 :],
            stale=fit["stale"],
            best_state=best_state,
        )


def load_progress(run_dir: Path) -> Progress | None:
    """The saved state of a killed run, or None when it did not finish an epoch.

    Raises:
        RunError: the state file is damaged or not a graft state file (it is never unpickled).
    """
    from graft.training.loop import EpochResult

    path = run_dir / RESUME_FILE
    if not path.exists():
        return None
    state = load_state(path)
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise RunError(f"{path} was written by another version of graft; delete it to start the run over")
    return Progress(
        stage_index=state["stage_index"],
        stage_first_epoch=state["stage_first_epoch"],
        history=[EpochResult(**r) for r in state["history"]],
        best_acc=state["best_before_stage"][0],
        best_epoch=state["best_before_stage"][1],
        state=state,
    )


class ProgressSaver:
    """Saves :class:`Progress` at the end of every epoch; told about each stage by :meth:`stage`."""

    def __init__(self, run_dir: Path, model: torch.nn.Module, generator: torch.Generator, device: torch.device):
        self.path = run_dir / RESUME_FILE
        self.model, self.generator, self.device = model, generator, device
        self._stage: dict[str, Any] = {}

    def discard(self) -> None:
        """Delete the state file (a fresh run in a reused folder, or a completed run)."""
        self.path.unlink(missing_ok=True)

    def stage(self, index: int, *, best: tuple[float, int], earlier: list[Any], optimizer: Any, scheduler: Any) -> None:
        """A stage starts (or resumes): ``best`` (accuracy, epoch) and ``earlier`` epochs are those before it.
        When the model's body is frozen, its sha256 is taken now, once for the stage's epochs."""
        frozen = _body_frozen(self.model)
        self._stage = {
            "fixed": {"prefix": FIXED, "sha256": fixed_sha256(self.model)} if frozen else None,
            "index": index,
            "first_epoch": len(earlier) + 1,
            "best": best,
            "earlier": earlier,
            "optimizer": optimizer,
            "scheduler": scheduler,
        }

    def save(self, result: Any) -> None:
        """Write the state after an epoch of the current stage (``result``: fit's ``FitResult`` so far)."""
        s = self._stage
        model, best, best_fixed = self.model.state_dict(), result.best_state, False
        if s["fixed"] is not None:  # a head stage: the body is not stored, see the module's docstring
            model = {k: v for k, v in model.items() if not k.startswith(FIXED)}
            if best is not None and any(k.startswith(FIXED) for k in best):
                best, best_fixed = {k: v for k, v in best.items() if not k.startswith(FIXED)}, True
        save_state(
            self.path,
            {
                "version": VERSION,
                "stage_index": s["index"],
                "stage_first_epoch": s["first_epoch"],
                "best_before_stage": list(s["best"]),
                "history": [asdict(r) for r in s["earlier"] + result.history],
                "fit": {
                    "best_score": result.best_score,
                    "best_epoch": result.best_epoch,
                    "stale": result.stale,
                    "best_state": best,
                    "best_state_fixed": best_fixed,
                },
                "fixed": s["fixed"],
                "model": model,
                "optimizer": s["optimizer"].state_dict(),
                "scheduler": s["scheduler"].state_dict() if s["scheduler"] is not None else None,
                "rng": _get_rng(self.generator, self.device),
            },
        )


def _body_frozen(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a :class:`graft.models.model.GraftModel` whose body does not train (a head stage)."""
    body = getattr(model, "body", None)
    return isinstance(body, torch.nn.Module) and not any(p.requires_grad for p in body.parameters())


def fixed_sha256(model: torch.nn.Module) -> str:
    """sha256 of the body's state (names, dtypes, shapes, bytes): what a head stage's saved state relies on."""
    import hashlib

    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.startswith(FIXED):
            t = t.detach().to("cpu").contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _get_rng(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    import numpy as np

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


STATE_FORMAT = "graft-state/1"


def save_state(path: Path, state: Any) -> None:
    """Write nested training state atomically: its tensors as safetensors, the rest (dicts, lists, tuples,
    numbers, strings, NumPy arrays) as JSON in the safetensors metadata. No pickle."""
    tensors: dict[str, Any] = {}
    text = json.dumps(_pack(state, tensors))
    atomic_write_bytes(path, ckpt.serialize(tensors, {"format": STATE_FORMAT, "graft.state": text}))


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
    metadata = ckpt.read_header(data).get("__metadata__") or {}
    if metadata.get("format") != STATE_FORMAT or not isinstance(metadata.get("graft.state"), str):
        raise RunError(
            f"{path} is not a graft training state file (safetensors with format {STATE_FORMAT}); it was not "
            "loaded. Delete it to start the run over, or resume another run directory."
        )
    if ckpt.payload_sha256(data) != metadata.get("graft.tensors_sha256"):
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
