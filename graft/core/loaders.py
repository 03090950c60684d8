"""Batches of a dataset: DataLoaders (decoding worker processes, shuffled or weighted-sampled train batches) and
decoding threads for the passes that run without workers."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import torch


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
