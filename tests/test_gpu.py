"""The GPU fast path's batches (graft.data.device). Kernels are device-agnostic, so the CPU checks the arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from graft.core.preprocess import Preprocess
from graft.data.device import DeviceBatches, crop_boxes, fits_on_device

PRE = Preprocess(input_size=8, resize_size=10, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))


def test_crop_boxes_follow_random_resized_crop() -> None:
    hw = torch.tensor([[280.0, 420.0], [280.0, 280.0], [500.0, 280.0]]).repeat(2000, 1)
    boxes = crop_boxes(hw, generator=torch.Generator().manual_seed(0))
    x1, y1, x2, y2 = boxes.unbind(1)
    h, w = hw.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= w).all() and (y2 <= h).all()
    assert (x2 > x1).all() and (y2 > y1).all()
    area = (x2 - x1) * (y2 - y1) / (h * w)
    ratio = (x2 - x1) / (y2 - y1)
    assert area.min() >= 0.079 and area.max() <= 1.0
    # torchvision's rule: the ratio is log-uniform in [3/4, 4/3] (rounding to whole pixels widens it a little)
    assert ratio.min() > 0.7 and ratio.max() < 1.4
    assert abs(torch.log(ratio).mean().item()) < 0.02
    # the same distribution as torchvision's own sampler (draws that do not fit are retried, so it is not uniform)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    theirs = []
    for hh, ww in hw.tolist():
        _, _, ch, cw = RandomResizedCrop.get_params(torch.empty(1, int(hh), int(ww)), [0.08, 1.0], [3 / 4, 4 / 3])
        theirs.append(ch * cw / (hh * ww))
    assert abs(area.mean().item() - sum(theirs) / len(theirs)) < 0.02
    again = crop_boxes(hw, generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)  # seeded: the same crops every run


def test_crop_boxes_fall_back_to_a_centre_crop_of_the_allowed_ratio() -> None:
    # A 1x100 strip: no draw fits, so the fallback cuts it to the widest allowed ratio, centred.
    boxes = crop_boxes(torch.tensor([[1.0, 100.0]]), generator=torch.Generator().manual_seed(0))
    x1, y1, x2, y2 = boxes[0].tolist()
    assert (y1, y2) == (0, 1) and x2 - x1 == 1 and x1 == math.floor((100 - 1) / 2)


@pytest.mark.numerics
def test_device_batches_normalize_shuffle_and_keep_labels() -> None:
    colours = [10, 60, 110, 160, 210]
    images = [torch.full((3, 12 + i, 16), c, dtype=torch.uint8) for i, c in enumerate(colours)]
    batches = DeviceBatches(
        images,
        list(range(5)),
        preprocess=PRE,
        batch_size=2,
        device=torch.device("cpu"),
        augment=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert len(batches) == 3
    seen = []
    for x, y in batches:
        assert x.shape[1:] == (3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last)
        for img, label in zip(x, y.tolist(), strict=True):
            # a uniform image stays uniform under any crop and flip: its value tells which image it was
            expected = (colours[label] / 255 - torch.tensor(PRE.mean)) / torch.tensor(PRE.std)
            assert torch.allclose(img.mean((1, 2)), expected, atol=1e-5)
            assert torch.allclose(img, expected.view(3, 1, 1).expand_as(img), atol=1e-5)
        seen += y.tolist()
    assert sorted(seen) == list(range(5)) and seen != list(range(5))  # every image once, shuffled


def test_device_batches_augment_real_content() -> None:
    """A left-to-right ramp: crops change it, flips reverse it, and the same seed gives the same batch."""
    ramp = torch.arange(40, dtype=torch.uint8).repeat(3, 30, 1) * 6

    def first(seed: int) -> torch.Tensor:
        b = DeviceBatches(
            [ramp] * 16,
            [0] * 16,
            preprocess=PRE,
            batch_size=16,
            device=torch.device("cpu"),
            augment=True,
            generator=torch.Generator().manual_seed(seed),
        )
        return next(iter(b))[0]

    x = first(3)
    slope = (x[:, 0, :, -1] - x[:, 0, :, 0]).mean(1)
    assert (slope > 0).any() and (slope < 0).any()  # some flipped, some not
    assert len({round(abs(s), 3) for s in slope.tolist()}) > 4  # crops of different widths
    assert torch.equal(x, first(3)) and not torch.equal(x, first(4))


@pytest.mark.numerics
def test_val_batches_are_the_images_in_order() -> None:
    images = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(3)]
    batches = DeviceBatches(images, [2, 0, 1], preprocess=PRE, batch_size=2, device=torch.device("cpu"), augment=False)
    x = torch.cat([b for b, _ in batches])
    want = (torch.stack(images).float() / 255 - torch.tensor(PRE.mean).view(1, 3, 1, 1)) / torch.tensor(PRE.std).view(
        1, 3, 1, 1
    )
    assert torch.allclose(x, want, atol=1e-5)
    assert torch.cat([y for _, y in batches]).tolist() == [2, 0, 1]


def test_only_a_cuda_device_holds_the_images() -> None:
    assert not fits_on_device(1, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_cuda_batches_match_the_cpu_arithmetic() -> None:
    images = [torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8) for _ in range(4)]
    make = lambda device: DeviceBatches(  # noqa: E731
        images,
        [0, 1, 2, 3],
        preprocess=PRE,
        batch_size=4,
        device=device,
        augment=True,
        generator=torch.Generator().manual_seed(0),
    )
    (cpu, _), (gpu, _) = next(iter(make(torch.device("cpu")))), next(iter(make(torch.device("cuda"))))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)
