"""The exported formats: ONNX and TorchScript bytes of a run's inference network, their runners, the JSON sidecar,
and the verification of an exported file against graft's PyTorch model on real images (:mod:`graft.deploy.export`
says what an export holds and why int8 runs are refused)."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from graft.core import atomic, rundir
from graft.core import checkpoint as ckpt
from graft.core.errors import GraftError, RunError
from graft.core.runmeta import RunMeta
from graft.core.version import __version__

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMAT = "graft-export/1"
#: Default file name per format, written into the run directory.
DEFAULT_NAMES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(GraftError):
    """A run cannot be exported, or the exported file does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class Verification:
    """How the exported file compared with graft's PyTorch model on real images."""

    images: int
    skipped: int
    max_abs_diff: float
    top1_agree: int
    #: top-1 disagreements where PyTorch's two best logits are within twice the tolerance: a tie that float noise
    #: within the tolerance may break either way on another CPU, not a wrong export.
    near_ties: int
    tolerance: float
    batch_sizes: list[int]
    source: str

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agree + self.near_ties == self.images

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        return (
            f"verified on {self.images} images ({self.source}): max |logit difference| {self.max_abs_diff:.2e} "
            f"(limit {self.tolerance:.0e}), top-1 agrees on {self.top1_agree}/{self.images}"
            + (f" ({self.near_ties} near-ties within the tolerance)" if self.near_ties else "")
            + "; "
            f"batch sizes {', '.join(map(str, sorted(set(self.batch_sizes))))}"
        )


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote: the model file, its JSON sidecar, and the verification figures."""

    path: Path
    sidecar: Path
    format: str
    verification: Verification
    info: dict[str, Any]
    #: ``export.json`` of an int8 ONNX export (:mod:`graft.deploy.onnx_int8`), else None.
    figures: dict[str, Any] | None = None


def reason(e: BaseException) -> str:
    """An exception as one line for an ``error:`` message: its type and the first line of its text (converters
    raise pages of traceback-like text)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of an exported file: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


#: How each kind of int8 run (``quantization.method`` in model.json) is made, and the float run to train instead.
_INT8_MAKERS = {
    "ptq": ("graft quantize", "graft train without --int8"),
    "freeze-int8": ("graft train --int8", "graft train without --int8"),
    "qat": ("graft train --mode qat", "graft train --mode finetune"),
}


def check_exportable(run_dir: Path, format: str) -> None:
    """Refuse an int8 run (one ``error:`` line saying what to export instead)."""
    from graft.inference.loading import read_meta

    meta = read_meta(run_dir)
    if meta is not None and meta.is_int8:
        raise ExportError(_int8_refusal(run_dir, meta, format))


def _int8_refusal(run_dir: Path, meta: RunMeta, format: str) -> str:
    """Why an int8 run is not exported, and what to export instead (one line)."""
    info = meta.quantization or {}
    made, instead = _INT8_MAKERS.get(str(info.get("method")), ("int8 quantization", "graft train without --int8"))
    name = {"onnx": "ONNX", "torchscript": "TorchScript"}.get(format, format)
    why = (
        f"{run_dir} is an int8 run ({made}), which graft does not export: no {name} file of its program can be "
        "verified to reproduce it (other int8 kernels round differently from graft's compiled program). "
    )
    source = info.get("source_run")
    if source and (Path(source) / ckpt.META_FILE).is_file():
        return why + f"Export the float run it was quantized from: graft export {source} --format {format}"
    if source:
        return why + f"The float run it was quantized from, {source}, is not there any more: export a float run."
    return why + f"It has no float run: train one ({instead}) and export that with graft export RUN --format {format}"


def inference_module(clf: Any) -> Any:
    """The network ``graft predict`` runs, as one float32 CPU module: BatchNorm-folded body, then the head."""
    import torch

    from graft.inference.float_classifier import body_and_head

    if hasattr(clf, "export_module"):  # an ensemble: its members in one module (graft.inference.ensemble)
        return clf.export_module()
    model = clf.float_model().to("cpu").float().eval()
    return body_and_head(model, torch.device("cpu"), torch_only=True)


def describe(clf: Any, format: str, path: Path) -> dict[str, Any]:
    """The sidecar's content (before the file's hash and the verification are known)."""
    import torch

    meta, p = clf.meta, clf.preprocess
    return {
        "format": EXPORT_FORMAT,
        "export_format": format,
        "file": path.name,
        "arch": meta.arch,
        "classes": list(clf.classes),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, p.input_size, p.input_size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(clf.classes)], "dtype": "float32", "is": "logits"},
        "preprocess": p.to_dict(),
        "preprocess_steps": [
            "decode the image as 8-bit RGB (EXIF orientation applied, transparency over white)",
            f"resize so the shorter side is {p.resize_size} pixels ({p.interpolation}, antialiased)",
            f"centre crop {p.input_size}x{p.input_size}",
            "scale to [0, 1] (divide by 255)",
            f"normalize per channel: (x - mean) / std with mean {list(p.mean)} and std {list(p.std)}",
            "lay out as float32 NCHW",
        ],
        "postprocess": "softmax over the class axis gives probabilities",
        **_multilabel_info(clf),
        "quantized": False,
        "source": {
            "run": clf.run_dir.name,
            "weights_sha256": meta.weights_sha256,
            "metrics": atomic.read_json_or(clf.run_dir / "metrics.json"),
        },
        "versions": {"graft": __version__, "torch": torch.__version__},
    }


def _multilabel_info(clf: Any) -> dict[str, Any]:
    """A multi-label run's sidecar keys: its task, the per-class thresholds, the sigmoid postprocessing."""
    if not getattr(clf, "multilabel", False):
        return {"task": "single"}
    return {
        "postprocess": "sigmoid of each logit gives its class's probability; the image has every class whose "
        "probability reaches that class's threshold (thresholds)",
        "task": "multilabel",
        "thresholds": dict(zip(clf.classes, clf.thresholds, strict=True)),
    }


# ----------------------------------------------------------------------------------------------------------------
# writers and runners


def onnx_bytes(module: Any, size: int, opset: int | None, info: dict[str, Any]) -> tuple[bytes, int]:
    """Serialized ONNX model (one file, weights inside) with a dynamic batch axis, and its opset."""
    import torch

    example = torch.randn(2, 3, size, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as e:
        raise ExportError(
            f"the ONNX exporter failed for {info['arch']}: {reason(e)} -- try --format torchscript, or another --opset"
        ) from None
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "graft", json.dumps(info)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset or 0)
    return proto.SerializeToString(), int(opset_used)


def onnx_runner(data: bytes) -> Callable[[Any], Any]:
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load the exported model: {e}") from None

    def run(batch: Any) -> Any:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch.numpy(), dtype=np.float32)})
        return logits

    return run


def torchscript_bytes(module: Any, size: int, info: dict[str, Any]) -> bytes:
    import torch

    example = torch.randn(2, 3, size, size)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, (example,))
            buf = io.BytesIO()
            torch.jit.save(traced, buf, _extra_files={"graft.json": json.dumps(info)})
    except Exception as e:
        raise ExportError(f"TorchScript tracing failed for {info['arch']}: {reason(e)} -- try --format onnx") from None
    return buf.getvalue()


def torchscript_runner(data: bytes) -> Callable[[Any], Any]:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(batch: Any) -> Any:
        with torch.no_grad():
            return module(batch).numpy()

    return run


# ----------------------------------------------------------------------------------------------------------------
# verification


def verify(
    clf: Any,
    runner: Callable[[Any], Any],
    paths: Sequence[Path],
    *,
    tolerance: float = 1e-4,
    batch_size: int = 32,
    source: str = "images",
) -> Verification:
    """Compare ``runner`` (batch tensor -> logits array) with the classifier's PyTorch logits on ``paths``.

    The first image also runs alone (batch size 1), the rest in batches of ``batch_size``, so a model whose batch
    axis is not really dynamic fails here. Unreadable files are skipped and counted."""
    import numpy as np

    max_diff, agree, ties, count, skipped, sizes = 0.0, 0, 0, 0, 0, []
    for decoded in clf.batches(paths, batch_size=batch_size):
        skipped += len(decoded.unreadable)
        batch = decoded.images
        if batch is None:
            continue
        groups = [batch[:1], batch[1:]] if count == 0 and len(batch) > 1 else [batch]
        for group in groups:
            expected = clf.logits(group).numpy()
            got = np.asarray(runner(group.contiguous()))
            if got.shape != expected.shape:
                raise ExportError(f"the exported model returned shape {got.shape} for a batch of {expected.shape}")
            max_diff = max(max_diff, float(np.abs(got - expected).max()))
            same = got.argmax(1) == expected.argmax(1)
            top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else np.zeros((len(expected), 2))
            agree += int(same.sum())
            ties += int((~same & (top2[:, 1] - top2[:, 0] <= 2 * tolerance)).sum())
            count += len(group)
            sizes.append(len(group))
    if count == 0:
        raise ExportError(
            f"none of the {len(paths)} verification images could be read; pass --images with a folder of images"
        )
    return Verification(count, skipped, max_diff, agree, ties, tolerance, sizes, source)


def verification_paths(
    run_dir: Path, images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None, limit: int
) -> tuple[list[Path], str]:
    """The images to verify with (``limit`` of them, evenly spread; 0: all) and where they come from."""
    from graft.inference.paths import expand_paths

    if images is not None:
        given = [images] if isinstance(images, str | os.PathLike) else list(images)
        paths = expand_paths(given)
        source = ", ".join(str(p) for p in given)
    else:
        paths, source = _val_images(run_dir)
    if not paths:
        raise ExportError(f"no images to verify the export with in {source}; pass --images with a folder of images")
    if limit and len(paths) > limit:
        paths = [paths[i * len(paths) // limit] for i in range(limit)]
    return paths, source


def _val_images(run_dir: Path) -> tuple[list[Path], str]:
    fix = "pass --images with a folder of images like the ones the model will see"
    try:
        split = rundir.run_split(run_dir, "val", fix=fix, check_files=False)
    except RunError as e:
        raise ExportError(str(e)) from None
    present = [p for p in split.paths if p.is_file()]
    if not present:
        raise ExportError(
            f"the run's val images ({len(split.paths)} under {split.root}) are not on this machine; {fix}"
        )
    return present, f"the run's val images under {split.root}"
