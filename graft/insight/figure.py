"""The figure machinery of :mod:`graft.insight.plots`: a matplotlib Figure without pyplot (Agg canvas, no backend
selected, no global state) that Jupyter shows inline, its PNG bytes, and the atomic PNG file."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core.errors import GraftError


class PlotError(GraftError):
    """A figure cannot be drawn (matplotlib missing, nothing to plot)."""


def new_figure(width: float, height: float) -> Any:
    """An empty figure of ``width`` x ``height`` inches at 100 dpi that Jupyter shows inline."""
    return inline_figure_class()(figsize=(width, height), dpi=100)


def inline_figure_class() -> type:
    """The class of graft's figures (``InlineFigure``): matplotlib is imported only when a figure is drawn, and
    asked for at every call (a dictionary lookup once imported) so that its absence is one clear error."""
    try:  # a bare Figure renders PNGs with the Agg canvas: no backend is selected, a pyplot user's is left alone
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("figures need matplotlib: pip install 'graft[plots]' (or pip install matplotlib)") from None
    return _inline_figure_class(Figure)


@functools.cache
def _inline_figure_class(figure: type) -> type:
    class InlineFigure(figure):
        """A matplotlib Figure that Jupyter shows inline as a PNG (IPython calls ``_repr_png_``): a bare Figure
        has no canvas of a display backend, and pyplot is not used."""

        def _repr_png_(self) -> bytes:
            return png_bytes(self)

    return InlineFigure


def png_bytes(fig: Any, *, dpi: int = 100) -> bytes:
    """``fig`` as PNG bytes (every text made drawable first, see :func:`make_printable`)."""
    buf = io.BytesIO()
    make_printable(fig)
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 3})
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path | None, *, dpi: int = 100) -> Any:
    """Write ``fig`` to ``path`` atomically and return the path; without a path, return the figure."""
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write_bytes(path, png_bytes(fig, dpi=dpi))
    return path


def make_printable(fig: Any) -> None:
    """Make every text of ``fig`` drawable: a file or class name that is not UTF-8 is held by Python with lone
    surrogates, which matplotlib's font code refuses (a crash of the whole figure); they are shown as ``\\xNN``."""
    from matplotlib.text import Text
    from matplotlib.ticker import FixedFormatter

    def clean(text: str) -> str:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    for t in fig.findobj(Text):
        t.set_text(clean(str(t.get_text())))
    for ax in fig.axes:  # tick labels are made from the formatter when drawn
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, FixedFormatter):
                formatter.seq = [clean(str(x)) for x in formatter.seq]
