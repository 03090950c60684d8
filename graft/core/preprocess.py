"""Preprocessing declared by the pretrained weights: the single place train/eval transforms come from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a backbone expects its input: what training and inference must agree on.

    Args:
        input_size: side of the square crop fed to the network.
        resize_size: shorter side the image is resized to before the centre crop (eval).
        mean, std: per-channel normalization of [0, 1] pixels.
        interpolation: "bilinear" or "bicubic".
    """

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def at_size(self, size: int) -> Preprocess:
        """The same preprocessing for ``size`` x ``size`` inputs: the eval resize keeps the weights' crop ratio
        (256/224 at 224 gives a 366 px resize for a 320 px crop), so a crop covers the same share of the image."""
        if size == self.input_size:
            return self
        return replace(self, input_size=size, resize_size=round(size * self.resize_size / self.input_size))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            input_size=int(d["input_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d["interpolation"]),
        )


def _v2() -> Any:
    from graft.core.deps import import_torchvision

    import_torchvision()  # first, so that torchvision comes in without torch._dynamo (see there)
    from torchvision.transforms import v2

    return v2


def _interp(name: str) -> Any:
    _v2()
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[name]


def pil_to_uint8(image: Any) -> Any:
    """PIL RGB image -> uint8 tensor (3, H, W) holding one copy of its pixels (a channels-last view).

    The values and layout of ``v2.ToImage()``, without wrapping each image in a ``tv_tensors.Image`` that every
    later transform unwraps and wraps again: ~1 ms less per image on a 2-core CPU, where the feature pass of a
    frozen run spends ~2 ms per image on preprocessing."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def eval_crop(p: Preprocess) -> Callable[[Any], Any]:
    """PIL RGB image -> uint8 tensor (3, input_size, input_size): resize, centre crop (the tutorial's val path)."""
    v2 = _v2()
    return v2.Compose(
        [
            pil_to_uint8,
            v2.Resize(p.resize_size, interpolation=_interp(p.interpolation), antialias=True),
            v2.CenterCrop(p.input_size),
        ]
    )


def normalize(p: Preprocess) -> Callable[[Any], Any]:
    """uint8 tensor (3, H, W), or a batch (B, 3, H, W) -> float tensor scaled to [0, 1] and normalized with the
    weights' mean and std. Element-wise, so a batch gets exactly the values of its images one by one."""
    import torch

    v2 = _v2()
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(p.mean), std=list(p.std))])


def eval_transform(p: Preprocess) -> Callable[[Any], Any]:
    """PIL RGB image -> normalized float tensor (3, H, W): :func:`eval_crop` then :func:`normalize`.

    Training's val phase and ``graft predict`` both go through these two steps, so they agree exactly.
    """
    v2 = _v2()
    return v2.Compose([eval_crop(p), normalize(p)])


def resize_shorter(size: int, interpolation: str = "bilinear") -> Callable[[Any], Any]:
    """PIL RGB image -> uint8 tensor whose shorter side is ``size`` (images are kept this size in memory)."""
    v2 = _v2()
    return v2.Compose([v2.ToImage(), v2.Resize(size, interpolation=_interp(interpolation), antialias=True)])


def train_crop(p: Preprocess, augment: str = "standard") -> Callable[[Any], Any]:
    """PIL RGB image (or uint8 tensor) -> augmented uint8 tensor (3, input_size, input_size): random resized crop
    and horizontal flip, then ``augment``'s policy (torchvision's TrivialAugmentWide, RandAugment or AutoAugment's
    ImageNet policy, on uint8 pixels); ``"none"``: resize and centre crop only, as for val."""
    v2 = _v2()
    if augment == "none":
        return v2.Compose([v2.ToImage(), v2.Resize(p.resize_size, interpolation=_interp(p.interpolation),
                                                   antialias=True), v2.CenterCrop(p.input_size)])  # fmt: skip
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(p.input_size, interpolation=_interp(p.interpolation), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    policies = {
        "trivialaugment": lambda: v2.TrivialAugmentWide(interpolation=_interp(p.interpolation)),
        "randaugment": lambda: v2.RandAugment(interpolation=_interp(p.interpolation)),
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=_interp(p.interpolation)),
    }
    if augment in policies:
        steps.append(policies[augment]())
    elif augment != "standard":
        raise ValueError(f"unknown augmentation policy {augment!r}")
    return v2.Compose(steps)


def train_transform(p: Preprocess, augment: str = "standard", random_erasing: float = 0.0) -> Callable[[Any], Any]:
    """PIL RGB image -> augmented normalized tensor: :func:`train_crop` then :func:`normalize`, then (with
    ``random_erasing`` > 0) torchvision's RandomErasing of the normalized image (erased to 0: the mean colour).
    The defaults are graft's standard augmentation, drawing the same random numbers as ever."""
    v2 = _v2()
    steps = [train_crop(p, augment), normalize(p)]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)


def denormalize(x: Any, p: Preprocess) -> Any:
    """Inverse of the normalization, for showing images: tensor (..., 3, H, W) -> values in [0, 1]."""
    import torch

    mean = torch.tensor(p.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(p.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
