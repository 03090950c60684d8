"""Frozen-backbone features: run the body once per image and keep the pooled vectors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from graft.data import ImageDataset, Sample
from graft.preprocess import Preprocess, eval_transform
from graft.runtime import inference_loader, prepare_input


@torch.inference_mode()
def extract_features(
    body: nn.Module,
    samples: Sequence[Sample],
    preprocess: Preprocess,
    *,
    device: torch.device,
    batch_size: int = 32,
    workers: int = 0,
    desc: str = "features",
) -> torch.Tensor:
    """``(len(samples), F)`` float32 features of ``body`` in eval mode (no augmentation), in sample order."""
    from graft.runtime import progress

    body.eval()
    loader = inference_loader(
        ImageDataset(samples, eval_transform(preprocess), draft=preprocess.resize_size),
        batch_size=batch_size,
        workers=workers,
    )
    chunks = []
    for images, _ in progress(loader, desc=desc):
        chunks.append(body(prepare_input(images, device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)
