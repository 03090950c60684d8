"""The levers several commands share: class balance and best-epoch selection (``graft train``), the augmentation of
image training (``graft train`` and ``graft show-batch`` take the same options, so show-batch draws what training
sees), and the options that choose settings for the user: the learning-rate range test (``graft lr-find``,
``--lr auto``), the cross-validated search (``graft train --auto``, ``--ensemble K``) and test-time augmentation
(``--tta`` of evaluate, predict and serve). Types, defaults, help texts, parsing and checks: no heavy imports."""

from __future__ import annotations

import argparse
from typing import Any, Literal

from graft.core.config.fields import AT_LEAST_0, Rule, Shared
from graft.core.errors import ConfigError

Balance = Literal["auto", "none", "weights", "sampler"]
SelectBy = Literal["auto", "acc", "balanced_acc", "macro_f1"]
#: the augmentation policies of image stages; "standard" is random resized crop + horizontal flip
Augment = Literal["standard", "trivialaugment", "randaugment", "autoaugment", "none"]

LEVER_HELP = {
    "balance": "class imbalance: weights (inverse-frequency cross-entropy weights from the train split), sampler "
    "(class-balanced sampling with replacement, same epoch length), none (the data as it is), or auto: weights when "
    "the largest train class has >= 3x the images of the smallest, else none",
    "select_by": "what the best epoch maximizes on val; auto: balanced_acc when the largest train class has >= 3x "
    "the images of the smallest, else acc",
    "augment": "augmentation of training images: standard (random resized crop + flip), trivialaugment, randaugment "
    "or autoaugment (torchvision's policies, after the crop and flip), none (resize + centre crop); also applies to "
    "the --feature-views views",
    "mixup": "image stages: MixUp with this Beta(alpha, alpha) (0: off; 0.2 is usual); soft-target loss, train acc "
    "against the dominant label",
    "cutmix": "image stages: CutMix with this Beta(alpha, alpha) (0: off; 1.0 is usual); with --mixup too, one of the "
    "two per batch",
    "random_erasing": "image stages: probability of erasing a random rectangle of each normalized training image "
    "(0: off)",
}
_OFF = Rule(AT_LEAST_0.must, AT_LEAST_0.ok, "; 0 turns it off")
#: each lever's default (graft's standard augmentation; balance and selection chosen from the data) and check
LEVERS = {
    "balance": Shared("auto", LEVER_HELP["balance"]),
    "select_by": Shared("auto", LEVER_HELP["select_by"]),
    "augment": Shared("standard", LEVER_HELP["augment"]),
    "mixup": Shared(0.0, LEVER_HELP["mixup"], _OFF),
    "cutmix": Shared(0.0, LEVER_HELP["cutmix"], _OFF),
    "random_erasing": Shared(0.0, LEVER_HELP["random_erasing"], Rule("in [0, 1]", lambda v: 0 <= v <= 1)),
}
#: the augmentation options (alike on graft train and graft show-batch)
AUGMENT_OPTIONS = ("augment", "mixup", "cutmix", "random_erasing")


def augment_options(cfg: Any) -> dict[str, Any]:
    """A config's augmentation options by name."""
    return {name: getattr(cfg, name) for name in AUGMENT_OPTIONS}


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


#: ``--tta`` / ``--no-tta``; None follows what the run's model.json records
TTA = Shared(None, TUNING_HELP["tta"])


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
