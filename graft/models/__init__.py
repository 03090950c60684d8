"""Models: the backbone registry (:mod:`~graft.models.backbones`), pretrained weights files
(:mod:`~graft.models.weights`) and the network, body + head (:mod:`~graft.models.model`). The public names are
exported here and imported on first use (the registry is torch-free; the network needs torch)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "NO_PRETRAINED",
    "BackboneSpec",
    "GraftModel",
    "PoolFlatten",
    "PretrainedInfo",
    "WeightsSpec",
    "build_for_inference",
    "build_model",
    "choose_weights",
    "get_backbone",
    "list_backbones",
    "load_pretrained",
    "make_body",
    "register",
    "timm_pretrained_file",
]

#: public name -> the module that defines it, imported on first use
_LAZY = {
    "BackboneSpec": "graft.models.backbones",
    "WeightsSpec": "graft.models.backbones",
    "get_backbone": "graft.models.backbones",
    "list_backbones": "graft.models.backbones",
    "register": "graft.models.backbones",
    "timm_pretrained_file": "graft.models.backbones",
    "NO_PRETRAINED": "graft.models.model",
    "GraftModel": "graft.models.model",
    "PoolFlatten": "graft.models.model",
    "PretrainedInfo": "graft.models.model",
    "build_for_inference": "graft.models.model",
    "build_model": "graft.models.model",
    "choose_weights": "graft.models.model",
    "load_pretrained": "graft.models.model",
    "make_body": "graft.models.model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
