"""Augmentations of whole training batches: MixUp and CutMix (``--mixup``, ``--cutmix``; torchvision.transforms.v2).

A batch of images with integer labels becomes a batch of mixed images with soft targets ``(B, classes)``: MixUp
blends every image with the batch rolled by one (weight ``lam ~ Beta(alpha, alpha)``), CutMix pastes a box of the
rolled batch (its area ``1 - lam``). With both, each batch gets one of the two at random (timm's default switch).
The loss takes the soft targets as they are; training accuracy counts the dominant label of each target.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def batch_mix(mixup: float, cutmix: float, n_classes: int) -> Any:
    """The v2 transform mixing ``(images, labels)`` batches, or None when both alphas are 0."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from graft.core.deps import import_torchvision

    import_torchvision()
    from torchvision.transforms import v2

    mixes = []
    if mixup > 0:
        mixes.append(v2.MixUp(alpha=mixup, num_classes=n_classes))
    if cutmix > 0:
        mixes.append(v2.CutMix(alpha=cutmix, num_classes=n_classes))
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


class MixedBatches:
    """``loader``'s batches passed through ``mix`` (:func:`batch_mix`). Everything else (``len``, ``sampler``,
    ``dataset``, ``batch_size``: what distributed totals and resume look at) is the loader's."""

    def __init__(self, loader: Any, mix: Any) -> None:
        self.loader, self.mix = loader, mix

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            # v2.MixUp/CutMix draw lam and the box from the global RNG (seeded by the run; rank-offset under DDP)
            yield self.mix(images, labels)
