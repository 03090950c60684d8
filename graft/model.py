"""``graft.model``: the public path of :mod:`graft.models.model`."""

from graft.models.model import (
    NO_PRETRAINED,
    GraftModel,
    PoolFlatten,
    PretrainedInfo,
    build_for_inference,
    build_model,
    choose_weights,
    load_pretrained,
    make_body,
)

__all__ = [
    "NO_PRETRAINED",
    "GraftModel",
    "PoolFlatten",
    "PretrainedInfo",
    "build_for_inference",
    "build_model",
    "choose_weights",
    "load_pretrained",
    "make_body",
]
