"""graft show-batch with the augmentation options: each policy changes what is drawn (same seed), MixUp and CutMix
images are convex mixes / pasted boxes of two images with soft labels of the right weights, the CLI takes them."""

from __future__ import annotations

import pytest
import torch

from graft.commands.cli import main
from graft.core.preprocess import train_transform
from graft.data.images import load_rgb
from graft.insight.showbatch import augmented_batch

N = 6


@pytest.fixture(scope="module")
def standard(hymenoptera):
    return augmented_batch(hymenoptera, n=N, seed=0)


def test_standard_is_training_s_transform(standard, hymenoptera) -> None:
    """The default draws what training's standard transform draws (the same seeded steps, image by image)."""
    import random

    from graft.data.folders import scan

    dataset = scan(hymenoptera, draft=standard.preprocess.resize_size)
    picked = random.Random(0).sample(dataset.train, N)
    transform = train_transform(standard.preprocess)
    torch.manual_seed(0)
    want = torch.stack([transform(load_rgb(s.path, draft=standard.preprocess.resize_size)) for s in picked])
    assert torch.equal(standard.images, want)  # identical by construction: same files, seed and steps
    assert standard.targets is None and standard.mixed is standard.images
    assert standard.titles() == [dataset.classes[s.label] for s in picked]


@pytest.mark.parametrize(
    "options", [{"augment": "trivialaugment"}, {"augment": "randaugment"}, {"augment": "autoaugment"}]
)
def test_each_policy_changes_the_pixels(standard, hymenoptera, options) -> None:
    batch = augmented_batch(hymenoptera, n=N, seed=0, **options)
    assert torch.equal(batch.labels, standard.labels)  # the same images...
    changed = [not torch.equal(a, b) for a, b in zip(batch.images, standard.images, strict=True)]
    assert sum(changed) >= N // 2  # ...drawn otherwise (a policy may pick identity for an image)


def test_random_erasing_erases_a_rectangle_to_the_mean(standard, hymenoptera) -> None:
    batch = augmented_batch(hymenoptera, n=N, seed=0, random_erasing=1.0)
    for img in batch.images:
        zero = (img == 0).all(0)  # erased to 0 after normalizing (the mean colour); no photo pixel is exactly 0
        assert zero.any()
        rows, cols = zero.any(1).nonzero().squeeze(1), zero.any(0).nonzero().squeeze(1)
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()  # one filled rectangle
    assert not (standard.images == 0).all(1).any()


def _soft_checks(batch) -> torch.Tensor:
    """The targets are distributions mixing each image's label with its neighbour's (the batch rolled by one);
    returns each image's own label's weight."""
    t, y = batch.targets, batch.labels
    assert t.shape == (N, 2) and torch.allclose(t.sum(1), torch.ones(N))
    own = t[torch.arange(N), y]
    other = t[torch.arange(N), y.roll(1)]
    same = y == y.roll(1)
    assert torch.allclose(own[same], torch.ones(int(same.sum())))
    assert torch.allclose(own[~same] + other[~same], torch.ones(int((~same).sum())))
    return own


def test_mixup_is_a_convex_mix_of_two_images(hymenoptera) -> None:
    batch = augmented_batch(hymenoptera, n=N, seed=0, mixup=0.4)
    own = _soft_checks(batch)
    y = batch.labels
    assert (y != y.roll(1)).any(), "the seed must pick both classes"
    lam = float(own[y != y.roll(1)][0])  # one weight per batch
    assert 0 < lam < 1
    want = lam * batch.images + (1 - lam) * batch.images.roll(1, 0)
    assert torch.allclose(batch.mixed, want, atol=1e-5)
    assert batch.titles()[int((y != y.roll(1)).nonzero()[0])].count("+") == 1  # "ants 0.71 + bees 0.29"


def test_cutmix_pastes_a_box_of_the_neighbour(hymenoptera) -> None:
    batch = augmented_batch(hymenoptera, n=N, seed=3, cutmix=1.0)
    own = _soft_checks(batch)
    pasted = (batch.mixed != batch.images).any(1)  # (N, H, W): where the neighbour's pixels are
    box = pasted.any(0)  # one box for the whole batch
    rows, cols = box.any(1).nonzero().squeeze(1), box.any(0).nonzero().squeeze(1)
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    r0, c0 = int(rows.min()), int(cols.min())
    inside = torch.zeros_like(box)
    inside[r0 : r0 + h, c0 : c0 + w] = True
    neighbour = batch.images.roll(1, 0)
    assert torch.equal(batch.mixed[:, :, inside], neighbour[:, :, inside])
    assert torch.equal(batch.mixed[:, :, ~inside], batch.images[:, :, ~inside])
    area = h * w / box.numel()
    y = batch.labels
    differ = y != y.roll(1)
    assert differ.any()
    assert torch.allclose(own[differ], torch.full((int(differ.sum()),), 1 - area), atol=1e-6)


def test_show_batch_cli_takes_the_levers(hymenoptera, tmp_path, capsys) -> None:
    out = tmp_path / "mixed.png"
    args = ["show-batch", str(hymenoptera), "--out", str(out), "--n", "4", "--augment", "trivialaugment"]
    assert main([*args, "--mixup", "0.2", "--cutmix", "1.0", "--random-erasing", "0.25"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["show-batch", str(hymenoptera), "--mixup", "-1"]) == 1
    assert "error: --mixup must be >= 0" in capsys.readouterr().err
