"""graft.core.preprocess: graft's faster steps give torchvision's values exactly (features, val accuracy and
``graft predict`` all depend on it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from graft.core.preprocess import Preprocess, eval_crop, eval_transform, normalize, train_crop, train_transform
from graft.data import load_rgb

P = Preprocess(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")

# Bit-exact on any CPU: both sides run the same torch kernels, in this process, on the same uint8 pixels in the same
# memory layout, and normalizing is element-wise (no sum whose order a batch or a vector width could change).
pytestmark = pytest.mark.numerics


def reference_eval(p: Preprocess) -> v2.Compose:
    """The torchvision pipeline of the tutorial's val images, built the plain way."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(p.resize_size, antialias=True),
            v2.CenterCrop(p.input_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(p.mean), std=list(p.std)),
        ]
    )


def images(root: Path, n: int) -> list:
    paths = sorted(root.rglob("*.jpg"))
    step = max(1, len(paths) // n)
    return [load_rgb(p, draft=P.resize_size) for p in paths[::step][:n]]


def test_eval_transform_is_torchvisions_to_the_bit(hymenoptera: Path) -> None:
    ref, ours = reference_eval(P), eval_transform(P)
    sample = images(hymenoptera, 60)
    assert len({im.size for im in sample}) > 5  # landscape, portrait and odd sizes
    for im in sample:
        assert torch.equal(ours(im), ref(im))


def test_a_batch_is_normalized_as_its_images_one_by_one(hymenoptera: Path) -> None:
    crops = [eval_crop(P)(im) for im in images(hymenoptera, 16)]
    assert all(c.dtype == torch.uint8 and c.shape == (3, 224, 224) for c in crops)
    batch = normalize(P)(torch.stack(crops))
    assert torch.equal(batch, torch.stack([normalize(P)(c) for c in crops]))
    assert torch.equal(batch[3], eval_transform(P)(images(hymenoptera, 16)[3]))


def test_train_transform_is_torchvisions_to_the_bit(hymenoptera: Path) -> None:
    reference = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(P.input_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(P.mean), std=list(P.std)),
        ]
    )
    for k, im in enumerate(images(hymenoptera, 8)):
        torch.manual_seed(k)
        want = reference(im)
        torch.manual_seed(k)
        assert torch.equal(train_transform(P)(im), want)
        torch.manual_seed(k)
        assert torch.equal(normalize(P)(train_crop(P)(im)), want)  # the feature pass's split of the same steps
