"""``graft doctor``: duplicates, train/val leakage, likely label errors, outliers, image quality and class balance
of a dataset folder, from the same stored features that training uses.

Light to import: :mod:`graft.data.quality` runs inside the scan, and :mod:`graft.features.similarity` inside
training; the API (:func:`doctor`) imports torch only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graft.core.config import DoctorConfig
from graft.core.config.fields import takes_fields


@takes_fields(DoctorConfig, "data")
def doctor(data: Any, /, *, log: Callable[[str], None] = print, **options: Any) -> Any:
    """See :func:`graft.insight.doctor.run.doctor`."""
    from graft.insight.doctor.run import doctor as run

    return run(data, log=log, **options)
