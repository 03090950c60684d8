"""A dataset's held-out test folder (``DATA/test/<class>/*``, as in the classic train/valid/test layout), evaluated
once at the end of ``graft train`` with the best model and reported beside val.

The best epoch is chosen on val before this runs, and training never reads the folder (the scan leaves it out,
:func:`graft.data.folders.held_out_test`), so the test accuracy stays an unbiased estimate.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.core import atomic
from graft.data.folders import held_out_test
from graft.training.callbacks import Callback

#: where the test evaluation's evaluation.json and per_class.csv go, inside the run directory
TEST_EVAL_DIR = "eval-test"


def test_folder(data: Path | None) -> Path | None:
    """``data``'s held-out test folder, or None (no such folder, or ``data`` is a table or a DataFrame)."""
    if not isinstance(data, str | os.PathLike) or not Path(data).is_dir():
        return None
    return held_out_test(Path(data))


def evaluate_test(run_dir: Path, folder: Path, metrics: dict[str, Any], log: Callable[[str], None]) -> None:
    """Evaluate ``run_dir``'s model on ``folder`` into ``run_dir/eval-test``, add ``test_acc``, its Wilson 95%
    interval ``test_acc_ci95`` and ``n_test`` to ``metrics`` and metrics.json, and log one line."""
    from graft.insight.evaluation import evaluate

    device = str(metrics.get("device") or "auto").split(":")[0]  # where training ran (rank 0's device)
    result = evaluate(run_dir, folder, out=run_dir / TEST_EVAL_DIR, plots=False, device=device)
    lo, hi = result.accuracy_ci95
    metrics.update(
        test_acc=result.accuracy,
        test_acc_ci95=[lo, hi],
        n_test=result.n,
        test_dir=str(folder),
    )
    atomic.atomic_write_json(run_dir / "metrics.json", metrics)
    unread = f", {len(result.unreadable)} unreadable" if result.unreadable else ""
    log(
        f"test acc {result.accuracy:.4f} (95% CI {lo:.4f}-{hi:.4f}; {result.correct}/{result.n} images of "
        f"{folder}{unread}); the best epoch was chosen on val alone"
    )


class TestEvaluation(Callback):
    """At the end of a run whose DATA has a held-out ``test/`` folder: :func:`evaluate_test`. A failure only warns
    (the trained model is saved before this runs)."""

    __test__ = False  # a class named Test* is not a pytest test class

    def __init__(self, data: Path | None, log: Callable[[str], None]) -> None:
        self.data, self.log = data, log

    def on_run_end(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        folder = test_folder(self.data)
        if folder is None:
            return
        try:
            evaluate_test(run_dir, folder, metrics, self.log)
        except Exception as e:  # the run is saved; a test folder that cannot be evaluated must not fail it
            self.log(
                f"warning: the test folder {folder} was not evaluated ({type(e).__name__}: {e}); "
                f"the trained model is saved. Evaluate it with: graft evaluate {run_dir} {folder}"
            )
