"""GraftModel = pretrained body (its ImageNet classifier removed) + a new head; and how it is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core.errors import ConfigError, RunError, WeightsError
from graft.core.heads import HeadSpec, build_head
from graft.core.preprocess import Preprocess
from graft.core.runmeta import ARCH_KWARGS
from graft.models.backbones import BackboneSpec, WeightsSpec, timm_pretrained_file


class GraftModel(nn.Module):
    """``head(body(x))``. ``body`` returns pooled features ``(B, in_features)``.

    When ``frozen``, the body's parameters do not train and ``train()`` keeps the body in eval mode, so
    BatchNorm running statistics and dropout of the pretrained network stay as they were (the tutorial's
    "fixed feature extractor" lets them drift).
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def freeze(self) -> GraftModel:
        self.frozen = True
        self.body.requires_grad_(False)
        self.body.eval()
        return self

    def unfreeze(self) -> GraftModel:
        self.frozen = False
        self.body.requires_grad_(True)
        self.body.train(self.training)
        return self

    def train(self, mode: bool = True) -> GraftModel:
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self


class PoolFlatten(nn.Sequential):
    """Global average pool + flatten: turns a feature map into the vector graft's head expects."""

    def __init__(self) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def make_body(net: nn.Module, spec: BackboneSpec) -> nn.Module:
    """Remove the ImageNet classifier at the declared ``head_path`` (checked: it must have the declared width)."""
    if spec.strip_head is not None:
        spec.strip_head(net)
        return net
    old = net.get_submodule(spec.head_path)
    width = getattr(old, "in_features", None) or getattr(old, "in_channels", None)
    if spec.head_input == "map":
        convs = [m for m in old.modules() if isinstance(m, nn.Conv2d)]
        width = convs[0].in_channels if convs else None
    if width != spec.in_features:
        raise RuntimeError(
            f"registry error: {spec.name}.{spec.head_path} is {old!r}, expected width {spec.in_features}"
        )
    parent_path, _, leaf = spec.head_path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    setattr(parent, leaf, PoolFlatten() if spec.head_input == "map" else nn.Identity())
    return net


@dataclass(frozen=True)
class PretrainedInfo:
    """What ``model.json`` records about the starting weights."""

    tag: str | None
    file: str | None
    source: str
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "file": self.file, "source": self.source, "sha256": self.sha256}


NO_PRETRAINED = PretrainedInfo(tag=None, file=None, source="random init", sha256=None)


def choose_weights(spec: BackboneSpec, pretrained: str) -> WeightsSpec | None:
    """``none`` -> None; ``auto`` -> the first weights whose file is on this machine, else the default
    (which is then downloaded if possible); a tag -> that one; a path -> the default weights' preprocessing."""
    if pretrained == "none":
        return None
    if pretrained == "auto":
        if not spec.weights:
            raise WeightsError(f"{spec.name} has no pretrained weights; use --pretrained none")
        if spec.source == "timm":
            return spec.weights[0]
        return next((w for w in spec.weights if w.is_available()), spec.weights[0])
    if _looks_like_path(pretrained):
        return spec.default_weights
    return spec.get_weights(pretrained)


def run_preprocess(spec: BackboneSpec, weights: WeightsSpec | None, image_size: int | None = None) -> Preprocess:
    """The preprocessing a run trains and predicts with: that of ``weights`` (None: the default weights'), at
    ``image_size`` x ``image_size`` pixels when given (:meth:`Preprocess.at_size`).

    Raises:
        ConfigError: the architecture takes only its own size (ViT, MaxViT), or ``image_size`` is below its minimum.
    """
    base = weights.preprocess if weights else spec.preprocess
    if image_size is None or image_size == base.input_size:
        return base
    declared = weights or spec.default_weights
    if declared is not None and declared.fixed_input_size:
        raise ConfigError(
            f"{spec.name} takes {base.input_size}x{base.input_size} inputs only (its position embeddings or windows "
            f"are built for that size): leave out --image-size, or pick an architecture that takes any size, "
            "such as mobilenet_v2, resnet50 or convnext_tiny"
        )
    smallest = declared.min_input_size if declared is not None else spec.default_min_input_size
    if image_size < smallest:
        raise ConfigError(f"--image-size {image_size} is below {spec.name}'s smallest input ({smallest} pixels)")
    return base.at_size(image_size)


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".pth", ".pt", ".safetensors", ".bin")) or Path(value).exists()


def load_pretrained(spec: BackboneSpec, pretrained: str) -> tuple[nn.Module, WeightsSpec | None, PretrainedInfo]:
    """The original ImageNet network with the requested starting weights loaded (strictly, but for the head)."""
    from graft.models import weights as wmod

    w = choose_weights(spec, pretrained)
    net = spec.build(w)
    if w is None:
        return net, None, NO_PRETRAINED
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist; pass an existing .pth/.safetensors file")
        info = PretrainedInfo(tag=None, file=str(path), source="user file", sha256=wmod.file_sha256(path))
    elif spec.source == "timm":
        path = _timm_weights_path(spec, w)
        info = PretrainedInfo(tag=w.tag, file=str(path), source="hugging face cache", sha256=wmod.file_sha256(path))
    else:
        what = f"{spec.name} ({w.tag})"
        resolved = wmod.resolve(w.filename, url=w.url, sha256_prefix=w.sha256_prefix, what=what)
        if resolved is None:  # pragma: no cover - resolve raises instead
            raise WeightsError(f"weights for {what} not found")
        path = resolved.path
        info = PretrainedInfo(tag=w.tag, file=str(path), source=resolved.source, sha256=resolved.sha256)
    state = wmod.load_state_dict(path)
    if spec.adapt_state_dict is not None:
        state = spec.adapt_state_dict(state, net)
    _load_checked(net, state, spec, path)
    return net, w, info


def _timm_weights_path(spec: BackboneSpec, w: WeightsSpec) -> Path:
    path = timm_pretrained_file(spec, w)
    if path is not None:
        return path
    from graft.models import weights as wmod

    hub_id = w.filename.removeprefix("hf-hub:")
    if wmod.network_allows("https://huggingface.co"):
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(hub_id, "model.safetensors"))
    raise WeightsError(
        f"Pretrained weights for {spec.name} are not on this machine: the Hugging Face file {hub_id}/model.safetensors "
        "is not in the local cache and cannot be downloaded (no network). Download it on a connected machine "
        f"(huggingface-cli download {hub_id}) and copy the cache folder here, or use --pretrained none."
    )


def _load_checked(net: nn.Module, state: dict[str, Any], spec: BackboneSpec, path: Path) -> None:
    head_prefix = spec.head_path + "."
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefix)]
    unexpected = [
        k for k in result.unexpected_keys if not k.startswith(head_prefix) and not k.startswith(spec.ignore_keys)
    ]
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit {spec.name}: {len(missing)} missing keys (e.g. {missing[:3]}) and "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). Is it a file for another architecture?"
        )


def build_model(
    spec: BackboneSpec, num_classes: int, *, head: HeadSpec = HeadSpec(), pretrained: str = "auto"
) -> tuple[GraftModel, WeightsSpec | None, PretrainedInfo]:
    """Backbone with its starting weights, ImageNet classifier replaced by a new head for ``num_classes``."""
    net, w, info = load_pretrained(spec, pretrained)
    model = GraftModel(make_body(net, spec), build_head(spec.in_features, num_classes, head))
    return model, w, info


def build_for_inference(
    spec: BackboneSpec, num_classes: int, head: HeadSpec, arch_kwargs: dict[str, Any]
) -> GraftModel:
    """The same module structure as a trained run, with random weights (the run's state dict is loaded next).

    Only the builder arguments the registry records reach the builder: ``weights``, ``pretrained`` or
    ``checkpoint_path`` would make torchvision or timm open (and unpickle) a file."""
    foreign = sorted(set(arch_kwargs) - set(ARCH_KWARGS))
    if foreign:
        raise RunError(
            f"model builder argument {foreign[0]!r} is not one graft records (known: {', '.join(ARCH_KWARGS)}); "
            "restore model.json from a backup or train the run again"
        )
    net = spec.builder(**arch_kwargs)
    return GraftModel(make_body(net, spec), build_head(spec.in_features, num_classes, head))
