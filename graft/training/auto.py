"""``graft train DATA --auto``: settings chosen by stratified 5-fold cross-validation on the train split's stored
features, never on val (whose accuracy stays an honest estimate of the chosen model).

Candidates are drawn cheap-first: the backbones whose pretrained weights are on this machine, in order of compute
(their features are extracted once each, train images only, through the feature store), and for each a short grid
of heads (linear, MLP with dropout), learning rates, weight decays and, on imbalanced data, inverse-frequency class
weights; the first candidate is graft's default. Each candidate trains ``--epochs`` of the head on 4 folds and is
scored on the fifth (the run's selection metric: accuracy, or balanced accuracy on imbalanced data), five times.
With ``--time-budget`` no candidate starts once the budget is spent (feature extraction counts, and a backbone
whose extraction would not fit is skipped). Feature views (augmented copies) are not searched: each view costs a
feature pass.

Then :func:`run_auto` trains the winner the usual way (frozen mode on its stored features) into a run that also
holds ``leaderboard.csv`` and ``auto.json``; with ``--ensemble K``, the top K candidates are trained as member runs
under ``members/`` and the run is their ensemble (:mod:`graft.inference.ensemble`).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core import atomic, rundir
from graft.core import checkpoint as ckpt
from graft.core.config import TrainConfig, table_options, to_jsonable
from graft.core.device import one_thread, pick_device
from graft.core.heads import HeadSpec, build_head
from graft.core.metrics import accuracy, balanced_accuracy, confusion_matrix, macro_f1, stratified_folds
from graft.core.runmeta import RunMeta
from graft.data.folders import read_exclude_list, scan
from graft.features.store import body_key, cached_features
from graft.inference.ensemble import ensemble_meta
from graft.models.backbones import get_backbone, list_backbones
from graft.models.model import build_model, choose_weights, run_preprocess
from graft.training.balance import class_counts, imbalance, make_criterion, select_metric
from graft.training.loop import make_optimizer, make_scheduler
from graft.training.pipeline import RunResult, run_training

FOLDS = 5
CHUNK = 64  # images per feature-extraction step of the search (the budget is checked between them)
#: GFLOPs per 224x224 image (torchvision's and timm's model cards): the order backbones are tried in
GFLOPS = {
    "mobilenet_v3_small": 0.06, "shufflenet_v2_x0_5": 0.04, "shufflenet_v2_x1_0": 0.14, "mnasnet0_5": 0.1,
    "mobilenet_v3_large": 0.22, "mobilenet_v2": 0.30, "mnasnet1_0": 0.31, "squeezenet1_1": 0.35,
    "efficientnet_lite0": 0.39, "efficientnet_b0": 0.39, "regnet_y_400mf": 0.40, "resnet18": 1.81,
    "densenet121": 2.83, "resnet34": 3.66, "resnet50": 4.09, "convnext_tiny": 4.46, "vit_b_16": 17.56,
}  # fmt: skip
#: seconds per image of a feature pass on 2 CPU cores at 0.3 GFLOPs (measured: mobilenet_v2), scaled by GFLOPs
SECONDS_PER_IMAGE = 0.02
IMBALANCED = 1.5  # largest / smallest class from which class weights are among the candidates
LEADERBOARD_FIELDS = [
    *("rank", "arch", "hidden", "dropout", "lr", "weight_decay", "balance", "metric", "cv_mean", "cv_sd"),
    *("cv_acc_mean", "folds", "seconds", "features_seconds"),
]


@dataclass(frozen=True)
class Candidate:
    """Settings of one candidate: a backbone and how its head is trained."""

    arch: str
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    balance: str = "none"

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        head = "linear" if not self.hidden else "mlp " + ",".join(map(str, self.hidden))
        extra = f" dropout {self.dropout:g}" if self.dropout else ""
        weights = " class weights" if self.balance == "weights" else ""
        return f"{self.arch} {head}{extra} lr {self.lr:g} wd {self.weight_decay:g}{weights}"


@dataclass
class Scored:
    """A candidate's cross-validation: per-fold scores of the selection metric (and accuracy), the time."""

    candidate: Candidate
    scores: list[float]
    accuracies: list[float]
    seconds: float
    features_seconds: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0


@dataclass
class Search:
    """What the search did: the candidates scored (best first), its metric and times, and what it skipped."""

    scored: list[Scored]
    metric: str
    seconds: float
    budget: float | None
    skipped: list[str]

    def ranked(self) -> list[Scored]:
        # ties: the cheaper (earlier drawn) candidate wins, so the default stays unless something beats it
        order = {id(s): i for i, s in enumerate(self.scored)}
        return sorted(self.scored, key=lambda s: (-round(s.mean, 10), order[id(s)]))

    def summary(self) -> dict[str, Any]:
        best = self.ranked()[0]
        return {
            "metric": self.metric,
            "folds": FOLDS,
            "candidates": len(self.scored),
            "search_seconds": round(self.seconds, 3),
            "time_budget": self.budget,
            "skipped": self.skipped,
            "winner": to_jsonable(best.candidate.options()) | {"cv_mean": best.mean, "cv_sd": best.sd},
        }


# ----------------------------------------------------------------------------------------------------------------
# candidates


def local_backbones(image_size: int | None = None) -> list[str]:
    """Registered backbones whose pretrained weights are on this machine, cheapest first (with ``image_size``: those
    that take inputs of that size)."""
    names = []
    for name in list_backbones():
        spec = get_backbone(name)
        fixed = image_size is not None and spec.default_weights is not None and spec.default_weights.fixed_input_size
        if spec.source != "timm" and any(w.is_available() for w in spec.weights) and not fixed:
            names.append(name)
    return sorted(names, key=lambda n: (GFLOPS.get(n, math.inf), n))


def grid(arch: str, *, imbalanced: bool, lr: float, weight_decay: float) -> list[Candidate]:
    """The candidates of one backbone, cheap and likely first: graft's default (``lr``, ``weight_decay`` of the
    config), other rates and decays of a linear head, then MLP heads with dropout."""
    base = Candidate(arch, lr=lr, weight_decay=weight_decay)
    out = [
        base,
        dataclasses.replace(base, lr=lr * 3),
        dataclasses.replace(base, lr=lr / 3),
        dataclasses.replace(base, weight_decay=1e-2),
        dataclasses.replace(base, dropout=0.2),
        dataclasses.replace(base, hidden=(512,), dropout=0.2),
        dataclasses.replace(base, hidden=(512,), dropout=0.5),
        dataclasses.replace(base, hidden=(512,), dropout=0.2, lr=lr / 3),
    ]
    if imbalanced:
        out.insert(1, dataclasses.replace(base, balance="weights"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# cross-validation


def cross_validate(
    features: torch.Tensor, labels: torch.Tensor, candidate: Candidate, cfg: TrainConfig, metric: str
) -> Scored:
    """``candidate``'s head trained on 4 folds and scored on the fifth, for each fold."""
    began = time.perf_counter()
    n_classes = int(labels.max()) + 1
    folds = torch.from_numpy(stratified_folds(labels.numpy(), FOLDS, cfg.seed))
    settings = dataclasses.replace(cfg, **{k: v for k, v in candidate.options().items() if k != "arch"})
    scores, accuracies = [], []
    for k in range(FOLDS):
        train, held = folds != k, folds == k
        counts = class_counts(labels[train].tolist(), n_classes)
        criterion, _ = make_criterion(settings, counts)
        head = fit_head(features[train], labels[train], settings, n_classes, criterion, seed=cfg.seed * 100 + k)
        with torch.inference_mode():
            predicted = head(features[held]).argmax(1).numpy()
        truth = labels[held].numpy()
        accuracies.append(accuracy(truth, predicted))
        scores.append(_score(predicted, truth, n_classes, metric))
    return Scored(candidate, scores, accuracies, time.perf_counter() - began)


def fit_head(
    features: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, n_classes: int, criterion: nn.Module, *, seed: int
) -> nn.Module:
    """A head trained on stored features as a head stage trains it (``cfg``'s optimizer, schedule, epochs and batch
    size), without early stopping (no val here). The global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = build_head(features.shape[1], n_classes, HeadSpec(cfg.hidden, cfg.dropout))
        optimizer = make_optimizer(cfg, list(head.parameters()), float(cfg.lr))
        scheduler = make_scheduler(cfg, optimizer, cfg.epochs)
        generator = torch.Generator().manual_seed(seed)
        head.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                loss = criterion(head(features[rows]), labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
    return head.eval()


def _score(predicted: np.ndarray, truth: np.ndarray, n_classes: int, metric: str) -> float:
    """Accuracy, balanced accuracy or macro-F1 of one fold."""
    if metric == "acc":
        return accuracy(truth, predicted)
    cm = confusion_matrix(truth, predicted, n_classes)
    return balanced_accuracy(cm) if metric == "balanced_acc" else macro_f1(cm)


# ----------------------------------------------------------------------------------------------------------------
# the search


def search(cfg: TrainConfig, dataset: Any, *, log: Callable[[str], None], started: float) -> Search:
    """Score candidates on the train split's features until the grid or the budget ends. Only ``dataset.train``
    is read (its stored features); the val images are never looked at."""
    device = pick_device(cfg.device)
    labels = torch.tensor([s.label for s in dataset.train])
    counts = class_counts(labels.tolist(), len(dataset.classes))
    metric = select_metric(cfg, counts)
    budget, scored, skipped = cfg.time_budget, [], []
    need = cfg.ensemble or 1  # candidates scored whatever the budget (an ensemble needs its members)
    rate = SECONDS_PER_IMAGE

    def left() -> float:
        return math.inf if budget is None else budget - (time.perf_counter() - started)

    for arch in local_backbones(cfg.image_size):
        cost = rate * GFLOPS.get(arch, 4.0) / 0.3 * len(dataset.train)
        if len(scored) >= need and left() < cost:
            skipped.append(f"{arch}: its feature pass (~{cost:.0f}s) does not fit in the {left():.0f}s left")
            continue
        began = time.perf_counter()
        deadline = None if budget is None or len(scored) < need else started + budget
        features, computed = train_features(cfg, arch, dataset, device, log, deadline=deadline)
        extraction = time.perf_counter() - began
        if features is None:
            skipped.append(f"{arch}: its feature pass did not end within the budget ({computed} rows stored)")
            break
        if computed:  # what a feature pass costs here, for the next backbone's estimate
            rate = max(rate, extraction / computed * 0.3 / GFLOPS.get(arch, 4.0))
        last = 0.0
        for i, candidate in enumerate(grid(arch, imbalanced=imbalance(counts) >= IMBALANCED, **_base(cfg))):
            if len(scored) >= need and left() < last:
                skipped.append(f"{candidate.describe()} and later ones: the budget is spent")
                break
            with one_thread():
                result = cross_validate(features, labels, candidate, cfg, metric)
            result.features_seconds = extraction if i == 0 else 0.0
            last = result.seconds
            scored.append(result)
            log(
                f"auto: {candidate.describe()}: cv {metric} {result.mean:.4f} +- {result.sd:.4f} "
                f"({result.seconds:.2f}s)"
            )
        else:
            continue
        break  # the budget ended inside a backbone's grid: no further backbone
    return Search(scored, metric, time.perf_counter() - started, budget, skipped)


def _base(cfg: TrainConfig) -> dict[str, float]:
    """The default rate and decay the grid varies around (a number given with --lr is kept as the default)."""
    default = {"adamw": 1e-3, "sgd": 1e-2}[cfg.optimizer]
    lr = float(cfg.lr) if isinstance(cfg.lr, float | int) else default
    return {"lr": lr, "weight_decay": cfg.weight_decay}


def train_features(
    cfg: TrainConfig,
    arch: str,
    dataset: Any,
    device: torch.device,
    log: Callable[[str], None],
    *,
    deadline: float | None = None,
) -> tuple[torch.Tensor | None, int]:
    """The train split's view-0 features of ``arch``'s pretrained body, through the feature store (those a run of
    ``arch`` stores and reads), and how many rows were computed now. Computed in chunks of ``CHUNK`` images: past
    ``deadline`` (a ``time.perf_counter()`` value) it gives up and returns None (the rows computed are stored)."""
    from graft.core.rundir import model_meta

    spec = get_backbone(arch)
    preprocess = run_preprocess(spec, choose_weights(spec, "auto"), cfg.image_size)
    model, weights, pretrained = build_model(spec, len(dataset.classes), pretrained="auto")
    meta = model_meta(dataclasses.replace(cfg, arch=arch), spec, weights, pretrained, preprocess, dataset.classes)
    key = body_key(spec.name, meta["arch_kwargs"], pretrained.sha256, device.type)
    model = model.to(device).eval()
    began = time.perf_counter()
    options = {"device": device, "batch_size": cfg.batch_size, "desc": f"{arch} train features"}
    parts, computed = [], 0
    for start in range(0, len(dataset.train), CHUNK):
        if deadline is not None and time.perf_counter() > deadline:
            log(f"auto: {arch} train features: the budget ended after {start} of {len(dataset.train)} images")
            return None, computed
        part, done = cached_features(model.body, dataset.train[start : start + CHUNK], preprocess, key, **options)
        parts.append(part)
        computed += done
    log(f"auto: {arch} train features: {len(dataset.train) - computed} from cache, {computed} computed "
        f"({time.perf_counter() - began:.1f}s)")  # fmt: skip
    return torch.cat(parts).float(), computed


def write_leaderboard(path: Path, found: Search) -> Path:
    """``leaderboard.csv``: every candidate scored, best first, with its settings, CV mean and sd, and times."""
    rows = []
    for rank, s in enumerate(found.ranked(), 1):
        c = s.candidate
        rows.append([
            rank, c.arch, ",".join(map(str, c.hidden)) or "linear", c.dropout, f"{c.lr:g}", f"{c.weight_decay:g}",
            c.balance, found.metric, f"{s.mean:.6f}", f"{s.sd:.6f}", f"{statistics.fmean(s.accuracies):.6f}",
            " ".join(f"{v:.4f}" for v in s.scores), f"{s.seconds:.3f}", f"{s.features_seconds:.3f}",
        ])  # fmt: skip
    atomic.write_csv(path, LEADERBOARD_FIELDS, rows)
    return path


AUTO_FILE = "auto.json"


def settings(cfg: TrainConfig, candidate: Candidate, **more: Any) -> TrainConfig:
    """``cfg`` with the candidate's settings, as a plain frozen run (no search options)."""
    return dataclasses.replace(cfg, auto=False, time_budget=None, ensemble=None, **candidate.options(), **more)


def run_auto(
    cfg: TrainConfig, *, log: Callable[[str], None] = print, train: Callable[[TrainConfig], RunResult] | None = None
) -> RunResult:
    """Search, then train the winner with ``train`` (default: :func:`run_training`; ``graft.train`` passes itself,
    so the run gets its curves and report) or, with ``cfg.ensemble``, the top candidates as one ensemble run."""
    started = time.perf_counter()
    spec = get_backbone(cfg.arch)  # the scan decodes at the draft size a run of --arch would
    dataset = scan(
        cfg.data,
        val_split=cfg.val_split,
        seed=cfg.seed,
        draft=run_preprocess(spec, choose_weights(spec, "auto"), cfg.image_size).resize_size,
        exclude=read_exclude_list(cfg.exclude) if cfg.exclude else None,
        **table_options(cfg),
    )
    found = search(cfg, dataset, log=log, started=started)
    ranked = found.ranked()
    name = cfg.name or rundir.next_run_name(cfg.out, "auto-" + ("ensemble" if cfg.ensemble else "freeze"))
    run_dir = rundir.make_run_dir(dataclasses.replace(cfg, name=name))
    write_leaderboard(run_dir / "leaderboard.csv", found)
    summary = found.summary() | {"ensemble": cfg.ensemble}
    atomic.atomic_write_json(run_dir / AUTO_FILE, summary)
    log(
        f"auto: {len(found.scored)} candidates in {found.seconds:.1f}s"
        + (f" (budget {found.budget:g}s)" if found.budget is not None else "")
        + f"; best {ranked[0].candidate.describe()} (cv {found.metric} {ranked[0].mean:.4f} +- {ranked[0].sd:.4f}); "
        f"wrote {run_dir / 'leaderboard.csv'}"
    )
    for line in found.skipped:
        log(f"auto: skipped {line}")
    final_start = time.perf_counter()
    if cfg.ensemble:
        result = _train_ensemble(cfg, found, run_dir, log)
    else:
        winner = settings(cfg, ranked[0].candidate, name=name, exist_ok=True)
        result = (train or (lambda c: run_training(c, log=log)))(winner)
    timing = {
        "search_seconds": round(found.seconds, 3),
        "final_seconds": round(time.perf_counter() - final_start, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
    }
    _record(run_dir, summary | timing, cfg)
    result.metrics["auto"] = summary | timing
    log(
        f"auto: search {timing['search_seconds']:.1f}s + final training {timing['final_seconds']:.1f}s = "
        f"{timing['total_seconds']:.1f}s; val acc {result.metrics.get('best_val_acc', float('nan')):.4f}"
    )
    return result


def _record(run_dir: Path, auto: dict[str, Any], cfg: TrainConfig) -> None:
    """The search in metrics.json (``auto``) and config.json (the options given, under ``auto``)."""
    metrics = atomic.read_json_or(run_dir / "metrics.json", {}) or {}
    atomic.atomic_write_json(run_dir / "metrics.json", metrics | {"auto": auto})
    config = atomic.read_json_or(run_dir / "config.json", {}) or {}
    given = {k: v for k, v in cfg.to_dict().items() if k in ("auto", "time_budget", "ensemble")}
    atomic.atomic_write_json(run_dir / "config.json", config | {"auto_search": given})
    atomic.atomic_write_json(run_dir / AUTO_FILE, auto)


def _train_ensemble(cfg: TrainConfig, found: Search, run_dir: Path, log: Callable[[str], None]) -> RunResult:
    """The top ``cfg.ensemble`` candidates as member runs, and the ensemble's model.json, config, data report and
    metrics (its val accuracy from the members' stored val features: what ``graft evaluate`` reads back)."""
    from graft.inference.loading import load
    from graft.inference.logits import stored_val_logits

    members, paths = [], []
    for rank, scored in enumerate(found.ranked()[: cfg.ensemble], 1):
        c = scored.candidate
        name = f"{rank}-{c.arch}"
        log(f"auto: ensemble member {rank}: {c.describe()}")
        member = settings(cfg, c, out=run_dir / "members", name=name, exist_ok=True)
        members.append(run_training(member, log=log))
        paths.append(f"members/{name}")
    metas = [RunMeta.read(r.run_dir) for r in members]
    atomic.atomic_write_json(run_dir / ckpt.META_FILE, ensemble_meta(metas, paths))
    shutil.copyfile(members[0].run_dir / rundir.DATA_REPORT, run_dir / rundir.DATA_REPORT)
    config = settings(cfg, found.ranked()[0].candidate).to_dict() | {"ensemble_members": paths}
    atomic.atomic_write_json(run_dir / "config.json", config)
    clf = load(run_dir, device=cfg.device, prepare=False)
    val = rundir.run_split(run_dir, "val", clf.classes)
    val_paths, labels = val.paths, val.labels
    batch = cfg.batch_size
    logits = stored_val_logits(clf, run_dir, val_paths, batch_size=batch)
    if logits is None:
        from graft.inference.logits import compute_logits

        clf.prepare()
        logits, _, _ = compute_logits(clf, val_paths, batch_size=batch)
    acc = accuracy(labels, np.asarray(logits).argmax(1))
    metrics = {
        "best_val_acc": acc,
        "members": [{"run": p, "best_val_acc": r.best_val_acc} for p, r in zip(paths, members, strict=True)],
        "n_train": members[0].metrics["n_train"],
        "n_val": len(val_paths),
        "classes": clf.classes,
        "device": members[0].metrics["device"],
        "train_seconds": round(sum(r.metrics["train_seconds"] for r in members), 3),
    }
    atomic.atomic_write_json(run_dir / "metrics.json", metrics)
    log(f"auto: ensemble of {len(members)}: val acc {acc:.4f} (members {[r.best_val_acc for r in members]})")
    return RunResult(run_dir=run_dir, metrics=metrics)
