"""Grad-CAM (Selvaraju et al., 2017): which parts of an image a class score depends on.

The activations of the architecture's declared layer (``BackboneSpec.gradcam_layer``, the last spatial block of
the body) are weighted by the spatial mean of the gradient of the class score with respect to them, summed over
channels and rectified; the map is upsampled to the input and scaled to [0, 1].

It runs on the *eager* model (``Classifier.float_model()``, BatchNorm not folded) in eval mode. The layer's output is
replaced, through a forward hook, by a detached copy that requires grad, so only the layers after it are
differentiated and the model's parameters are never touched. Architectures without a spatial layer (ViT) have
``gradcam_layer = None``: :class:`GradCAMUnavailable` says so, and the figures print that instead of a map. So
do int8 runs, whose compiled program has no float layers to differentiate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.errors import GraftError


class GradCAMUnavailable(GraftError):
    """The architecture declares no layer for Grad-CAM, or its activations are not a spatial map."""


def target_layer(body: nn.Module, layer: str | None, arch: str = "this architecture") -> nn.Module:
    """The module at the dotted path ``layer`` in ``body`` (the last child of a ModuleList, which is never
    called itself)."""
    if layer is None:
        raise _no_spatial_layer(arch)
    try:
        module = body.get_submodule(layer)
    except AttributeError:
        raise GradCAMUnavailable(
            f"{arch}: the registry's gradcam_layer {layer!r} is not a module of the body"
        ) from None
    while isinstance(module, nn.ModuleList | nn.ModuleDict) and len(module):
        module = list(module.children())[-1]
    return module


def _no_spatial_layer(arch: str) -> GradCAMUnavailable:
    return GradCAMUnavailable(
        f"{arch} has no spatial feature map to explain (no gradcam_layer in the registry, e.g. a vision "
        "transformer); predictions are shown without Grad-CAM"
    )


def _as_nchw(act: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) view of a 4-D activation; channels-last blocks (Swin's (B, H, W, C)) are permuted.
    Inputs are square, so the two equal dimensions are the spatial ones."""
    if act.dim() != 4:
        raise GradCAMUnavailable(f"the Grad-CAM layer gives a {act.dim()}-D output, not a (B, C, H, W) feature map")
    _, d1, d2, d3 = act.shape
    if d1 == d2 and d2 != d3:
        return act.permute(0, 3, 1, 2)
    return act


def grad_cam(
    model: nn.Module, layer: nn.Module, batch: torch.Tensor, targets: Sequence[int] | None = None
) -> tuple[np.ndarray, list[int]]:
    """Grad-CAM maps of a normalized batch ``(B, 3, H, W)`` at ``layer`` of ``model``.

    Args:
        model: a classifier returning logits (eval mode is used; restored afterwards).
        layer: a module called during ``model``'s forward pass, whose output is a feature map.
        batch: normalized input images.
        targets: class index per image (default: the predicted class).

    Returns:
        ``(B, H, W)`` float32 maps in [0, 1] (all zero where no location raises the score) and the classes used.
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise GradCAMUnavailable(f"the Grad-CAM layer returns {type(output).__name__}, not a tensor")
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()  # what follows may work in place (DenseNet's relu): never on the leaf itself

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(batch)
            if not captured:
                raise GradCAMUnavailable("the Grad-CAM layer was not used by the model's forward pass")
            chosen = list(targets) if targets is not None else logits.argmax(1).tolist()
            score = logits.gather(1, torch.tensor(chosen, device=logits.device).view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, captured[-1])
    finally:
        handle.remove()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    act, grad = _as_nchw(captured[-1].detach()), _as_nchw(grad)
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act.float()).sum(dim=1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).clamp(0, 1).cpu().numpy().astype(np.float32), chosen


def gradcam(
    clf: Any, crops: Sequence[torch.Tensor], *, targets: Sequence[int] | None = None, batch_size: int = 16
) -> list[np.ndarray]:
    """Grad-CAM maps for a :class:`graft.inference.Classifier`.

    Args:
        clf: a loaded run (``graft.load``).
        crops: model inputs as uint8 tensors ``(3, S, S)`` (:func:`graft.core.preprocess.eval_crop` of each image).
        targets: class index per image (default: the predicted class).
        batch_size: images per forward/backward pass.

    Returns:
        One ``(S, S)`` float32 map in [0, 1] per image.

    Raises:
        GradCAMUnavailable: the architecture declares no Grad-CAM layer, or it is not a spatial map, or the run has
            no eager float model to differentiate (an int8 run).
    """
    from graft.core.preprocess import normalize
    from graft.models.backbones import get_backbone

    arch = clf.meta.arch
    declared = get_backbone(arch).gradcam_layer
    if declared is None:  # true of every run of the architecture: said before anything run-specific
        raise _no_spatial_layer(arch)
    model = clf.float_model()
    if model is None:
        raise GradCAMUnavailable(
            f"{clf.run_dir.name} runs a compiled int8 program, which Grad-CAM cannot differentiate; "
            "Grad-CAM works on float runs (such as the run a graft quantize run came from)"
        )
    layer = target_layer(model.body, declared, arch)
    norm = normalize(clf.preprocess)
    maps: list[np.ndarray] = []
    for start in range(0, len(crops), batch_size):
        batch = torch.stack([norm(c) for c in crops[start : start + batch_size]]).to(clf.device)
        # channels_last, as graft runs convolutions elsewhere: oneDNN's first NCHW pass built its kernels ~2x slower
        batch = batch.contiguous(memory_format=torch.channels_last)
        chunk = None if targets is None else targets[start : start + batch_size]
        cams, _ = grad_cam(model, layer, batch, chunk)
        maps.extend(cams)
    return maps
