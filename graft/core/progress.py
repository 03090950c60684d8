"""Progress bars: tqdm on an interactive terminal or in a notebook, nothing in logs and CI."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on an interactive terminal or in a Jupyter notebook; silent otherwise (logs and CI stay clean)."""
    notebook = in_notebook()
    if not (notebook or sys.stderr.isatty()) or os.environ.get("GRAFT_NO_PROGRESS"):
        yield from iterable
        return
    from tqdm import tqdm

    if notebook:  # tqdm.auto's widget bar, when ipywidgets is installed; else the text bar, which notebooks show too
        with contextlib.suppress(ImportError):
            import ipywidgets  # noqa: F401
            from tqdm.auto import tqdm
    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython in a kernel app, as tqdm.auto decides it)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
