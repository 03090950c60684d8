"""Import-time savings of the ``graft`` command: ``torch._dynamo`` is imported only when something compiles.

torch 2.14 imports all of ``torch._dynamo`` (fx's symbolic shapes, sympy, the distributed tensor ops, triton) the
first time any ``torch.optim`` optimizer steps (``Optimizer.step`` calls ``torch._dynamo.graph_break()``, and
``zero_grad``/``add_param_group``/``state_dict`` are wrapped by ``torch._dynamo.disable``), and torchvision imports
it at module level (``torchvision.ops.roi_align``, ``torchvision.tv_tensors``). On a 2-core CPU that is 1.5-2 s of
every graft process, more than a frozen run spends training its head, for a compiler that an eager run never uses.

:func:`defer_dynamo` puts a stand-in for ``torch._dynamo`` in ``sys.modules`` that answers the two calls eager code
makes, exactly as dynamo would when nothing is being compiled, and hands every other use to the real module,
importing it then:

- ``graph_break()`` does nothing: before dynamo is imported no frame can be under compilation, so there is no graph
  to break.
- ``disable(fn)`` returns ``fn`` wrapped so that it runs as it is while dynamo is not imported (nothing can be
  compiling it) and through the real ``torch._dynamo.disable(fn)`` (made once) from then on.
- Any other attribute imports the real dynamo, which replaces the stand-in in ``sys.modules`` and as
  ``torch._dynamo``; code holding the stand-in goes on reaching the real module through it. That includes
  ``__path__``, which the import system reads before importing a submodule such as ``torch._dynamo.config``, and
  ``__all__``; other dunders are absent (``inspect.getmodule`` reads ``__file__`` of every module).

So ``torch.compile``, ``torch.export`` and graft's int8 path import dynamo the moment they need it and behave as
without the stand-in. ``GRAFT_DEFER_DYNAMO=0`` turns this off.

Only a process that graft owns does this: the ``graft`` command (:func:`graft.commands.cli.entry`, also behind
``python -m graft``) calls :func:`own_process` first. Imported as a library (``import graft`` in a notebook or in
someone's program), graft never replaces a module of torch's: the process pays dynamo's import like any other
torch program, and nothing that shares it can tell graft is there.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

_LOCK = threading.RLock()
_REAL: list[types.ModuleType] = []  # the real torch._dynamo, once imported through the stand-in
_OWN_PROCESS: list[bool] = []  # set by own_process(): this process is the graft command, not a library user's


def own_process() -> None:
    """Declare this process graft's own (the ``graft`` command), where :func:`import_torchvision` may defer
    dynamo. Imports nothing; a library import of graft never calls it."""
    _OWN_PROCESS.append(True)


class _DeferredDynamo(types.ModuleType):
    """``torch._dynamo`` until something needs more than ``graph_break`` and ``disable`` (see the module doc)."""

    def __init__(self) -> None:
        super().__init__("torch._dynamo", "Stand-in for torch._dynamo until it is needed (graft.core.deps).")

    @staticmethod
    def graph_break(msg: str = "") -> None:
        """Nothing is being compiled before dynamo is imported: there is no graph to break."""

    @staticmethod
    def disable(fn: Any = None, recursive: bool = True, *, reason: str | None = None, wrapping: bool = True) -> Any:
        return _lazy_disable(fn, recursive, reason=reason, wrapping=wrapping)

    def __getattr__(self, name: str) -> Any:
        # Dunders that tools probe on every module in sys.modules (inspect.getmodule reads __file__) must not
        # import dynamo; __path__ (read before importing a submodule) and __all__ (star imports) are dynamo's.
        if name.startswith("__") and name not in ("__path__", "__all__"):
            raise AttributeError(name)
        return getattr(real_dynamo(), name)


def defer_dynamo() -> None:
    """Install the ``torch._dynamo`` stand-in in graft's own process (:func:`own_process`) unless dynamo is already
    imported (or ``GRAFT_DEFER_DYNAMO=0``); elsewhere nothing."""
    if not _OWN_PROCESS or os.environ.get("GRAFT_DEFER_DYNAMO", "1") == "0":
        return
    with _LOCK:
        if "torch._dynamo" in sys.modules:
            return
        import torch

        stand_in = _DeferredDynamo()
        sys.modules["torch._dynamo"] = stand_in
        torch._dynamo = stand_in  # type: ignore[attr-defined]  # else torch's module __getattr__ on every access


def dynamo_deferred() -> bool:
    """Whether ``torch._dynamo`` is still the stand-in (dynamo not imported)."""
    return isinstance(sys.modules.get("torch._dynamo"), _DeferredDynamo)


def real_dynamo() -> types.ModuleType:
    """The real ``torch._dynamo``, imported now if only the stand-in was there."""
    with _LOCK:
        if _REAL:
            return _REAL[0]
        import torch

        stand_in = sys.modules.get("torch._dynamo")
        if isinstance(stand_in, _DeferredDynamo):
            del sys.modules["torch._dynamo"]
            if torch.__dict__.get("_dynamo") is stand_in:
                del torch._dynamo  # type: ignore[attr-defined]  # the import sets it to the real module
        module = importlib.import_module("torch._dynamo")
        _REAL.append(module)
        return module


def _lazy_disable(fn: Any = None, recursive: bool = True, *, reason: str | None = None, wrapping: bool = True) -> Any:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        made: list[Callable[..., Any]] = []

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not _REAL:  # dynamo not imported: nothing can be compiling this call
                return fn(*args, **kwargs)
            if not made:
                made.append(_REAL[0].disable(fn, recursive, reason=reason, wrapping=wrapping))
            return made[0](*args, **kwargs)

        return call

    return decorate if fn is None else decorate(fn)


def import_torchvision() -> types.ModuleType:
    """``import torchvision, torchvision.transforms.v2``; in graft's own process with ``torch._dynamo`` deferred
    (:func:`defer_dynamo`).

    ``torchvision.ops.roi_align`` does ``from torch._dynamo.utils import is_compile_supported`` at module level (the
    function is only called when torchvision's C++ ops are missing), so for the length of the import
    ``torch._dynamo.utils`` is stood in for too, by a module whose ``is_compile_supported`` calls the real one. If
    the import fails that way (a torchvision that needs more of dynamo), it is retried with the real dynamo.
    """
    defer_dynamo()
    if "torchvision.transforms.v2" in sys.modules or not dynamo_deferred():
        import torchvision
        import torchvision.transforms.v2

        return torchvision
    utils = types.ModuleType("torch._dynamo.utils")
    utils.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    sys.modules["torch._dynamo.utils"] = utils
    try:
        import torchvision
        import torchvision.transforms.v2  # imports torchvision.tv_tensors
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        _remove(utils)
        real_dynamo()
        import torchvision
        import torchvision.transforms.v2
    finally:
        _remove(utils)
    return torchvision


def _is_compile_supported(device_type: Any) -> Any:
    real_dynamo()
    return importlib.import_module("torch._dynamo.utils").is_compile_supported(device_type)


def _remove(module: types.ModuleType) -> None:
    if sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]
