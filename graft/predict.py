"""Load a run and classify images: ``graft.load(run_dir).predict(images, top_k=5)``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft import checkpoint as ckpt
from graft.errors import GraftError, ImageError, RunError
from graft.heads import HeadSpec
from graft.preprocess import Preprocess, eval_transform
from graft.runtime import autocast, optimize_for_inference, pick_device, prepare_input

ImageInput = str | os.PathLike[str] | Any  # a path or a PIL image


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability}


@dataclass(frozen=True)
class PathResult:
    """The predictions for one file, or why it could not be read."""

    path: str
    predictions: list[Prediction] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [p.to_dict() for p in self.predictions or []]}


class Classifier:
    """A trained run, ready to predict. Build it with :func:`load`."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: torch.device, run_dir: Path) -> None:
        self.model = model.eval()
        self._inference = torch.nn.Sequential(optimize_for_inference(model.body), model.head).eval()
        self.meta = meta
        self.device = device
        self.run_dir = run_dir
        self.classes: list[str] = list(meta["classes"])
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        self._transform = eval_transform(self.preprocess)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed batch ``(B, 3, H, W)``."""
        with autocast(self.device):
            return self._inference(prepare_input(batch, self.device)).float().cpu()

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5, batch_size: int = 32
    ) -> list[list[Prediction]] | list[Prediction]:
        """Top-k predictions. One image (path or PIL image) -> a list of :class:`Prediction`; a list of
        images -> a list of such lists. An unreadable file raises :class:`graft.errors.ImageError`."""
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        out: list[list[Prediction]] = []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([self._tensor(x) for x in items[start : start + batch_size]])
            out.extend(self._top_k(self.logits(batch), top_k))
        return out[0] if single else out

    def predict_paths(self, paths: Iterable[Path], *, top_k: int = 5, batch_size: int = 32) -> Iterator[PathResult]:
        """Stream over files in order; a bad file yields a result with ``error`` instead of stopping."""
        pending: list[tuple[Path, torch.Tensor]] = []

        def flush() -> Iterator[PathResult]:
            if pending:
                preds = self._top_k(self.logits(torch.stack([t for _, t in pending])), top_k)
                yield from (PathResult(str(p), predictions=pr) for (p, _), pr in zip(pending, preds, strict=True))
                pending.clear()

        for path in paths:
            try:
                pending.append((path, self._tensor(path)))
            except ImageError as e:
                yield from flush()
                yield PathResult(str(path), error=e.reason)
                continue
            if len(pending) == batch_size:
                yield from flush()
        yield from flush()

    def _tensor(self, image: ImageInput) -> torch.Tensor:
        from PIL import Image

        from graft.data import load_rgb

        if isinstance(image, Image.Image):
            return self._transform(image.convert("RGB"))
        return self._transform(load_rgb(image, draft=self.preprocess.resize_size))

    def _top_k(self, logits: torch.Tensor, k: int) -> list[list[Prediction]]:
        probs = logits.softmax(dim=1)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [Prediction(self.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)]
            for vs, ix in zip(values, indices, strict=True)
        ]


def load(run_dir: str | os.PathLike[str], *, device: str = "auto") -> Classifier:
    """Rebuild a trained model from its run directory (``model.json`` + ``model.safetensors``; no pickle)."""
    from graft.backbones import get_backbone
    from graft.model import build_for_inference

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist; pass a folder written by graft train")
    meta = ckpt.read_json(run_dir / ckpt.META_FILE)
    if meta.get("format") != ckpt.FORMAT:
        raise RunError(f"{run_dir / ckpt.META_FILE} has format {meta.get('format')!r}; this graft reads {ckpt.FORMAT}")
    spec = get_backbone(meta["arch"])
    arch_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.get("arch_kwargs", {}).items()}
    model = build_for_inference(spec, len(meta["classes"]), HeadSpec.from_dict(meta["head"]), arch_kwargs)
    state = ckpt.load_weights(run_dir / meta.get("weights_file", ckpt.MODEL_FILE), sha256=meta.get("weights_sha256"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(f"{run_dir / ckpt.MODEL_FILE} does not fit the model described in model.json: {e}") from None
    dev = pick_device(device)
    return Classifier(model.to(dev), meta, dev, run_dir)


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders walked recursively (sorted, hidden entries left out)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        elif p.exists() or p.is_symlink():
            out.append(p)
        else:
            raise GraftError(f"{p} does not exist; pass image files or folders of images")
    return out


def read_category_names(path: Path) -> dict[str, str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GraftError(f"cannot read --category-names {path}: {e}; it must be a JSON object") from None
    if not isinstance(names, dict):
        raise GraftError(f"--category-names {path} must hold a JSON object mapping class names to display names")
    return {str(k): str(v) for k, v in names.items()}
