"""``model.json`` as a typed record: :class:`RunMeta`, checked field by field when it is read.

A run's ``model.json`` is written by graft (float runs, int8 runs, ensembles) and read by every command that
loads a run. Reading it through :meth:`RunMeta.from_json` turns a damaged or hand-edited file into one
:class:`~graft.core.errors.RunError` line naming the file and the field, instead of a ``KeyError`` deep inside a
loader. Keys this graft does not know (written by a newer graft) are kept, unread, and written back unchanged.

:meth:`RunMeta.to_dict` gives back the JSON object it was read from (same keys, same order, same values), so a
reader that changes one field (``graft evaluate --tta``) rewrites the file with only that field changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from graft.core.checkpoint import META_FILE
from graft.core.errors import RunError
from graft.core.heads import HeadSpec
from graft.core.preprocess import Preprocess

FIX = "the file was edited or written by another program: re-run graft train or restore it from a backup"
ENSEMBLE = "ensemble"
INTERPOLATIONS = ("bilinear", "bicubic")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FieldProblem(Exception):
    """A field's value is wrong; the message says what it should be (the caller names the file and the field)."""


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def field_error(source: Any, name: str, problem: str, *, fix: str = FIX) -> RunError:
    """The one line every bad field gives: ``FILE: field 'NAME' PROBLEM; FIX``."""
    return RunError(f"{source}: field {name!r} {problem}; {fix}")


def read_object(path: Path, *, fix: str = FIX) -> dict[str, Any]:
    """``path``'s JSON object; a missing file, invalid JSON or another JSON value is a :class:`RunError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"{path} is missing: is {path.parent} a run directory written by graft train?") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path} cannot be read ({e}); {fix}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path} must hold a JSON object, got {type_name(obj)}; {fix}")
    return obj


# ----------------------------------------------------------------------------------------------------------------
# field checks: each returns the value as RunMeta keeps it, or raises FieldProblem


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise FieldProblem(
            f"must be a non-empty string, got {type_name(v) if not isinstance(v, str) else 'an empty one'}"
        )
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else check_str(v)


def check_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise FieldProblem(f"must be true or false, got {type_name(v)}")
    return v


def check_positive_int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise FieldProblem(f"must be a whole number, got {type_name(v)}")
    if v <= 0:
        raise FieldProblem(f"must be greater than 0, got {v}")
    return v


def _sha256(v: Any) -> str:
    if not isinstance(v, str) or not _SHA256.fullmatch(v):
        raise FieldProblem(f"must be a sha256 (64 lowercase hex digits), got {v!r}"[:160])
    return v


def check_str_list(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list | tuple):
        raise FieldProblem(f"must be a list of {what}, got {type_name(v)}")
    for x in v:
        if not isinstance(x, str) or not x:
            raise FieldProblem(f"must be a list of {what} (non-empty strings), got an item {json.dumps(x)[:40]}")
    return tuple(v)


def _classes(v: Any) -> tuple[str, ...]:
    names = check_str_list(v, "class names")
    if not names:
        raise FieldProblem("must be a non-empty list of class names, got []")
    dup = next((c for i, c in enumerate(names) if c in names[:i]), None)
    if dup is not None:
        raise FieldProblem(f"must name each class once, got {dup!r} twice")
    return names


def check_object(v: Any, what: str = "a JSON object") -> dict[str, Any]:
    if not isinstance(v, dict):
        raise FieldProblem(f"must be {what}, got {type_name(v)}")
    return v


#: What a preprocess block may hold, and the sizes a run's input may have: a side of 100000 pixels would allocate
#: tens of GB per image before anything else could refuse it.
PREPROCESS_KEYS = ("input_size", "resize_size", "mean", "std", "interpolation")
INPUT_SIZES = (16, 2048)
RESIZE_SIZES = (16, 4096)


def _sized(d: dict[str, Any], key: str, bounds: tuple[int, int]) -> None:
    if key not in d:
        raise FieldProblem(f"lacks {key!r}")
    try:
        check_positive_int(d[key])
    except FieldProblem as e:
        raise FieldProblem(f"{key} {e}") from None
    if not bounds[0] <= d[key] <= bounds[1]:
        raise FieldProblem(f"{key} must be between {bounds[0]} and {bounds[1]} pixels, got {d[key]}")


def _preprocess(v: Any) -> Preprocess:
    d = check_object(v, "an object (input_size, resize_size, mean, std, interpolation)")
    unknown = [k for k in d if k not in PREPROCESS_KEYS]
    if unknown:
        raise FieldProblem(f"has {unknown[0]!r}, which graft does not write (known: {', '.join(PREPROCESS_KEYS)})")
    _sized(d, "input_size", INPUT_SIZES)
    _sized(d, "resize_size", RESIZE_SIZES)
    for key in ("mean", "std"):
        x = d.get(key)
        if not isinstance(x, list | tuple) or len(x) != 3 or not all(is_number(c) and math.isfinite(c) for c in x):
            raise FieldProblem(
                f"{key} must be a list of 3 finite numbers (one per RGB channel), got {json.dumps(x)[:60]}"
            )
    if not all(c > 0 for c in d["std"]):
        raise FieldProblem(f"std must be greater than 0, got {d['std']}")
    if d.get("interpolation") not in INTERPOLATIONS:
        raise FieldProblem(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {d.get('interpolation')!r}")
    return Preprocess.from_dict(d)


def _head(v: Any) -> HeadSpec | None:
    if v is None:
        return None
    d = check_object(v, "an object (hidden, dropout)")
    unknown = [k for k in d if k not in ("hidden", "dropout")]
    if unknown:
        raise FieldProblem(f"has {unknown[0]!r}, which graft does not write (known: hidden, dropout)")
    hidden = d.get("hidden", [])
    if not isinstance(hidden, list | tuple) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise FieldProblem(f"hidden must be a list of layer widths (whole numbers > 0), got {json.dumps(hidden)[:60]}")
    dropout = d.get("dropout", 0.0)
    if not is_number(dropout) or not 0 <= dropout < 1:
        raise FieldProblem(f"dropout must be a number in [0, 1), got {json.dumps(dropout)[:40]}")
    return HeadSpec.from_dict(d)


def _int_pair(v: Any) -> Any:
    if not isinstance(v, list | tuple) or len(v) != 2 or not all(_image_side(x) for x in v):
        raise FieldProblem(f"must be a list of 2 sizes ({INPUT_SIZES[0]}-{INPUT_SIZES[1]}), got {json.dumps(v)[:40]}")
    return v


def _image_side(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and INPUT_SIZES[0] <= v <= INPUT_SIZES[1]


def _image_size(v: Any) -> int:
    if not _image_side(v):
        low, high = INPUT_SIZES
        raise FieldProblem(f"must be a whole number from {low} to {high}, got {json.dumps(v)[:40]}")
    return v


#: The builder kwargs the backbone registry records (``graft.models.backbones``: Inception/GoogLeNet weights,
#: MaxViT's and ViT's input sizes), and what each must hold. Nothing else reaches a model builder:
#: not ``weights``, ``pretrained`` or ``checkpoint_path``, which make torchvision or timm open a file.
ARCH_KWARGS: dict[str, Callable[[Any], Any]] = {
    "transform_input": check_bool,
    "aux_logits": check_bool,
    "init_weights": check_bool,
    "input_size": _int_pair,
    "image_size": _image_size,
}


def _arch_kwargs(v: Any) -> dict[str, Any]:
    d = check_object(v, "an object of model builder arguments")
    for key, value in d.items():
        if key not in ARCH_KWARGS:
            raise FieldProblem(f"has {key!r}, which no graft backbone takes (known: {', '.join(ARCH_KWARGS)})")
        try:
            ARCH_KWARGS[key](value)
        except FieldProblem as e:
            raise FieldProblem(f"{key} {e}") from None
    return dict(d)


def _pretrained(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    d = check_object(v, "an object (tag, file, source, sha256)")
    for key in ("tag", "file", "source"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise FieldProblem(f"{key} must be a string or null, got {type_name(d[key])}")
    if d.get("sha256") is not None:
        try:
            _sha256(d["sha256"])
        except FieldProblem as e:
            raise FieldProblem(f"sha256 {e}") from None
    return d


def _versions(v: Any) -> dict[str, str] | None:
    if v is None:
        return None
    d = check_object(v, "an object of package versions")
    bad = next((k for k, x in d.items() if not isinstance(x, str)), None)
    if bad is not None:
        raise FieldProblem(f"{bad} must be a version string, got {type_name(d[bad])}")
    return d


def check_task(v: Any) -> str:
    if v != "multilabel":
        raise FieldProblem(f"must be 'multilabel' (or absent for one label per image), got {v!r}"[:120])
    return v


def _thresholds(v: Any) -> tuple[float, ...]:
    if not isinstance(v, list | tuple) or not all(is_number(t) and 0 <= t <= 1 for t in v):
        raise FieldProblem(f"must be a list of probabilities in [0, 1], one per class, got {json.dumps(v)[:60]}")
    return tuple(v)


def _quantization(v: Any) -> dict[str, Any]:
    d = check_object(v, "an object describing the int8 program")
    for key in ("format", "method"):
        if key in d and not isinstance(d[key], str):
            raise FieldProblem(f"{key} must be a string, got {type_name(d[key])}")
    return d


def _kind(v: Any) -> str:
    if v != ENSEMBLE:
        raise FieldProblem(f"must be {ENSEMBLE!r} (or absent for a single model), got {v!r}"[:120])
    return v


def stays_inside(name: str) -> bool:
    """Whether ``name``, relative to a run directory, stays inside it as written (loaders also resolve links)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return not name.startswith(("/", "\\", "~")) and ":" not in name and ".." not in parts


def check_run_file(v: Any) -> str:
    name = check_str(v)
    if not stays_inside(name):
        raise FieldProblem(f"must name a file inside the run directory, got {name!r}"[:160])
    return name


def _members(v: Any) -> tuple[str, ...]:
    names = check_str_list(v, "member run folders")
    if not names:
        raise FieldProblem("must name at least one member run")
    outside = next((n for n in names if not stays_inside(n)), None)
    if outside is not None:
        raise FieldProblem(f"must name folders inside the run directory, got {outside!r}"[:160])
    return names


#: Every key graft writes: its check, and whether every run has it.
FIELDS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "format": (check_str, True),
    "kind": (_kind, False),
    "arch": (check_str, True),
    "arch_source": (_opt_str, False),
    "arch_kwargs": (_arch_kwargs, False),
    "in_features": (check_positive_int, False),
    "classes": (_classes, True),
    "head": (_head, False),
    "preprocess": (_preprocess, True),
    "mode": (check_str, False),
    "pretrained": (_pretrained, False),
    "versions": (_versions, False),
    "task": (check_task, False),
    "thresholds": (_thresholds, False),
    "tta": (check_bool, False),
    "combine": (_opt_str, False),
    "members": (_members, False),
    "weights_file": (check_run_file, False),
    "weights_sha256": (_sha256, False),
    "program_file": (check_run_file, False),
    "program_sha256": (_sha256, False),
    "quantization": (_quantization, False),
}


@dataclass(frozen=True)
class RunMeta:
    """A run's ``model.json``: what rebuilds its model and how it was made. Fields a kind of run does not write
    are None (``thresholds``: multi-label runs; ``program_*``, ``quantization``: int8 runs; ``kind``, ``members``,
    ``combine``: ensembles, whose ``head`` is None)."""

    format: str
    arch: str
    classes: tuple[str, ...]
    preprocess: Preprocess
    head: HeadSpec | None = None
    kind: str | None = None
    arch_source: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    in_features: int | None = None
    mode: str | None = None
    pretrained: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    task: str | None = None
    thresholds: tuple[float, ...] | None = None
    tta: bool | None = None
    combine: str | None = None
    members: tuple[str, ...] | None = None
    weights_file: str | None = None
    weights_sha256: str | None = None
    program_file: str | None = None
    program_sha256: str | None = None
    quantization: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys of a newer graft, written back as read
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)  # the source's key order

    @classmethod
    def from_json(cls, path: str | Path) -> RunMeta:
        """Read and check ``path`` (a run's ``model.json``). Raises RunError naming the file and the field."""
        path = Path(path)
        return cls.from_dict(read_object(path), source=path)

    @classmethod
    def read(cls, run_dir: str | Path) -> RunMeta:
        """``run_dir/model.json``, checked."""
        return cls.from_json(Path(run_dir) / META_FILE)

    @classmethod
    def read_or_none(cls, run_dir: str | Path) -> RunMeta | None:
        """``run_dir/model.json``, checked; None while the run has not saved a model yet (no file)."""
        path = Path(run_dir) / META_FILE
        return cls.from_json(path) if path.is_file() else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Any = META_FILE) -> RunMeta:
        """Check ``d`` (the content of ``source``, named in errors) and keep it typed."""
        if not isinstance(d, Mapping):
            raise RunError(f"{source} must hold a JSON object, got {type_name(d)}; {FIX}")
        values: dict[str, Any] = {}
        for name, (check, required) in FIELDS.items():
            if name not in d:
                if required or (name == "head" and d.get("kind") != ENSEMBLE):
                    raise field_error(source, name, "is missing")
                continue
            try:
                values[name] = check(d[name])
            except FieldProblem as e:
                raise field_error(source, name, str(e)) from None
        if values.get("thresholds") is not None and len(values["thresholds"]) != len(values["classes"]):
            n, k = len(values["thresholds"]), len(values["classes"])
            raise field_error(source, "thresholds", f"has {n} values for {k} classes (one per class)")
        if values.get("kind") == ENSEMBLE and not values.get("members"):
            raise field_error(source, "members", "is missing (an ensemble names its member runs)")
        extra = {k: v for k, v in d.items() if k not in FIELDS}
        return cls(**values, extra=extra, keys=tuple(d))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``model.json``: the keys read, in their order, then fields set since."""
        present = {name for name in FIELDS if getattr(self, name) is not None} - {"arch_kwargs"}
        if self.arch_kwargs or "arch_kwargs" in self.keys:
            present.add("arch_kwargs")
        order = [k for k in self.keys if k in FIELDS or k in self.extra]
        order += [k for k in FIELDS if k in present and k not in order] + [k for k in self.extra if k not in order]
        return {k: self.extra[k] if k in self.extra else self._json(k) for k in order}

    def _json(self, name: str) -> Any:
        value = getattr(self, name)
        if name == "preprocess":
            return value.to_dict() | {"mean": list(value.mean), "std": list(value.std)}
        if isinstance(value, HeadSpec):
            return value.to_dict()
        return list(value) if isinstance(value, tuple) else value

    def replace(self, **changes: Any) -> RunMeta:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------------------------

    @property
    def is_int8(self) -> bool:
        """An int8 run (``graft quantize``, ``graft train --int8``, ``--mode qat``): its writer records the program
        file and a ``quantization`` block of format ``graft-int8/...``."""
        info = self.quantization or {}
        return str(info.get("format", "")).startswith("graft-int8/") or bool(self.program_file)

    @property
    def is_ensemble(self) -> bool:
        return self.kind == ENSEMBLE

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def builder_kwargs(self) -> dict[str, Any]:
        """``arch_kwargs`` as the model builder takes them (JSON lists back to tuples)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.arch_kwargs.items()}
