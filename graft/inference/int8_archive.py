"""An int8 run's program file (``model.pt2``, format :data:`INT8_FORMAT`) and loading it without pickle or code
from the file.

:func:`check_archive` lists what ``torch.export.load`` would otherwise unpickle or execute; graft saves nothing of
that kind, verifies the file's sha256 (from ``model.json``) and refuses any archive that holds it. No calibration
happens on load.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterable
from typing import Any

from graft.core.errors import GraftError

PROGRAM_FILE = "model.pt2"
INT8_FORMAT = "graft-int8/1"


class QuantizationError(GraftError):
    """A model cannot be quantized, or an int8 run cannot be loaded."""


# saving and loading without pickle (and without running code from the file)

_ALLOWED_MEMBER = re.compile(
    r"^[^/]+/("
    r"data/(weights|constants)/[A-Za-z0-9_]+|data/(weights|constants)/model_(weights|constants)_config\.json|"
    r"models/model\.json|data/sample_inputs/model\.pt|archive_format|archive_version|\.data/version|byteorder|"
    r"\.data/serialization_id)$"
)
#: Graph nodes may only call these (a ``torch.export`` graph may name any attribute reachable from ``torch``).
_ALLOWED_TARGET = re.compile(
    r"^(torch\.ops\.(aten|quantized_decomposed)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.getitem)$"
)
#: Symbolic shapes are parsed with sympy.sympify (eval): only symbols, integers and arithmetic.
_SYM_TOKEN = re.compile(r"'?[a-z]+[0-9]+'?|[A-Za-z]+|[0-9]+|[-+*/(),= ]")
_SYM_WORDS = {
    "Symbol",
    "Integer",
    "positive",
    "integer",
    "nonnegative",
    "True",
    "False",
    "FloorDiv",
    "Mod",
    "Max",
    "Min",
}


def _walk_values(obj: Any, key: str) -> Iterable[Any]:
    """Every value stored under ``key`` anywhere in a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk_values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_values(v, key)


def _safe_sym_expr(expr: Any) -> bool:
    if not isinstance(expr, str):
        return False
    tokens = _SYM_TOKEN.findall(expr)
    if "".join(tokens) != expr:
        return False
    # Symbol names (s31, 's31') and numbers are data; any other word must be one of the few sympy needs.
    return all(not t.isalpha() or t in _SYM_WORDS for t in tokens)


def check_archive(data: bytes, *, source: str = "the program") -> None:
    """Refuse a ``torch.export`` archive from which ``torch.export.load`` would run anything but the int8 graph.

    In torch 2.14 ``torch.export.load`` unpickles (``weights_only=False``) every weight or constant its config
    marks ``use_pickle``, script and opaque objects, and non-empty sample inputs (after a ``weights_only=True``
    try); ``.module()`` ``exec``\\ s the program's ``guards_code``; symbolic shapes go through ``sympy.sympify``
    (``eval``); and a node's target may be any attribute reachable from ``torch``. So every member must be one
    graft writes, nothing may be pickled, the sample inputs must be empty, ``guards_code`` empty, every node must
    call an ``aten``/``quantized_decomposed`` operator, and every symbolic expression must be plain arithmetic.
    """
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
    except zipfile.BadZipFile:
        raise QuantizationError(f"{source} is not a torch.export archive (not a zip file)") from None

    def refuse(why: str) -> QuantizationError:
        return QuantizationError(f"{source} {why}; refusing to load it. Quantize the float run again.")

    bad = [n for n in names if not _ALLOWED_MEMBER.match(n)]
    if (
        bad
        or not any(n.endswith("/archive_format") for n in names)
        or not any(n.endswith("/models/model.json") for n in names)
    ):
        raise refuse(f"has unexpected or missing members ({bad[:3]})")
    try:
        for n in names:
            if "/data/sample_inputs/" in n and z.getinfo(n).file_size:
                raise refuse(f"holds pickled example inputs ({n})")
            if n.endswith("_config.json"):
                pickled = [k for k, v in json.loads(z.read(n))["config"].items() if v.get("use_pickle", True)]
                if pickled:
                    raise refuse(f"stores {pickled[:3]} with pickle")
            if n.endswith("/models/model.json"):
                program = json.loads(z.read(n))
                if program.get("guards_code"):
                    raise refuse("carries guard code (Python that loading would run)")
                graph = program["graph_module"]["graph"]
                if graph.get("custom_obj_values"):
                    raise refuse("holds script objects (pickled)")
                targets = {node["target"] for node in graph["nodes"]}
                odd = sorted(t for t in targets if not (isinstance(t, str) and _ALLOWED_TARGET.match(t)))
                if odd:
                    raise refuse(f"calls functions other than aten/quantized_decomposed operators ({odd[:3]})")
                exprs = [*_walk_values(program, "expr_str"), *program.get("range_constraints", {})]
                unsafe = [e for e in exprs if not _safe_sym_expr(e)]
                if unsafe:
                    raise refuse(f"has symbolic shapes that are not plain arithmetic ({str(unsafe[0])[:80]!r})")
    except (KeyError, TypeError, AttributeError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, QuantizationError):
            raise
        raise refuse(f"is malformed ({type(e).__name__}: {e})") from None
