"""Grad-CAM: maps of the real trained run, the declared layer of every registered architecture, activation
layouts (NCHW, Swin's NHWC, MaxViT's ModuleList, DenseNet's in-place ReLU), and architectures without one."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from graft.core.heads import HeadSpec, build_head
from graft.insight.gradcam import GradCAMUnavailable, grad_cam, gradcam, target_layer
from graft.insight.plots import load_crops
from graft.models.backbones import get_backbone, list_backbones
from graft.models.model import GraftModel, make_body


@pytest.fixture(scope="module")
def clf(frozen_run):
    import graft

    return graft.load(frozen_run.run_dir, device="cpu")


@pytest.mark.slow
def test_gradcam_maps_of_the_trained_run(clf, hymenoptera) -> None:
    paths = [hymenoptera / "val/ants/10308379_1b6c72e180.jpg", next((hymenoptera / "val/bees").glob("*.jpg"))]
    crops = load_crops(paths, clf.preprocess)
    maps = gradcam(clf, crops)
    assert len(maps) == 2
    for m in maps:
        assert m.shape == (224, 224) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() == pytest.approx(1.0)
        assert m.std() > 0.05  # a map, not a constant
    # the map depends on the class asked about
    other = gradcam(clf, crops[:1], targets=[1])[0]
    first = gradcam(clf, crops[:1], targets=[0])[0]
    assert np.abs(first - other).mean() > 0.01
    # the model is left as it was: eval mode, parameters' requires_grad unchanged
    assert not clf.model.training
    assert all(p.requires_grad for p in clf.model.parameters())


@pytest.mark.slow
def test_every_declared_layer_exists() -> None:
    """Each declared gradcam_layer is a module of the body. Built on the meta device (no memory, no compute);
    builders that compute on tensors while building (RegNet) are checked on their smallest member, built for real."""
    names = [n for n in list_backbones() if get_backbone(n).gradcam_layer is not None]
    assert len(names) >= 70
    not_on_meta: dict[str, list[str]] = {}
    for name in names:
        spec = get_backbone(name)
        try:
            with torch.device("meta"):
                body = make_body(spec.build(), spec)
        except NotImplementedError:  # "Cannot copy out of meta tensor"
            not_on_meta.setdefault(spec.gradcam_layer, []).append(name)
            continue
        layer = target_layer(body, spec.gradcam_layer, name)
        assert isinstance(layer, torch.nn.Module) and not isinstance(layer, torch.nn.ModuleList), name
    assert len(not_on_meta) <= 1, not_on_meta
    for layer_name, group in not_on_meta.items():
        spec = get_backbone(min(group, key=lambda n: get_backbone(n).in_features))
        target_layer(make_body(spec.build(), spec), layer_name, spec.name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "densenet121", "swin_t", "maxvit_t"])
def test_layouts(name: str) -> None:
    """Random weights, one image at the smallest valid size: a map of the input's size for each layout."""
    torch.manual_seed(0)
    spec = get_backbone(name)
    model = GraftModel(make_body(spec.build(), spec), build_head(spec.in_features, 3, HeadSpec())).eval()
    size = max(spec.min_input_size, 64)
    layer = target_layer(model.body, spec.gradcam_layer, name)
    maps, targets = grad_cam(model, layer, torch.randn(1, 3, size, size))
    assert maps.shape == (1, size, size) and maps.min() >= 0 and maps.max() <= 1
    assert len(targets) == 1 and 0 <= targets[0] < 3


def test_architectures_without_a_spatial_layer() -> None:
    assert get_backbone("vit_b_16").gradcam_layer is None
    fake = SimpleNamespace(meta=SimpleNamespace(arch="vit_b_16"), model=SimpleNamespace(body=torch.nn.Identity()))
    with pytest.raises(GradCAMUnavailable, match="vit_b_16 has no spatial feature map"):
        gradcam(fake, [torch.zeros(3, 224, 224, dtype=torch.uint8)])
    with pytest.raises(GradCAMUnavailable, match="not a module"):
        target_layer(torch.nn.Sequential(torch.nn.Identity()), "features", "x")


@pytest.mark.slow
def test_evaluation_says_when_gradcam_is_unavailable(frozen_run, hymenoptera, tmp_path, monkeypatch) -> None:
    """A registry entry without a gradcam_layer: the figures are drawn without maps and say why."""
    import shutil

    from graft.insight.evaluation import evaluate
    from graft.models import backbones

    data = tmp_path / "data"
    for name in ("ants", "bees"):
        (data / name).mkdir(parents=True)
        for src in sorted((hymenoptera / "val" / name).glob("*.jpg"))[:2]:
            shutil.copy(src, data / name / src.name)
    spec = get_backbone("mobilenet_v2")
    monkeypatch.setitem(backbones._REGISTRY, "mobilenet_v2", dataclasses.replace(spec, gradcam_layer=None))
    result = evaluate(frozen_run.run_dir, data, out=tmp_path / "out", explain=True, grid=4, device="cpu")
    saved = json.loads((tmp_path / "out/evaluation.json").read_text())
    assert saved["explained"] == {"top_losses": False, "predictions": False}
    assert any("mobilenet_v2 has no spatial feature map" in n for n in saved["notes"])
    assert (tmp_path / "out/predictions.png").is_file() and result.n == 4
