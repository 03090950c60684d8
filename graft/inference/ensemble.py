"""Ensemble runs (``graft train --auto --ensemble K``): several float runs whose probabilities are averaged.

An ensemble run directory holds its members as complete runs under ``members/`` and a ``model.json`` of kind
``ensemble`` naming them. :class:`EnsembleClassifier` is a :class:`Classifier` like any other, so predict,
evaluate (with ``--tta``), serve and export take it. Members whose bodies are the same frozen pretrained weights
share one body pass (K heads on one feature vector); members with other preprocessing get their own crop of the
same decoded image, stacked along the channels of the classifier's input (3 per preprocessing).

Combination: the mean of the members' probabilities, returned as its logarithm, so that a softmax of the ensemble's
"logits" gives the averaged probabilities (as :func:`graft.inference.classifier.tta_logits` does for views).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core import checkpoint as ckpt
from graft.core.device import autocast, prepare_input
from graft.core.errors import RunError
from graft.core.preprocess import Preprocess, eval_transform
from graft.core.runmeta import ENSEMBLE, RunMeta
from graft.inference.classifier import Classifier, ImageInput
from graft.inference.float_classifier import body_and_head


def ensemble_meta(members: list[RunMeta], paths: list[str]) -> dict[str, Any]:
    """``model.json`` of an ensemble of the runs whose ``model.json`` contents are ``members``, at ``paths``
    (relative to the ensemble's run directory)."""
    first = members[0]
    if any(m.classes != first.classes for m in members):
        raise RunError("ensemble members must have the same classes in the same order")
    return {
        "format": first.format,
        "kind": ENSEMBLE,
        "arch": "ensemble(" + ",".join(m.arch for m in members) + ")",
        "mode": "freeze" if all(m.mode == "freeze" for m in members) else "mixed",
        "classes": list(first.classes),
        "preprocess": first.to_dict()["preprocess"],
        "head": None,
        "combine": "mean of the members' probabilities",
        "members": paths,
        "versions": first.versions,
    }


class EnsembleClassifier(Classifier):
    """The mean of the probabilities of several loaded float runs."""

    def __init__(self, meta: RunMeta, device: torch.device, run_dir: Path, members: list[Classifier]) -> None:
        super().__init__(meta, device, run_dir)
        self.members = members
        self.views = _distinct([m.preprocess.to_dict() for m in members])  # one input crop per preprocessing
        sizes = {Preprocess.from_dict(v).input_size for v in self.views}
        if len(sizes) > 1:
            raise RunError(f"{run_dir}: ensemble members take inputs of different sizes {sorted(sizes)}")
        self._transforms = [eval_transform(Preprocess.from_dict(v)) for v in self.views]
        self._draft = max(Preprocess.from_dict(v).resize_size for v in self.views)
        self._groups: list[tuple[int, nn.Module, list[nn.Module]]] | None = None

    def float_model(self) -> nn.Module | None:
        return None  # no single body and head (Grad-CAM says so; stored features are read per member)

    def prepare(self) -> EnsembleClassifier:
        self._built()
        return self

    def _built(self) -> list[tuple[int, nn.Module, list[nn.Module]]]:
        """(view, body runner, heads): members with the same body weights and preprocessing share a body."""
        if self._groups is None:
            groups: list[tuple[int, nn.Module, list[nn.Module]]] = []
            bodies: list[nn.Module] = []
            for m in self.members:
                model = m.float_model()
                view = self.views.index(m.preprocess.to_dict())
                same = next((i for i, b in enumerate(bodies) if groups[i][0] == view and _same(b, model.body)), None)
                if same is None:
                    runner = body_and_head(model, self.device)
                    groups.append((view, runner[0], [runner[1]]))
                    bodies.append(model.body)
                else:
                    groups[same][2].append(model.head.eval())
            self._groups = groups
        return self._groups

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Log of the mean probability over the members, of a batch ``(B, 3 * views, H, W)``."""
        outputs = []
        for view, body, heads in self._built():
            x = batch[:, 3 * view : 3 * view + 3]
            with autocast(self.device):
                features = body(prepare_input(x, self.device, body))
                outputs += [torch.log_softmax(head(features).float(), dim=1).cpu() for head in heads]
        return torch.logsumexp(torch.stack(outputs), dim=0) - math.log(len(outputs))

    def _tensor(self, image: ImageInput) -> torch.Tensor:
        from PIL import Image

        from graft.data.images import load_rgb

        pil = image.convert("RGB") if isinstance(image, Image.Image) else load_rgb(image, draft=self._draft)
        return torch.cat([t(pil) for t in self._transforms])

    def export_module(self) -> nn.Module:
        """One module computing :meth:`logits` in torch alone (BatchNorm folded), for ONNX/TorchScript export."""
        if len(self.views) > 1:
            raise RunError(
                f"{self.run_dir}: the ensemble's members preprocess images differently ({len(self.views)} crops of "
                "each image), which one exported input cannot carry; export each member run under members/ instead"
            )
        groups = []  # (view, body, heads): one body per distinct body, as in :meth:`logits`
        for view, _, heads in self._built():
            owners = [m for m in self.members if any(h is m.float_model().head for h in heads)]
            model = owners[0].float_model().to("cpu").float().eval()
            body = body_and_head(model, torch.device("cpu"), torch_only=True)[0]
            groups.append((view, body, [m.float_model().head.to("cpu").float().eval() for m in owners]))
        return EnsembleModule(groups).eval()


class EnsembleModule(nn.Module):
    """``(B, 3 * views, H, W)`` -> log of the mean of the members' probabilities; one body per group of members
    that share it."""

    def __init__(self, groups: list[tuple[int, nn.Module, list[nn.Module]]]) -> None:
        super().__init__()
        self.views = [view for view, _, _ in groups]
        self.bodies = nn.ModuleList([body for _, body, _ in groups])
        self.heads = nn.ModuleList([nn.ModuleList(heads) for _, _, heads in groups])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for view, body, heads in zip(self.views, self.bodies, self.heads, strict=True):
            features = body(x[:, 3 * view : 3 * view + 3])
            outs += [torch.log_softmax(head(features), dim=1) for head in heads]
        return torch.logsumexp(torch.stack(outs), dim=0) - math.log(len(outs))


def load_ensemble(
    run_dir: Path, meta: RunMeta, *, device: str, load_member: Callable[..., Classifier]
) -> EnsembleClassifier:
    """The ensemble at ``run_dir``; ``load_member(path, device=..., prepare=False)`` loads one member run (each
    checks its own weights' sha256)."""
    members = []
    for rel in meta.members or ():
        path = ckpt.run_file(run_dir, rel, what="member run").resolve()
        member = load_member(path, device=device, prepare=False)
        if member.float_model() is None or member.classes != list(meta.classes):
            raise RunError(f"{path}: not a float run with the ensemble's classes")
        members.append(member)
    if not members:
        raise RunError(f"{run_dir / 'model.json'} names no ensemble members")
    return EnsembleClassifier(meta, members[0].device, run_dir, members)


def _same(a: nn.Module, b: nn.Module) -> bool:
    """Whether two bodies have the same weights (frozen members of one pretrained backbone do)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def _distinct(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
