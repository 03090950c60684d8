"""Training and prediction across processes and machines with ``torchrun`` (DDP): ``graft train --nproc N``.

Every process runs the same ``graft`` command; torchrun tells each one its place through environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` or a c10d rendezvous). Without them
(or with ``WORLD_SIZE=1``) nothing here does anything, and a run is exactly the single-process one.

What is split across the processes (ranks):

- images in an image stage: each rank trains on its share of every epoch's permutation (:class:`ShardSampler`,
  drawn from the run's seeded generator, so every rank draws the same permutation and the shares are disjoint),
  gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, and ``--batch-size`` stays the
  global batch (each rank takes ``batch_size // world_size``), so the same options mean the same optimisation;
- the val phase: each rank evaluates its share; (loss sum, correct, seen) are summed over the ranks
  (:func:`epoch_totals`), so the val accuracy is that of the whole val set and every rank takes the same
  best-model and early-stopping decisions;
- frozen-body features: each rank computes its contiguous share of the missing rows, the rows are gathered to
  every rank (:func:`sharded`), rank 0 alone appends them to the feature store, and a barrier follows;
- ``graft predict --out``: each rank classifies every ``world_size``-th file into its own part file; rank 0 merges
  the parts in input order (:func:`predict_to_csv`).

Only rank 0 writes the run directory (the others only read it), and only rank 0 logs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from graft.core.errors import ConfigError, GraftError, RunError

T = TypeVar("T")


def launched() -> bool:
    """True in a process that torchrun started as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True once :func:`setup` joined a process group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    import torch.distributed as dist

    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """The process that writes files and logs: global rank 0 (or the only process)."""
    return rank() == 0


def setup(device: torch.device, *, nproc: int | None = None) -> torch.device:
    """Join torchrun's process group if this process was launched by it; return the device this rank uses
    (``cuda:LOCAL_RANK`` on GPUs). Backend: nccl on CUDA, gloo on the CPU. A no-op in a single process.

    ``nproc`` (``TrainConfig.nproc``) is the CLI's: ``graft train --nproc N`` starts torchrun before any of this.
    """
    if nproc is not None and nproc > 1:
        raise ConfigError(
            f"nproc={nproc} is for the command line (graft train --nproc {nproc} ...); from Python, start your "
            f"script with torchrun --nproc-per-node={nproc} and leave nproc out"
        )
    if not launched():
        return device
    import torch.distributed as dist

    if device.type == "mps":
        raise ConfigError("processes cannot share an MPS device; use --device cpu with torchrun, or one process")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local} has no GPU: {torch.cuda.device_count()} visible on this machine; launch at "
                f"most {torch.cuda.device_count()} processes per node (--nproc / --nproc-per-node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        if dist.get_rank() != 0:
            os.environ.setdefault("GRAFT_NO_PROGRESS", "1")  # one progress bar, rank 0's
    return device


def shutdown() -> None:
    """Leave the process group (the CLI calls this before its fast exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def refuse(what: str) -> None:
    """Fail clearly for a feature that does not run under torchrun yet."""
    if launched():
        raise ConfigError(f"{what} runs in one process: leave out torchrun / --nproc for it")


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the rank's GPU with nccl, the CPU with gloo."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank; if it fails, every rank raises the error
    (instead of the others waiting for a result that never comes)."""
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as e:
            broadcast_object(("error", (type(e), str(e))))
            raise
    status, value = broadcast_object(outcome)
    if status == "error":
        cls, message = value
        try:
            error = cls(message) if issubclass(cls, GraftError) else RunError(f"rank 0 failed: {message}")
        except TypeError:  # an error class with another constructor
            error = GraftError(message)
        raise error
    return value


def all_reduce_sums(*values: float) -> tuple[float, ...]:
    """The sums of ``values`` over all ranks (float64, exact for counts)."""
    if not is_distributed():
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tuple(t.cpu().tolist())


def epoch_totals(loader: Any, loss_sum: float, correct: int, seen: int) -> tuple[float, int, int]:
    """An epoch's (loss sum, correct, seen) over the whole data: summed over the ranks when ``loader`` gives this
    rank only its share (a :class:`ShardSampler`); as they are when every rank saw all of it (stored features)."""
    if not isinstance(getattr(loader, "sampler", None), ShardSampler) or not is_distributed():
        return loss_sum, correct, seen
    loss_sum, c, s = all_reduce_sums(loss_sum, correct, seen)
    return loss_sum, round(c), round(s)


def epoch_sum(loader: Any, counts: torch.Tensor) -> torch.Tensor:
    """A tensor of counts (the val phase's confusion matrix) summed over the ranks when ``loader`` gives this rank
    only its share, as :func:`epoch_totals`."""
    if not isinstance(getattr(loader, "sampler", None), ShardSampler) or not is_distributed():
        return counts
    import torch.distributed as dist

    total = counts.to(_comm_device(), torch.float64)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.round().long().cpu().view_as(counts)


# ----------------------------------------------------------------------------------------------------------------
# data and model


class ShardSampler(torch.utils.data.Sampler[int]):
    """This rank's share of ``range(n)``.

    Training (``shuffle``): a permutation drawn from ``generator`` (seeded alike on every rank, and consumed alike,
    so all ranks draw the same one: the shares are disjoint and change every epoch), padded with its first indices
    to a multiple of the world size so that every rank runs the same number of batches, as DDP requires.
    Evaluation: every ``world_size``-th index, in order, no padding (each image counted once).
    ``weights`` (``--balance sampler``): training draws ``n`` indices with replacement by these weights instead of
    a permutation, from the same generator, so every rank still draws the same sequence and takes its share.
    """

    def __init__(
        self, n: int, *, shuffle: bool, generator: torch.Generator | None = None, weights: torch.Tensor | None = None
    ) -> None:
        self.n, self.shuffle, self.generator, self.weights = n, shuffle, generator, weights
        self.rank, self.world = rank(), world_size()

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.rank, self.n, self.world))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator).tolist()
        else:
            order = torch.randperm(self.n, generator=self.generator).tolist()
        order += order[: (-len(order)) % self.world]
        return iter(order[self.rank :: self.world])

    def __len__(self) -> int:
        if self.shuffle:
            return -(-self.n // self.world)
        return len(range(self.rank, self.n, self.world))


def shard_loaders(train: Any, val: Any) -> tuple[Any, Any]:
    """The image loaders of a stage, each rank given its share (see :class:`ShardSampler`); ``--batch-size`` is
    the global batch. Unchanged in a single process."""
    if not is_distributed():
        return train, val
    per_rank = max(1, train.batch_size // world_size())
    if rank():  # augmentations and dropout draw from the global RNG: each rank its own stream (rank 0 as alone)
        torch.manual_seed((torch.initial_seed() + rank()) % 2**63)
    weights = getattr(train.sampler, "weights", None)  # a WeightedRandomSampler's (--balance sampler)
    sampler = ShardSampler(len(train.dataset), shuffle=True, generator=train.generator, weights=weights)
    return (
        _with_sampler(train, sampler, per_rank),
        _with_sampler(val, ShardSampler(len(val.dataset), shuffle=False), per_rank),
    )


def _with_sampler(loader: Any, sampler: ShardSampler, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
    )


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel (gradients averaged across ranks; rank 0's weights and buffers
    broadcast at the start); unchanged in a single process."""
    if not is_distributed():
        return module
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # channels_last inputs give some depthwise-conv gradients other strides than their (contiguous) weights: DDP
    # copies them into its buckets, which it warns about. Making the weights channels_last instead would change
    # the layout that evaluation, export and the saved files see, for a copy that costs little beside the conv.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (what evaluation and saving use)."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


# ----------------------------------------------------------------------------------------------------------------
# features


def sharded(extract: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``extract(body, samples, preprocess, **kw)`` (rows in sample order) computed by all ranks together: each
    computes a contiguous share of ``samples``, and every rank gets all the rows, in order. ``extract`` itself in a
    single process. Every rank must call it with the same samples."""
    if not is_distributed():
        return extract

    def run(body: nn.Module, samples: Sequence[Any], preprocess: Any, **kwargs: Any) -> torch.Tensor:
        lo, hi = _share(len(samples))
        return gather_rows(extract(body, list(samples[lo:hi]), preprocess, **kwargs))

    return run


def _share(n: int) -> tuple[int, int]:
    """This rank's contiguous range of ``n`` items (sizes differ by at most one)."""
    r, w = rank(), world_size()
    return r * n // w, (r + 1) * n // w


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's ``(n_r, F)`` rows, concatenated in rank order, on every rank (CPU float32). A rank with no
    rows may pass an empty tensor of any shape."""
    import torch.distributed as dist

    shapes: list[Any] = [None] * world_size()
    dist.all_gather_object(shapes, tuple(local.shape) if local.numel() else (0,))
    widths = {s[1] for s in shapes if len(s) == 2}
    if not widths:
        return torch.empty(0)
    (dim,) = widths
    longest = max(s[0] for s in shapes)
    device = _comm_device()
    padded = torch.zeros(longest, dim, dtype=torch.float32, device=device)
    if local.numel():
        padded[: local.shape[0]] = local.to(device, torch.float32)
    parts = [torch.empty_like(padded) for _ in shapes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: s[0]] for p, s in zip(parts, shapes, strict=True)]).cpu()


# ----------------------------------------------------------------------------------------------------------------
# launching and prediction


def relaunch(argv: Sequence[str], nproc: int) -> int:
    """Run this ``graft`` command again as ``nproc`` processes on this machine under torchrun (standalone c10d
    rendezvous on a free port) and return its exit status. ``--nproc`` is removed from ``argv``."""
    rest = strip_option(argv, "--nproc")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "graft",
        *rest,
    ]
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:  # torchrun got the same SIGINT and stops its workers
        return 130


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
