"""``graft doctor``: duplicates, train/val leakage, likely label errors, outliers, image quality and class balance
of a dataset folder, from the same stored features that training uses.

Light to import: :mod:`graft.data.quality` runs inside the scan, and :mod:`graft.features.similarity` inside
training; the API (:func:`doctor`) imports torch only when called.
"""

from __future__ import annotations

from typing import Any


def doctor(data: Any, /, **options: Any) -> Any:
    """See :func:`graft.insight.doctor.run.doctor`."""
    from graft.insight.doctor.run import doctor as run

    return run(data, **options)
