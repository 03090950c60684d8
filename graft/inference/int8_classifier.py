"""An int8 run's program loaded and run: :func:`load_program` (sha256 and :func:`check_archive` first, then
``torch.export.load``), :class:`Int8Program` (the graph and its ``torch.compile``\\ d form) and
:class:`Int8Classifier`, the :class:`graft.inference.Classifier` that :func:`graft.inference.load` returns for an
int8 run. Quantizing and saving programs is :mod:`graft.int8`.
"""

from __future__ import annotations

import functools
import io
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core import checkpoint as ckpt
from graft.core.errors import ConfigError, RunError
from graft.core.runmeta import RunMeta
from graft.inference.classifier import Classifier
from graft.inference.int8_archive import INT8_FORMAT, PROGRAM_FILE, QuantizationError, check_archive

X86_MACHINES = ("x86_64", "amd64", "i686", "x86")
ARM_MACHINES = ("aarch64", "arm64")


def backend_name(machine: str | None = None) -> str:
    """The int8 backend of this machine's CPU: ``"x86_inductor"`` on x86-64, ``"arm_inductor"`` on ARM."""
    machine = (machine or platform.machine()).lower()
    if machine in X86_MACHINES:
        return "x86_inductor"
    if machine in ARM_MACHINES:
        return "arm_inductor"
    raise QuantizationError(
        f"int8 quantization is supported on x86-64 and ARM CPUs; this machine is {machine!r}. "
        "Use the float run (graft predict works on it) or quantize on an x86-64/ARM machine."
    )


def register_int8_lowering() -> None:
    """Register inductor's int8 passes for this CPU (dequantize-conv-quantize -> one oneDNN int8 conv, weight
    prepacking). torchao registers them when its quantizer module is imported; a process that only loads a saved
    program (``graft predict``) never imports it, and without the passes the compiled program runs the decomposed
    reference ops: MobileNetV2 at 85 instead of 330-500 images/s on this machine's 2 cores."""
    import importlib

    importlib.import_module(f"torchao.quantization.pt2e.quantizer.{backend_name()}_quantizer")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one), at most
    ``torch.get_num_threads()`` so that a caller who lowered torch's thread count is obeyed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, torch.get_num_threads()))


def per_core_chunks(batch: torch.Tensor, cores: int) -> list[torch.Tensor]:
    """``batch`` split along its first dimension into at most ``cores`` chunks of nearly equal size (one per
    worker; a batch smaller than ``cores`` gives one image per chunk)."""
    size = -(-len(batch) // max(1, cores))
    return list(batch.split(max(1, size)))


@functools.cache
def _workers(cores: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(cores, thread_name_prefix="graft-int8")


class Int8Program(nn.Module):
    """A converted (int8) graph and its ``torch.compile``\\ d form; calling it runs the compiled one.

    Each call splits the batch into one chunk per usable core (:func:`usable_cores`, :func:`per_core_chunks`)
    and runs the chunks on a pool of threads, each with a single OpenMP thread and kernels compiled for one
    thread. One call with a team of OpenMP threads waits at every kernel's barrier for its slowest thread: with
    another process on one of two cores, the team's threads spin-waited against it and the program fell from ~410 to
    20-120 images/s, below graft's float path, while independent chunks lose only the busy core's share (measured in
    turns with one competing process: 25 images/s as a team, 164 as chunks, 62 for the float path). The logits are
    those of the one-call program (integer kernels; like it, they round slightly differently per batch size).

    Inference only: ``train()`` does nothing, deep copies share it, and torch.fx cannot trace it (graft's BatchNorm
    folding then leaves it as it is). Batch size 1 and larger batches are two compilations (``dynamic=True``
    specializes on 1), each done on its first call.
    """

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self._compiled = torch.compile(graph, dynamic=True)
        self._compiled_kinds: set[bool] = set()  # batch 1 (True) and larger batches (False) compiled so far

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            raise TypeError("int8 programs are compiled graphs; torch.fx does not trace them")
        cores = usable_cores()
        chunks = per_core_chunks(x, cores)
        done: dict[int, torch.Tensor] = {}
        for i, chunk in enumerate(chunks):
            # The first chunk of a new compilation (batch 1, or larger) alone: workers meeting an uncompiled
            # shape together would each compile it.
            if (len(chunk) == 1) not in self._compiled_kinds or len(chunks) == 1:
                done[i] = self._run_chunk(chunk)
                self._compiled_kinds.add(len(chunk) == 1)
        rest = [i for i in range(len(chunks)) if i not in done]
        if rest:
            done.update(zip(rest, _workers(cores).map(self._run_chunk, [chunks[i] for i in rest]), strict=True))
        return torch.cat([done[i] for i in range(len(chunks))])

    def _run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        # Freezing (weights as constants) is what lets inductor prepack the int8 weights for oneDNN; it is set
        # around the call because compilation happens there (torch.compile(options={"freezing": True}) fails in
        # torch 2.14: UnsupportedOperatorException onednn.qconv_prepack); config patches are thread-local, so on
        # the thread that runs (and compiles) the chunk. cpp.threads=1: inductor writes the thread count into its
        # kernels when it compiles them. One OpenMP thread for oneDNN's int8 convolutions too, restored so that
        # torch's default for threads started later stays what it was. Outside inference mode: the prepacking
        # fails on inference tensors.
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with (
                inductor_config.patch({"freezing": True, "cpp.threads": 1}),
                torch.inference_mode(False),
                torch.no_grad(),
            ):
                return self._compiled(x.to(memory_format=torch.channels_last, copy=True))
        finally:
            torch.set_num_threads(before)

    def train(self, mode: bool = True) -> Int8Program:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Int8Program:
        return self


def load_program(path: Path, *, sha256: str | None) -> nn.Module:
    """The saved int8 graph: the file's sha256 (from ``model.json``) and :func:`check_archive` first, then
    ``torch.export.load``. No pickle, no calibration. ``sha256=None`` only for a file this process just wrote."""
    import hashlib

    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  registers the quantized_decomposed ops

    register_int8_lowering()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the int8 run did not finish saving its model") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise RunError(
            f"{path} does not match the sha256 recorded in {path.parent / ckpt.META_FILE}: the file was changed or "
            "damaged. Quantize the float run again (graft quantize RUN)."
        )
    check_archive(data, source=str(path))
    try:
        return torch.export.load(io.BytesIO(data)).module()
    except Exception as e:
        raise RunError(
            f"{path} cannot be loaded by this torch ({torch.__version__}): {type(e).__name__}: {e}. torch.export "
            "files are tied to the torch version that wrote them; quantize the float run again."
        ) from None


def load_int8(run_dir: Path, meta: RunMeta, *, device: str = "auto") -> Int8Classifier:
    """The :class:`graft.inference.Classifier` of an int8 run (``graft.inference.loading`` calls this)."""
    info = meta.quantization or {}
    if info.get("format") != INT8_FORMAT or not meta.program_sha256:
        raise RunError(
            f"{run_dir / ckpt.META_FILE} does not describe an int8 run of this graft ({INT8_FORMAT}, with the "
            f"sha256 of {PROGRAM_FILE}); quantize the float run again (graft quantize RUN)"
        )
    if device not in ("auto", "cpu"):
        raise ConfigError(f"int8 runs run on the CPU; use --device cpu (or auto), not {device!r}")
    path = ckpt.run_file(run_dir, meta.program_file or PROGRAM_FILE, what="program file")
    graph = load_program(path, sha256=meta.program_sha256)
    return Int8Classifier(graph, meta, run_dir)


class Int8Classifier(Classifier):
    """A :class:`graft.inference.Classifier` over a compiled int8 program (CPU only; no Grad-CAM)."""

    def __init__(self, graph: nn.Module, meta: RunMeta, run_dir: Path, program: Int8Program | None = None) -> None:
        super().__init__(meta, torch.device("cpu"), run_dir)
        self.graph = graph
        self._inference = program or Int8Program(graph)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed batch ``(B, 3, H, W)`` through the compiled int8 program."""
        return self._inference(batch.cpu()).float()

    def float_model(self) -> None:
        """None: body and head are one compiled int8 program, with no float head for stored float features (they
        are not this program's features) and no float layers for Grad-CAM to differentiate."""
        return None
