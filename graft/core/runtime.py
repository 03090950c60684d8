"""Small helpers for devices, seeds, threads, loaders and progress bars, kept out of the training loop."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch

from graft.core.errors import ConfigError

T = TypeVar("T")


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
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def default_workers() -> int:
    """Decoding worker processes that do not fight torch's threads for the cores.

    On 2 cores, 2 workers beside 2 torch threads ran the feature pass slower than no workers at all.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 2 else min(8, cores // 2)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not spawn a full thread pool each
    seed = torch.initial_seed() % 2**32
    random.seed(seed)


def threaded_batches(dataset: Any, *, batch_size: int, threads: int = 1, prefetch: int = 2) -> Iterator[Any]:
    """Batches of ``dataset`` in order, decoded by background threads while the caller computes.

    Without worker processes (which oversubscribe small machines), decoding would otherwise alternate with the
    forward pass; PIL and torchvision release the GIL, so a thread overlaps the two.
    """
    import itertools
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from torch.utils.data import default_collate

    def load(start: int) -> Any:
        return default_collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        starts = iter(range(0, len(dataset), batch_size))
        pending = deque(pool.submit(load, s) for s in itertools.islice(starts, prefetch))
        while pending:
            batch = pending.popleft().result()
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            yield batch


def inference_loader(dataset: Any, *, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
    )


def train_loader(
    dataset: Any,
    *,
    batch_size: int,
    workers: int,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
) -> torch.utils.data.DataLoader:
    """Shuffled batches of ``dataset``; with per-sample ``weights``, ``len(dataset)`` samples drawn with
    replacement by them instead (``--balance sampler``: same epoch length)."""
    sampler = None
    if weights is not None:
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(dataset), replacement=True, generator=generator)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=workers > 0,
    )


def prepare_input(images: torch.Tensor, device: torch.device, runner: torch.nn.Module | None = None) -> torch.Tensor:
    """Move a batch to the device; image batches in channels_last (faster convolutions on CPU and GPU), except for
    an :class:`OnnxRuntimeModule` ``runner``, which takes the collated NCHW layout as it is (converting there and
    back cost ~0.3 s of a 2-core CPU per 250 images)."""
    images = images.to(device, non_blocking=True)
    if images.dim() != 4 or isinstance(runner, OnnxRuntimeModule):
        return images
    return images.contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device) -> Any:
    """Mixed precision where it pays and needs no loss scaling: bfloat16 on CUDA GPUs that support it.

    CPUs without AVX-512 BF16 (like this project's CI machine) run bfloat16 slower than float32, so CPU stays fp32.
    """
    import contextlib

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self._session: Any = None
        self._tried = False

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
        import io
        import warnings

        try:
            import onnxruntime as ort
        except ImportError:
            return None
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
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
                options = ort.SessionOptions()
                options.intra_op_num_threads = torch.get_num_threads()
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                # memory patterns are planned per input shape; batches of varying size (the last one of each
                # pass) re-plan them: off, ONNX Runtime ran the 397 hymenoptera images 0.1-0.3 s faster here
                options.enable_mem_pattern = False
                session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
                (got,) = session.run(None, {"input": example.numpy()})
                want = self.module(example).float()
            except Exception:  # an operator the exporter or runtime lacks: torch is still correct
                return None
        scale = max(1.0, float(want.abs().max()))
        if got.shape != tuple(want.shape) or float((torch.from_numpy(got) - want).abs().max()) > self.TOLERANCE * scale:
            return None
        return session


def fast_inference(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The quickest faithful runner of a frozen ``module`` for inference: :func:`optimize_for_inference`, then, on
    the CPU, :class:`OnnxRuntimeModule` when onnxruntime is installed and torch.fx could trace the module
    (``GRAFT_ENGINE=torch`` turns that off).

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
    runner = module.eval() if device.type == "cuda" else optimize_for_inference(module)
    # Only graphs torch.fx could trace go to ONNX: the exporter traces one input and would silently bake in
    # Python-level control flow that fx refuses (data-dependent branches, side effects).
    if device.type == "cpu" and engine != "torch" and isinstance(runner, torch.fx.GraphModule):
        runner = OnnxRuntimeModule(runner)
    _FAST_INFERENCE[module] = (stamp, runner)
    return runner


_FAST_INFERENCE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, torch.nn.Module]] = weakref.WeakKeyDictionary()


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on an interactive terminal or in a Jupyter notebook; silent otherwise (logs and CI stay clean)."""
    notebook = in_notebook()
    if not (notebook or sys.stderr.isatty()) or os.environ.get("GRAFT_NO_PROGRESS"):
        yield from iterable
        return
    from tqdm import tqdm

    if notebook:  # tqdm.auto's widget bar, when ipywidgets is installed; else the text bar, which notebooks show too
        with contextlib.suppress(ImportError):
            import ipywidgets  # noqa: F401
            from tqdm.auto import tqdm
    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython in a kernel app, as tqdm.auto decides it)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
