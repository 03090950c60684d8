"""What every config is made of: the ``opt`` field (default, help text, check), the checks that several options
share, the options alike on every command (``--device``, ``RUN``), building a config from keyword arguments, and a
config as JSON. No heavy imports: ``graft --help`` imports it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from graft.core.errors import ConfigError

Device = Literal["auto", "cpu", "cuda", "mps"]
DEVICE_HELP = "auto picks a GPU when present"
RUN_HELP = "run directory written by graft train"

T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    """A check of one option's value: ``--NAME must be MUST (got VALUE)HINT`` when ``ok(value)`` is false."""

    must: str
    ok: Callable[[Any], bool]
    hint: str = ""


@dataclass(frozen=True)
class Shared:
    """An option that several configs declare: its default, check, and the help text where it reads the same on
    every command (else each config words it). ``opt(SHARED, ...)`` makes the field."""

    default: Any
    help: str | None = None
    check: Rule | None = None
    #: the error when it is required and left None; ``{example}`` is filled from ``opt(..., example=...)``
    missing: str | None = None
    positional: bool = False


AT_LEAST_0 = Rule(">= 0", lambda v: v >= 0)
AT_LEAST_1 = Rule(">= 1", lambda v: v >= 1)
ABOVE_0 = Rule("> 0", lambda v: v > 0)
FRACTION = Rule("between 0 and 1", lambda v: 0 < v < 1)
BELOW_1 = Rule("in [0, 1)", lambda v: 0 <= v < 1)


def opt(
    default: Any,
    help: str | None = None,
    *,
    check: Rule | None = None,
    missing: str | None = None,
    example: str | None = None,
    repr: bool = True,
    **meta: Any,
) -> Any:
    """A config field: its default (or a :class:`Shared` option), its CLI help text, its ``check`` (skipped for
    None), the error when it is required and left None (``missing``), whether a printed config shows it
    (``repr``), and optional ``positional``/``nargs``/``metavar``/``parse``/``cli``/``api`` metadata
    (``cli=False``: a Python-only option, not on the command line; ``api=False``: a command-line-only one, which
    the Python function does not take)."""
    if isinstance(default, Shared):
        shared = default
        default, help, check = shared.default, help or shared.help, check or shared.check
        if shared.missing is not None:
            missing = shared.missing.format(example=f" (e.g. {example})" if example else "")
        meta = {"positional": True, **meta} if shared.positional else meta
    if help is None:
        raise TypeError("opt() needs a help text")
    checks = {"check": check} if check is not None else {}
    meta = {"help": help, **meta, **checks} | ({"missing": missing} if missing is not None else {})
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), repr=repr, metadata=meta)
    return field(default=default, repr=repr, metadata=meta)


RUN = Shared(None, RUN_HELP, missing="no run directory given: pass RUN{example}", positional=True)
DEVICE = Shared("auto", DEVICE_HELP)


def check_fields(cfg: Any) -> None:
    """Raise a :class:`ConfigError` for the first field, in declaration order, that is missing, not a finite number
    where it is a number (nan and inf pass comparisons such as ``lr <= 0`` unnoticed), or fails its check."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None and "missing" in f.metadata:
            raise ConfigError(f.metadata["missing"])
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number (got {value})")
        rule: Rule | None = f.metadata.get("check")
        if rule is not None and value is not None and not rule.ok(value):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be {rule.must} (got {value}){rule.hint}")


def check_all(checks: list[tuple[bool, str]]) -> None:
    """Raise a :class:`ConfigError` with the message of the first check that is false (checks of several options)."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def optional_path(value: Any) -> Path | None:
    return Path(value) if value is not None else None


def defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a config dataclass that has one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def api_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields that the Python function of a config takes (``api=False`` marks a command-line-only one)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("api", True)]


def from_options(cls: type[T], options: dict[str, Any], **positional: Any) -> T:
    """``cls(**positional, **options)`` for the Python API: ``positional`` is what the function took by position
    (``run``, ``data``); unknown names, a command-line-only one, and a positional one given again by keyword, are
    refused in one line."""
    names = {f.name for f in api_fields(cls)}
    unknown = set(options) - (names - set(positional))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {sorted(unknown)}; see graft.core.config.{cls.__name__} for the valid ones"
        )
    return cls(**positional, **options)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples to plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list | tuple):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


F = TypeVar("F", bound=Callable[..., Any])


def takes_fields(cls: type, *positional: str) -> Callable[[F], F]:
    """For a ``func(VALUE, /, *, ..., **options)`` whose ``options`` build a ``cls``: ``help()``, IDEs and
    :func:`inspect.signature` show the fields of ``cls`` that the function takes (all but the ``positional`` ones,
    which VALUE and the like fill, and the command-line-only ones) as keyword arguments with the dataclass's
    defaults, so the function itself restates none."""

    def wrap(func: F) -> F:
        import inspect

        signature = inspect.signature(func)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        given = defaults(cls)
        keywords = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=given[f.name], annotation=f.type)
            for f in api_fields(cls)
            if f.name not in positional
        ]
        func.__signature__ = signature.replace(parameters=own + keywords)  # type: ignore[attr-defined]
        return func

    return wrap
