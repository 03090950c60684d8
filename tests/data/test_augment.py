"""Batch augmentation (MixUp/CutMix around a loader) and the policies' place in the feature store's key."""

from __future__ import annotations

import torch

from graft.core.loaders import train_loader
from graft.core.preprocess import Preprocess, eval_crop, train_crop
from graft.data.augment import MixedBatches, batch_mix
from graft.features.store import store_key
from graft.training.balance import sample_weights


def test_mixed_batches_keep_the_loader_s_shape_and_sampler() -> None:
    images, labels = torch.rand(10, 3, 8, 8), torch.tensor([0] * 7 + [1] * 3)
    g = torch.Generator().manual_seed(0)
    loader = train_loader(torch.utils.data.TensorDataset(images, labels), batch_size=4, workers=0, generator=g,
                          weights=sample_weights(labels, 2))  # fmt: skip
    mixed = MixedBatches(loader, batch_mix(0.2, 1.0, 2))
    assert len(mixed) == len(loader) == 3
    assert mixed.sampler is loader.sampler  # what torchrun's totals and the sampler checks look at
    torch.manual_seed(0)
    for x, y in mixed:
        assert x.shape[1:] == (3, 8, 8) and y.dtype == torch.float32 and y.shape[1] == 2
        assert torch.allclose(y.sum(1), torch.ones(len(y)))
    assert batch_mix(0.0, 0.0, 2) is None  # off: the loader is used as it is


def test_policy_views_have_their_own_feature_rows() -> None:
    p = Preprocess()
    key = {"arch": "mobilenet_v2", "preprocess": p, "engine": "torch"}
    assert store_key(**key, view=1) == store_key(**key, view=1, augment="standard")  # old stores still found
    assert store_key(**key, view=1, augment="trivialaugment") != store_key(**key, view=1)
    assert store_key(**key, view=0, augment="trivialaugment") == store_key(**key, view=0)  # view 0: eval crop


def test_policy_none_is_the_eval_crop() -> None:
    p = Preprocess(input_size=32, resize_size=36)
    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    from torchvision.transforms import v2

    assert torch.equal(train_crop(p, "none")(img), eval_crop(p)(v2.functional.to_pil_image(img)))
