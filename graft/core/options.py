"""The accuracy levers that several command configs share: class balance and best-epoch selection (``graft
train``), and the augmentation of image training (``graft train`` and ``graft show-batch`` take the same options,
so show-batch draws what training sees). Help texts and checks only: no heavy imports."""

from __future__ import annotations

from typing import Any, Literal

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
#: the augmentation options and their defaults (graft's standard augmentation)
AUGMENT_DEFAULTS: dict[str, Any] = {"augment": "standard", "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0}


def check_augment(cfg: Any) -> None:
    """An ``error:`` line for augmentation values out of range."""
    for name in ("mixup", "cutmix"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name} must be >= 0 (0 turns it off; got {getattr(cfg, name)})")
    if not 0 <= cfg.random_erasing <= 1:
        raise ConfigError(f"--random-erasing must be in [0, 1] (got {cfg.random_erasing})")


def augment_options(cfg: Any) -> dict[str, Any]:
    """A config's augmentation options by name."""
    return {name: getattr(cfg, name) for name in AUGMENT_DEFAULTS}
