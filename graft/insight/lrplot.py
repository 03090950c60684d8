"""The figure of a learning-rate range test (``lr_find.png``): the smoothed loss against the learning rate on a
log axis, the raw losses faint behind it, the suggestion marked; and the callback that draws it for the stages a
``--lr auto`` run tested."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.core.errors import GraftError
from graft.training.callbacks import Callback
from graft.training.lrfind import RangeTest, read_csv


class LrPlotError(GraftError):
    """The range test's figure cannot be drawn (matplotlib missing)."""


def plot_lr_find(test: RangeTest, path: str | Path | None = None) -> Any:
    """``lr_find.png`` of ``test`` (written atomically; its path is returned); without ``path`` the figure."""
    try:  # a bare Figure renders with the Agg canvas: no pyplot, no backend selected
        from matplotlib.figure import Figure
    except ImportError:
        raise LrPlotError("figures need matplotlib: pip install 'graft[plots]' (or pip install matplotlib)") from None
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.subplots()
    ax.plot(test.lrs, test.losses, color="#1f77b4", alpha=0.25, lw=1, label="loss")
    ax.plot(test.lrs, test.smoothed, color="#1f77b4", lw=2, label="smoothed loss")
    ax.plot([test.suggestion], [test.smoothed[test.index]], "o", ms=9, color="#d62728", zorder=5,
            label=f"suggestion (valley): {test.suggestion:.2e}")  # fmt: skip
    ax.set_xscale("log")
    finite = [v for v in test.smoothed if v == v and abs(v) != float("inf")]
    if finite:  # the divergence would squash the interesting part of the curve
        ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), min(max(finite), 4 * min(finite)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"learning-rate range test ({test.stage} stage)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.91)
    if path is None:
        return fig
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write_bytes(path, buf.getvalue())
    return Path(path)


class LrFindFigures(Callback):
    """At the end of a ``--lr auto`` run: ``lr_find-<stage>.png`` beside each ``lr_find-<stage>.csv``."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log

    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        for csv_path in sorted(Path(run_dir).glob("lr_find-*.csv")):
            try:
                plot_lr_find(read_csv(csv_path), csv_path.with_suffix(".png"))
            except LrPlotError as e:
                self.log(f"warning: {csv_path.with_suffix('.png').name} not drawn: {e}")
