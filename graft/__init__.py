"""graft: from a folder of labelled images to a deployable image classifier, by transfer learning.

    import graft
    run = graft.train("data/", arch="mobilenet_v2", mode="freeze", epochs=10)
    clf = graft.load(run.run_dir)
    clf.predict("bee.jpg", top_k=2)

Heavy modules (torch, torchvision) are imported on first use, so ``import graft`` and the CLI start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graft.core.version import __version__

__all__ = ["Classifier", "TrainConfig", "__version__", "doctor", "list_backbones", "load", "suggest", "train"]

if TYPE_CHECKING:
    from graft.commands.train import train
    from graft.core.config import TrainConfig
    from graft.inference.classifier import Classifier
    from graft.inference.loading import load
    from graft.insight.doctor import doctor
    from graft.insight.suggest_run import suggest
    from graft.models.backbones import list_backbones

_LAZY = {
    "train": "graft.commands.train",
    "doctor": "graft.insight.doctor",
    "suggest": "graft.insight.suggest_run",
    "load": "graft.inference.loading",
    "Classifier": "graft.inference.classifier",
    "TrainConfig": "graft.core.config",
    "list_backbones": "graft.models.backbones",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'graft' has no attribute {name!r}")
