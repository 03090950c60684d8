"""The runner of a frozen module for inference: BatchNorm folded by torch.fx, then ONNX Runtime on the CPU where
it is faithful (:func:`fast_inference`)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import weakref
from typing import Any

import torch


def optimize_for_inference(module: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy with BatchNorm folded into the convolutions before it (torch.fx).

    On this project's 2-core CPU it ran MobileNetV2 1.7x faster than eager channels_last. Models that torch.fx
    cannot trace are returned as they are (in eval mode). Features and predictions both go through this, so a
    run's val accuracy and ``graft predict`` on the val images agree exactly.
    """
    import copy

    from torch.fx.experimental.optimization import fuse

    module.eval()
    try:
        return fuse(copy.deepcopy(module), inplace=True)
    except Exception:  # untraceable control flow: eager is still correct
        return module


class OnnxRuntimeModule(torch.nn.Module):
    """``module`` run by ONNX Runtime on the CPU, exported at its first 4-D input (dynamic batch, height, width).

    On this project's 2-core CPU, ONNX Runtime ran MobileNetV2's body 2.4x faster than torch (BatchNorm folded,
    channels_last: 128 vs 53 images/s); the export costs ~0.6 s once. torch's TorchScript-based exporter is used
    because it is ~20x quicker than the torch.export one here (0.6 s vs 14 s), and its deprecation warning is
    silenced. A module that does not export, or whose outputs differ from torch's on that first batch, stays on
    torch, as does anything that is not an image batch (a head on stored features).
    """

    TOLERANCE = 1e-4  # relative to the largest output

    def __init__(self, module: torch.nn.Module, key: str | None = None) -> None:
        """``module``: a traced (fx) body, or, when ``key`` names kept exports (:mod:`graft.core.export_cache`),
        the module as given, traced only if torch must run it."""
        super().__init__()
        self._source = module
        self._key = key
        self._session: Any = None
        self._tried = False

    @property
    def module(self) -> torch.nn.Module:
        """The torch runner: the traced body (folded BatchNorm), traced at first need when built from a key."""
        if self._key is not None and not isinstance(self._source, torch.fx.GraphModule):
            self._source = optimize_for_inference(self._source)
        return self._source

    def ready(self, shape: tuple[int, ...]) -> OnnxRuntimeModule:
        """Trace the body now unless an export for inputs of ``shape`` (channels, height, width) is kept: call it
        before images are decoded on other threads (torch.fx's tracing patches ``nn.Module.__call__`` for the whole
        process, and would catch a transform running meanwhile)."""
        from graft.core import export_cache

        if self._key is not None and not self._tried and not export_cache.exists(self._key, shape):
            self.module  # noqa: B018
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._tried and x.dim() == 4:
            self._tried = True
            self._session = self._build(x)
        if self._session is None:
            return self.module(x)
        batch = x.detach().contiguous(memory_format=torch.contiguous_format)
        (out,) = self._session.run(None, {"input": batch.numpy()})
        return torch.from_numpy(out)

    def _build(self, x: torch.Tensor) -> Any:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None
        from graft.core import export_cache

        shape = tuple(x.shape[1:])
        kept = export_cache.read(self._key, shape) if self._key is not None else None
        if kept is not None:  # checked against torch when it was written; the same key gives the same export
            with contextlib.suppress(Exception):  # a damaged file: exported again below, and replaced
                return _session(kept)
        if not isinstance(self.module, torch.fx.GraphModule):  # untraceable: see fast_inference
            return None
        session, data = self._export_and_check(x)
        if session is not None and self._key is not None:
            export_cache.write(self._key, shape, data)
        return session

    def _export_and_check(self, x: torch.Tensor) -> tuple[Any, bytes]:
        import io
        import warnings

        # autocast off: a caller's bf16 training precision would be traced into the graph as casts (and ONNX
        # Runtime's CPU convolutions take no bf16); the export is the fp32 function that inference computes
        with (
            torch.inference_mode(False),
            torch.no_grad(),
            torch.autocast("cpu", enabled=False),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            example = x[:2].clone().contiguous()
            try:
                buffer = io.BytesIO()
                torch.onnx.export(
                    self.module,
                    (example,),
                    buffer,
                    dynamo=False,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}},
                )
                session = _session(buffer.getvalue())
                (got,) = session.run(None, {"input": example.numpy()})
                want = self.module(example).float()
            except Exception:  # an operator the exporter or runtime lacks: torch is still correct
                return None, b""
        scale = max(1.0, float(want.abs().max()))
        if got.shape != tuple(want.shape) or float((torch.from_numpy(got) - want).abs().max()) > self.TOLERANCE * scale:
            return None, b""
        return session, buffer.getvalue()


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # memory patterns are planned per input shape; batches of varying size (the last one of each pass) re-plan
    # them: off, ONNX Runtime ran the 397 hymenoptera images 0.1-0.3 s faster here
    options.enable_mem_pattern = False
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def fast_inference(module: torch.nn.Module, device: torch.device, *, keep: bool = False) -> torch.nn.Module:
    """The quickest faithful runner of a frozen ``module`` for inference: :func:`optimize_for_inference`, then, on
    the CPU, :class:`OnnxRuntimeModule` when onnxruntime is installed and torch.fx could trace the module
    (``GRAFT_ENGINE=torch`` turns that off). ``keep``: the export is kept across processes
    (:mod:`graft.core.export_cache`), for weights that will be run again (pretrained bodies, a run's model), not
    those of one epoch of fine-tuning.

    Feature extraction, the val phase on images and :class:`graft.inference.Classifier` all run bodies through this,
    so a run's val accuracy and ``graft predict`` agree exactly."""
    # The same weights give the same runner: the train and val passes of a frozen body share one export. A
    # tensor's version counter moves with every in-place update (an optimizer step), so trained weights miss.
    engine = os.environ.get("GRAFT_ENGINE", "auto")
    tensors = [*module.parameters(), *module.buffers()]
    versioned = not any(t.is_inference() for t in tensors)  # inference tensors keep no version: never reuse
    stamp = (device.type, engine, tuple((t.data_ptr(), t._version) for t in tensors)) if versioned else None
    hit = _FAST_INFERENCE.get(module)
    if hit is not None and stamp is not None and hit[0] == stamp:
        return hit[1]
    # On a GPU, folding BatchNorm saves little next to the copy and the trace it costs for every val pass of a
    # fine-tune: the module runs as it is, in eval mode (predict on a GPU does the same, so they still agree).
    if device.type == "cpu" and engine != "torch" and importlib.util.find_spec("onnxruntime") is not None:
        runner = _onnx_runner(module, keep=keep)
    else:
        runner = module.eval() if device.type == "cuda" else optimize_for_inference(module)
    _FAST_INFERENCE[module] = (stamp, runner)
    return runner


def _onnx_runner(module: torch.nn.Module, *, keep: bool) -> torch.nn.Module:
    """An :class:`OnnxRuntimeModule` of ``module``. With ``keep``, its export is kept across processes
    (:mod:`graft.core.export_cache`), and when one is kept already nothing is traced unless torch must run.
    Only graphs torch.fx could trace go to ONNX: the exporter traces one input and would silently bake in
    Python-level control flow that fx refuses (data-dependent branches, side effects); such a module stays on
    torch."""
    from graft.core import export_cache

    key = export_cache.module_key(module.eval()) if keep else None
    if key is not None and export_cache.has_any(key):
        return OnnxRuntimeModule(module, key)
    traced = optimize_for_inference(module)
    return OnnxRuntimeModule(traced, key) if isinstance(traced, torch.fx.GraphModule) else traced


_FAST_INFERENCE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, torch.nn.Module]] = weakref.WeakKeyDictionary()
