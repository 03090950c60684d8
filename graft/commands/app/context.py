"""What the routes of ``graft app`` share: the config, the project store, the event streams and the background
workers (the learner that suggests labels, the training job, the check)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graft.commands.app.events import Events
    from graft.commands.app.store import Store
    from graft.core.config import AppConfig


@dataclass
class AppContext:
    """One running app. ``learner``, ``trainer`` and ``checker`` are None where the app runs without them (tests
    of the data routes); routes that need one answer 503 then."""

    cfg: AppConfig
    store: Store
    events: Events
    learner: Any = None  # graft.commands.app.learner.Learner
    trainer: Any = None  # graft.commands.app.jobs.Trainer
    checker: Any = None  # graft.commands.app.jobs.Checker

    def note_labels(self, n: int = 1) -> None:
        """Tell the learner that ``n`` labels changed (it refits after every ``retrain_every`` of them)."""
        if self.learner is not None and n > 0:
            self.learner.note_labels(n)
