"""``graft show-batch``: training images as the training of the same options sees them, in a grid.

The augmentation options are those of ``graft train`` (``--augment``, ``--random-erasing``, ``--mixup``,
``--cutmix``): each image goes through the run's train transform, then the batch through MixUp/CutMix, and the
grid shows the result de-normalized, titled with its class or, for a mixed image, the mixed labels' weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft.core.config import ShowBatchConfig, augment_options, from_options, table_options
from graft.core.config.fields import takes_fields


@dataclass
class AugmentedBatch:
    """What show-batch draws: ``images`` (normalized, after the per-image transform), ``mixed`` (after MixUp/
    CutMix: the same tensor when neither is on), ``targets`` (``(B, classes)`` soft labels, or None), ``labels``
    (class indices), ``classes``, and the preprocessing to undo the normalization with."""

    images: torch.Tensor
    mixed: torch.Tensor
    targets: torch.Tensor | None
    labels: torch.Tensor
    classes: list[str]
    preprocess: Any

    def titles(self) -> list[str]:
        """Each image's class, or its two largest label weights ("bees 0.71 + ants 0.29") when mixed."""
        if self.targets is None:
            return [self.classes[int(i)] for i in self.labels]
        out = []
        for t in self.targets:
            w, i = t.topk(min(2, len(t)))
            parts = [f"{self.classes[int(k)]} {float(v):.2f}" for v, k in zip(w, i, strict=True) if v > 0.005]
            out.append(" + ".join(parts))
        return out


@takes_fields(ShowBatchConfig, "data")
def augmented_batch(data: str | Path, /, **options: Any) -> AugmentedBatch:
    """``n`` training images of ``data`` (picked with a seeded RNG), augmented as ``graft train`` with the same
    options would (the preprocessing of ``arch``'s weights). ``options``: the fields of
    :class:`graft.core.config.ShowBatchConfig` (``out`` is :func:`show_batch`'s)."""
    return augmented_batch_for(from_options(ShowBatchConfig, options, data=data))


def augmented_batch_for(cfg: ShowBatchConfig) -> AugmentedBatch:
    """:func:`augmented_batch` with a :class:`ShowBatchConfig` (checked when it was made)."""
    from graft.core.preprocess import train_transform
    from graft.data.augment import batch_mix
    from graft.data.folders import scan
    from graft.data.images import load_rgb
    from graft.models.backbones import get_backbone
    from graft.models.model import choose_weights

    spec = get_backbone(cfg.arch)
    weights = choose_weights(spec, "auto") if spec.weights else None
    preprocess = weights.preprocess if weights else spec.preprocess
    dataset = scan(cfg.data, val_split=cfg.val_split, seed=cfg.seed, draft=preprocess.resize_size, **table_options(cfg))
    picked = random.Random(cfg.seed).sample(dataset.train, min(cfg.n, len(dataset.train)))
    transform = train_transform(preprocess, cfg.augment, cfg.random_erasing)
    torch.manual_seed(cfg.seed)
    images = torch.stack([transform(load_rgb(s.path, draft=preprocess.resize_size)) for s in picked])
    labels = torch.tensor([s.label for s in picked])
    mix = batch_mix(cfg.mixup, cfg.cutmix, len(dataset.classes))
    mixed, targets = mix(images, labels) if mix else (images, None)
    return AugmentedBatch(images, mixed, targets, labels, list(dataset.classes), preprocess)


@takes_fields(ShowBatchConfig, "data")
def show_batch(data: str | Path, /, **options: Any) -> Any:
    """Write a grid of ``n`` augmented training images of ``data`` (see :func:`augmented_batch`; ``options``: the
    fields of :class:`graft.core.config.ShowBatchConfig`) to ``out`` (None: return the figure); bad files are
    skipped as in training."""
    return run_show_batch(from_options(ShowBatchConfig, options, data=data))


def run_show_batch(cfg: ShowBatchConfig) -> Any:
    """:func:`show_batch` with a :class:`ShowBatchConfig` (checked when it was made)."""
    from graft.core.preprocess import denormalize
    from graft.insight.plots import plot_batch

    batch = augmented_batch_for(cfg)
    p = batch.preprocess
    levers = {k: v for k, v in augment_options(cfg).items() if v}
    how = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in levers.items() if v != "standard")
    title = (
        f"{len(batch.labels)} augmented training images of {cfg.data.name} "
        f"({cfg.arch} preprocessing: {p.input_size}px crops)" + (f"\n{how}" if how else "")
    )
    images = [denormalize(x, p) for x in batch.mixed]
    return plot_batch(images, batch.titles(), cfg.out, title=title)
