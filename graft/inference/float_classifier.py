"""Float runs: the eager model of ``model.safetensors``, run through graft's fast inference path."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from graft.core.device import autocast, prepare_input
from graft.core.fast_inference import OnnxRuntimeModule, fast_inference, optimize_for_inference
from graft.core.runmeta import RunMeta
from graft.inference.classifier import Classifier


def body_and_head(
    model: nn.Module, device: torch.device, *, torch_only: bool = False, keep: bool = False
) -> nn.Sequential:
    """What a float model runs for inference everywhere (prediction, training's val phase, export): the body
    BatchNorm-folded through :func:`graft.core.fast_inference.fast_inference` (ONNX Runtime where it pays), or, with
    ``torch_only`` (a module to export), :func:`graft.core.fast_inference.optimize_for_inference`; the head in torch;
    eval mode. ``keep``: keep the body's export across processes (a run's model, not an epoch's weights)."""
    body = optimize_for_inference(model.body) if torch_only else fast_inference(model.body, device, keep=keep)
    return nn.Sequential(body, model.head.eval()).eval()


class FloatClassifier(Classifier):
    """A float run (``model.json`` + ``model.safetensors``)."""

    def __init__(
        self, model: nn.Module, meta: RunMeta, device: torch.device, run_dir: Path, *, prepare: bool = True
    ) -> None:
        super().__init__(meta, device, run_dir)
        self.model = model.eval()
        if prepare:
            self.prepare()

    def prepare(self) -> FloatClassifier:
        """Build the runner of the body now (:func:`graft.core.fast_inference.fast_inference`: BatchNorm folded by
        torch.fx).

        :func:`graft.load` does this unless told not to (a run's report reads the stored val features and needs
        only the head). It must happen before images are decoded on other threads: torch.fx's tracing patches
        ``nn.Module.__call__`` for the whole process, and would catch a transform running meanwhile."""
        body = self._inference[0]
        if isinstance(body, OnnxRuntimeModule):
            size = self.meta.preprocess.input_size
            body.ready((3, size, size))
        return self

    def float_model(self) -> nn.Module:
        return self.model

    @functools.cached_property
    def _inference(self) -> nn.Sequential:
        return body_and_head(self.model, self.device, keep=True)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed batch ``(B, 3, H, W)``."""
        with autocast(self.device):
            return self._inference(prepare_input(batch, self.device, self._inference[0])).float().cpu()
