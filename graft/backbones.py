"""``graft.backbones``: the public path of :mod:`graft.models.backbones`."""

from graft.models.backbones import (
    BackboneSpec,
    WeightsSpec,
    get_backbone,
    list_backbones,
    register,
    timm_pretrained_file,
)

__all__ = [
    "BackboneSpec",
    "WeightsSpec",
    "get_backbone",
    "list_backbones",
    "register",
    "timm_pretrained_file",
]
