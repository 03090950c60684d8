"""The registry contract, checked for every registered architecture with the same code (no special cases)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from graft.core.errors import ArchitectureError
from graft.core.heads import HeadSpec, build_head
from graft.models.backbones import get_backbone, list_backbones, register
from graft.models.model import GraftModel, make_body

TIMM_SAMPLES = [
    "timm/resnet18",
    "timm/mobilenetv3_small_100",
    "timm/vit_tiny_patch16_224",
    "timm/convnext_atto",
]
ALL = list_backbones() + TIMM_SAMPLES
NUM_CLASSES = 3


def test_every_torchvision_classification_builder_is_registered() -> None:
    expected = set(torchvision.models.list_models(module=torchvision.models))
    assert expected <= set(list_backbones())
    assert len(list_backbones()) >= 70


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(get_backbone("resnet18"))


def test_unknown_architecture_suggests_close_names() -> None:
    with pytest.raises(ArchitectureError, match="resnet18"):
        get_backbone("resnet181")


@pytest.mark.parametrize("name", ALL)
def test_metadata_schema(name: str) -> None:
    spec = get_backbone(name)
    p = spec.preprocess
    assert len(p.mean) == 3 and len(p.std) == 3 and all(s > 0 for s in p.std)
    assert p.interpolation in {"bilinear", "bicubic"}
    assert 1 <= spec.min_input_size <= p.input_size <= p.resize_size
    assert spec.head_input in {"vector", "map"}
    for w in spec.weights:
        assert w.filename and w.tag
        assert w.preprocess.input_size >= w.min_input_size


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_head_contract(name: str) -> None:
    """Random weights; the declared head is replaced (plain and MLP) for 3 classes; a forward pass at the smallest
    valid input gives (B, 3); freezing leaves only the head trainable and the body in eval mode."""
    torch.manual_seed(0)
    spec = get_backbone(name)
    net = spec.build()
    old_head = net.get_submodule(spec.head_path)
    head_params = {id(p) for p in old_head.parameters()}
    body = make_body(net, spec)  # raises if the declared head path or width is wrong
    assert not any(id(p) in head_params for p in body.parameters()), "the old classifier is still in the body"
    size = spec.min_input_size
    x = torch.randn(2, 3, size, size)
    body.eval()
    with torch.inference_mode():
        features = body(x)
    assert features.shape == (2, spec.in_features)
    for head_spec in (HeadSpec(), HeadSpec(hidden=(16, 8), dropout=0.2)):
        model = GraftModel(body, build_head(spec.in_features, NUM_CLASSES, head_spec)).freeze()
        model.train()
        assert not model.body.training and model.head.training
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {f"head.{n}" for n, _ in model.head.named_parameters()}
        with torch.inference_mode():
            out = model.head(features)
        assert out.shape == (2, NUM_CLASSES)
        assert sum(isinstance(m, nn.Linear) for m in model.head.modules()) == len(head_spec.hidden) + 1
    model.eval()
    with torch.inference_mode():
        assert model(x).shape == (2, NUM_CLASSES)
