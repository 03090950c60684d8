"""``graft.report``: the public path of :mod:`graft.insight.report`."""

from graft.insight.report import (
    CSS,
    FIGURES,
    IMBALANCE_RATIO,
    MAX_SKIPPED_LISTED,
    REPORT_FILE,
    render_report,
    write_report,
    write_run_report,
)

__all__ = [
    "CSS",
    "FIGURES",
    "IMBALANCE_RATIO",
    "MAX_SKIPPED_LISTED",
    "REPORT_FILE",
    "render_report",
    "write_report",
    "write_run_report",
]
