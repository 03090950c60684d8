"""The learning-rate range test (Smith 2015, "Cyclical learning rates"; as fastai's ``lr_find`` runs it).

The learning rate grows exponentially from ``start`` (1e-7) to ``end`` (10) over ``iterations`` (100) training
steps; the training loss is smoothed (exponential moving average, beta 0.98, bias-corrected) and the test stops
once it exceeds 4x its minimum.

The suggestion is fastai's default, "valley": on the smoothed curve without its first tenth and last 5 points (as
fastai's ``lr_find`` judges it), the longest decreasing subsequence of the loss, and the point a third plus a sixth
of its span after its start (fastai's formula). Valley is chosen over "steepest" (the largest negative slope:
noisy on a 100-point curve) and "minimum / 10" (it depends on where the loss blows up): it lies where the loss still
falls, and it is fastai's default since 2.5.

Head stages run on the stored features (milliseconds); image stages train a copy of the weights: the model's
state, the run's generator and the global random state are restored after the test, so a run with ``--lr auto``
trains exactly as one given the found rate would.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core import atomic
from graft.core.device import autocast, one_thread, prepare_input

START_LR, END_LR, ITERATIONS, BETA = 1e-7, 10.0, 100, 0.98
CSV_FIELDS = ["iteration", "lr", "loss", "smoothed_loss", "suggested"]


@dataclass
class RangeTest:
    """One stage's range test: the learning rates tried, the raw and smoothed losses, the suggestion."""

    stage: str
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    index: int  # of the suggestion in lrs
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)

    def format(self) -> str:
        where = ", ".join(str(p) for p in self.files.values())
        return (
            f"{self.stage} stage: suggested lr {self.suggestion:.3g} (valley; {len(self.lrs)} steps, "
            f"{self.seconds:.2f}s)" + (f"; wrote {where}" if where else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "lr": self.suggestion, "steps": len(self.lrs), "seconds": round(self.seconds, 3)}

    def write_csv(self, path: Path) -> Path:
        rows = [
            [i, f"{lr:.6e}", f"{loss:.6f}", f"{s:.6f}", int(i == self.index)]
            for i, (lr, loss, s) in enumerate(zip(self.lrs, self.losses, self.smoothed, strict=True))
        ]
        atomic.write_csv(path, CSV_FIELDS, rows)
        self.files["csv"] = path
        return path


def read_csv(path: Path) -> RangeTest:
    """A range test back from its ``lr_find.csv`` (what the figure is drawn from)."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    index = next((i for i, r in enumerate(rows) if r["suggested"] == "1"), 0)
    lrs = [float(r["lr"]) for r in rows]
    return RangeTest(
        stage=path.stem.removeprefix("lr_find").strip("-_") or "head",
        lrs=lrs,
        losses=[float(r["loss"]) for r in rows],
        smoothed=[float(r["smoothed_loss"]) for r in rows],
        suggestion=lrs[index] if lrs else float("nan"),
        index=index,
        seconds=0.0,
    )


# ----------------------------------------------------------------------------------------------------------------
# the test


def range_test(
    target: nn.Module,
    loader: Any,
    criterion: nn.Module,
    device: torch.device,
    make_optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer],
    *,
    stage: str = "head",
    start: float = START_LR,
    end: float = END_LR,
    iterations: int = ITERATIONS,
    generator: torch.Generator | None = None,
    precision: str = "auto",
) -> RangeTest:
    """Train ``target`` on ``loader`` (cycled) for up to ``iterations`` steps at exponentially growing learning
    rates; record the losses and suggest a rate. ``target``'s weights and buffers, ``generator``'s state and the
    global random state are as before when it returns. ``precision``: the training steps' (a resolved
    ``--precision``)."""
    began = time.perf_counter()
    saved = {k: v.detach().clone() for k, v in target.state_dict().items()}
    was_training = target.training
    optimizer = make_optimizer([p for p in target.parameters() if p.requires_grad], start)
    lrs, losses, smoothed = [], [], []
    average, best = 0.0, math.inf
    with _kept_random_state(generator, device), torch.enable_grad():
        target.train()
        for step, (inputs, labels) in enumerate(_cycle(loader, iterations)):
            lr = start * (end / start) ** (step / max(iterations - 1, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, labels = prepare_input(inputs, device), labels.to(device)
            with autocast(device, precision):
                logits = target(inputs)
            loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            average = BETA * average + (1 - BETA) * value
            smooth = average / (1 - BETA ** (step + 1))
            lrs.append(lr), losses.append(value), smoothed.append(smooth)
            best = min(best, smooth)
            if not math.isfinite(smooth) or smooth > 4 * best:
                break
    target.load_state_dict(saved)
    target.train(was_training)
    index = suggest(lrs, smoothed, iterations)
    return RangeTest(stage, lrs, losses, smoothed, lrs[index], index, time.perf_counter() - began)


def _cycle(loader: Any, steps: int) -> Iterator[Any]:
    """``steps`` batches of ``loader``, starting over at its end."""
    done = 0
    while done < steps:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            done += 1
            if done >= steps:
                return
        if empty:
            return


@contextlib.contextmanager
def _kept_random_state(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """The run's generator and the global random state (augmentations, dropout) as they were before."""
    state = generator.get_state() if generator is not None else None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
    if generator is not None and state is not None:
        generator.set_state(state)


def suggest(lrs: list[float], smoothed: list[float], iterations: int) -> int:
    """Index (into ``lrs``) of fastai's "valley" suggestion, judged on the curve without its first tenth of
    ``iterations`` and its last 5 points (the divergence), as fastai's ``lr_find``."""
    lo, hi = iterations // 10, len(smoothed) - 5
    if hi - lo >= 3:
        return lo + valley(smoothed[lo:hi])
    # the loss diverged almost at once: a decade below its lowest point
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    return max((i for i in range(lowest + 1) if lrs[i] <= lrs[lowest] / 10), default=0)


def valley(losses: list[float]) -> int:
    """fastai's ``valley``: the longest decreasing subsequence of ``losses``; the index a third and then a sixth of
    its span after its start (fastai: ``max_start + int(sections) + int(sections / 2)``, ``sections = span / 3``)."""
    n = len(losses)
    longest = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[max_end] < longest[i]:
                max_end = i
                max_start = max_end - longest[max_end]
    sections = (max_end - max_start) / 3
    return max(0, min(n - 1, max_start + int(sections) + int(sections / 2)))


def stage_range_test(
    cfg: Any,
    target: nn.Module,
    loader: Any,
    criterion: nn.Module,
    device: torch.device,
    *,
    stage: str,
    on_features: bool,
    **limits: Any,
) -> RangeTest:
    """:func:`range_test` of one stage of a run (``graft lr-find`` and ``--lr auto``) with the run's optimizer;
    ``limits``: start, end, iterations, generator, precision."""
    from graft.training.loop import make_optimizer

    with one_thread() if on_features else contextlib.nullcontext():
        return range_test(
            target, loader, criterion, device, lambda params, lr: make_optimizer(cfg, params, lr), stage=stage, **limits
        )


# ----------------------------------------------------------------------------------------------------------------
# --lr auto


def stage_lr(
    cfg: Any,
    run_dir: Path,
    stage: str,
    target: nn.Module,
    loader: Any,
    criterion: nn.Module,
    device: torch.device,
    generator: torch.Generator,
    *,
    on_features: bool,
    found: dict[str, float],
    log: Callable[[str], None],
    precision: str = "auto",
) -> float:
    """``--lr auto``: the learning rate of ``stage``, from a range test of ``target`` on its training data
    (``lr_find-<stage>.csv`` in the run), recorded in config.json's ``lr_auto`` (and ``found``). A resumed run takes
    the rate its first part recorded. Under torchrun rank 0's rate is used by every rank."""
    from graft.core import distributed as dist

    recorded = (atomic.read_json_or(run_dir / "config.json", {}) or {}).get("lr_auto") or {}
    if stage in recorded:
        found[stage] = float(recorded[stage])
        log(f"lr auto: {stage} stage lr {found[stage]:.3g} (recorded by the run's first part)")
        return found[stage]
    test = stage_range_test(cfg, target, loader, criterion, device, stage=stage, on_features=on_features,
                            generator=generator, precision=precision)  # fmt: skip
    found[stage] = float(dist.broadcast_object(test.suggestion))
    if dist.is_main():
        test.write_csv(run_dir / f"lr_find-{stage}.csv")
        config = atomic.read_json_or(run_dir / "config.json", {}) or {}
        atomic.atomic_write_json(run_dir / "config.json", config | {"lr_auto": dict(found)})
    log(f"lr auto: {test.format()}")
    return found[stage]
