"""Exceptions graft raises for problems a user can fix.

Every message says what happened, which file or option is involved, and what to do.
The CLI prints ``error: <message>`` and exits with status 1 for any :class:`GraftError`
(with a traceback only under ``--debug``); anything else is a bug in graft.
"""

from __future__ import annotations


class GraftError(Exception):
    """Base class of user-facing errors."""


class ConfigError(GraftError, ValueError):
    """An option has an invalid value or options contradict each other."""


class DataError(GraftError):
    """The dataset folder cannot be used as given (missing, too few classes, mismatched splits...)."""


class ImageError(GraftError):
    """One image file cannot be read; ``reason`` is a short human-readable cause."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class WeightsError(GraftError):
    """Pretrained weights cannot be found, verified or loaded."""


class ArchitectureError(GraftError, KeyError):
    """Unknown architecture name, or an architecture that cannot do what was asked."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class RunError(GraftError):
    """A run directory is missing, incomplete or corrupt."""


class WriteError(RunError, OSError):
    """A file could not be written (disk full, no permission...). Writes are atomic, so the previous version of
    the file, if any, is intact. Also an :class:`OSError`, with the ``errno`` of the failure."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class ResourceError(GraftError):
    """The machine ran out of something a run needs (accelerator memory); the message says what to change."""


class DependencyError(GraftError, ImportError):
    """An optional package that an asked-for feature needs is not installed; the message names what to install."""
