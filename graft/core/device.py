"""The device a process computes on and how: the device choice, seeds, CPU threads, cuDNN tuning, channels_last
batches and mixed precision (which precision a run trains in: :func:`resolve_precision`)."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from graft.core.cpu import BF16_FEATURES, bf16_features
from graft.core.errors import ConfigError
from graft.core.fast_inference import OnnxRuntimeModule


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu. An explicit device that is not present is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return _cuda()
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but MPS is not available; use --device auto or cpu")
    return _cuda() if name == "cuda" else torch.device(name)


def _cuda() -> torch.device:
    # TF32 for the fp32 matrix work that autocast leaves (bf16 covers the rest).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda")


def release_freed_memory() -> None:
    """Give memory that the process has freed back to the system (glibc ``malloc_trim``; elsewhere nothing).

    Feature extraction frees a ~19 MB input batch per step from one thread while ONNX Runtime's threads allocate:
    glibc kept the freed blocks, and the process grew by ~0.8 MB per image (10.5 GB of RSS over 16k images) though
    its live data stayed under 1.3 GB. Trimming every few batches keeps it flat (1.34 GB at 16k images)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # musl has no malloc_trim
    except OSError:
        return None


_LIBC = _libc()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread: a head on stored features does matrix products of a few hundred KFLOPs,
    where waking a thread pool costs more than the work. On this project's 2-core CPU, an epoch of a linear head on
    244 feature rows took 6-10 ms on one thread and 400-560 ms on two while another process used the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tune_convolutions(device: torch.device, *, steps: int) -> None:
    """Let cuDNN time its convolution algorithms for each new input shape and keep the fastest, when training runs
    long enough to repay it: timing cost ~3 s on a ResNet-18 fine-tune of hymenoptera (25 epochs of 0.15 s, 200
    steps) and won nothing back; over thousands of steps the faster kernels win."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = steps >= 2000


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for data shuffling."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def prepare_input(images: torch.Tensor, device: torch.device, runner: torch.nn.Module | None = None) -> torch.Tensor:
    """Move a batch to the device; image batches in channels_last (faster convolutions on CPU and GPU), except for
    an :class:`OnnxRuntimeModule` ``runner``, which takes the collated NCHW layout as it is (converting there and
    back cost ~0.3 s of a 2-core CPU per 250 images)."""
    images = images.to(device, non_blocking=True)
    if images.dim() != 4 or isinstance(runner, OnnxRuntimeModule):
        return images
    return images.contiguous(memory_format=torch.channels_last)


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """The precision a run trains in (``fp32`` or ``bf16``), why, and the CPU's bf16 instructions that decided it
    (recorded in the run's config.json as ``resolved_precision``)."""

    name: str
    reason: str
    cpu_bf16: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.name, "cpu_bf16": list(self.cpu_bf16), "reason": self.reason}


def resolve_precision(asked: str, device: torch.device, flags: set[str] | None = None) -> Precision:
    """``--precision``: ``auto`` is bf16 where the hardware runs it natively (a CPU with AVX512-BF16 or AMX-BF16, a
    CUDA GPU that supports it) and fp32 elsewhere; ``bf16`` asked for where it would be emulated is an error.
    ``flags``: the CPU's feature flags (default: this CPU's)."""
    if asked not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)} (got {asked!r})")
    if asked == "fp32":
        return Precision("fp32", "asked for with --precision fp32")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "CUDA GPU with bf16" + (", asked for" if asked == "bf16" else ""))
        if asked == "bf16":
            raise ConfigError("--precision bf16 was asked for but this GPU does not support bf16; use fp32 or auto")
        return Precision("fp32", "this CUDA GPU has no bf16")
    if device.type != "cpu":
        if asked == "bf16":
            raise ConfigError(f"--precision bf16 is for CPUs and CUDA GPUs, not {device.type}; use fp32 or auto")
        return Precision("fp32", f"{device.type}: fp32")
    found = tuple(bf16_features(flags))
    if found:
        return Precision("bf16", f"CPU with {', '.join(found)}" + (", asked for" if asked == "bf16" else ""), found)
    if asked == "bf16":
        raise ConfigError(
            f"--precision bf16 was asked for but this CPU has no bf16 instructions ({' or '.join(BF16_FEATURES)}): "
            "torch would emulate bf16, slower than fp32; use --precision fp32 or auto"
        )
    return Precision("fp32", f"CPU without {' or '.join(BF16_FEATURES)}")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype :func:`autocast` computes in (None: fp32). ``precision`` is a resolved one (``fp32``/``bf16``,
    :func:`resolve_precision`) or ``auto``, inference's: bf16 on CUDA GPUs that support it, fp32 elsewhere."""
    if precision == "fp32":
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and precision == "bf16":
        return torch.bfloat16
    return None


def autocast(device: torch.device, precision: str = "auto") -> Any:
    """Mixed precision where it pays and needs no loss scaling (bf16 has fp32's range): on CUDA GPUs that support
    bf16 unless ``precision`` is ``fp32``; on the CPU when ``precision`` is ``bf16``, which training resolves on CPUs
    with native bf16 (:func:`resolve_precision`). Inference (``auto``) stays fp32 on the CPU."""
    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
