"""The options that choose settings for the user: the learning-rate range test (``graft lr-find``, ``--lr auto``),
the cross-validated search (``graft train --auto``, ``--ensemble K``) and test-time augmentation (``--tta`` of
evaluate, predict and serve). Help texts, parsing and checks only: no heavy imports."""

from __future__ import annotations

import argparse
from typing import Any

from graft.core.errors import ConfigError

TUNING_HELP = {
    "lr": "learning rate (default with adamw: 1e-3 for head stages, 2e-4 for all layers; with sgd: 1e-2 / 1e-3); "
    "auto: a learning-rate range test per stage (graft lr-find) picks it",
    "auto": "choose the backbone (among those whose weights are here), head, lr, weight decay and balance by 5-fold "
    "cross-validation on the train split's stored features (val is never used to choose), write leaderboard.csv, "
    "then train the winner in frozen mode",
    "time_budget": "--auto: seconds the search may take (feature extraction included); no new candidate starts "
    "after it",
    "ensemble": "--auto: average the probabilities of the top K candidates (one run; predict, evaluate, serve and "
    "ONNX export take it)",
    "tta": "test-time augmentation: average the probabilities of each image and its horizontal mirror (2x the "
    "compute). Default: what model.json records (graft evaluate RUN --tta records it; --no-tta overrides)",
    "eval_tta": "test-time augmentation (the image and its mirror, probabilities averaged); on the run's val split "
    "--tta / --no-tta also records the choice in model.json, which predict and serve then follow",
}


def parse_lr(text: str) -> float | str:
    """``--lr``: a positive number or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e-3, or auto; got {text!r}") from None


def check_tuning(cfg: Any) -> None:
    """An ``error:`` line for a bad combination of the tuning options of a :class:`TrainConfig`."""
    lr = cfg.lr
    if isinstance(lr, str) and lr != "auto":
        raise ConfigError(f"--lr must be a number or auto (got {lr!r})")
    if lr is not None and not isinstance(lr, str) and lr <= 0:
        raise ConfigError(f"--lr must be > 0 (got {lr})")
    if lr == "auto" and (cfg.int8 or cfg.mode == "qat"):
        raise ConfigError("--lr auto is for float runs (--mode freeze or finetune); give --int8 / --mode qat a number")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        raise ConfigError(f"--time-budget must be > 0 seconds (got {cfg.time_budget})")
    if cfg.ensemble is not None and cfg.ensemble < 2:
        raise ConfigError(f"--ensemble must be >= 2 candidates (got {cfg.ensemble}); leave it out for one model")
    if (cfg.ensemble or cfg.time_budget is not None) and not cfg.auto:
        raise ConfigError("--ensemble and --time-budget go with --auto (the search they shape)")
    if cfg.auto and (cfg.mode != "freeze" or cfg.int8 or cfg.resume or not cfg.cache_features):
        raise ConfigError(
            "--auto searches and trains in frozen mode on stored features: leave out --mode, --int8, --resume and "
            "--no-cache-features"
        )
