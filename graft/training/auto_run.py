"""``graft train DATA --auto [--time-budget S] [--ensemble K]``: the search of :mod:`graft.training.auto`, then the
winner trained the usual way (frozen mode on its stored features) into a run that also holds ``leaderboard.csv``
and ``auto.json``; with ``--ensemble K``, the top K candidates are trained as member runs under ``members/`` and
the run is their ensemble (:mod:`graft.inference.ensemble`)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from graft.core import checkpoint as ckpt
from graft.core import rundir
from graft.core.config import TrainConfig, table_options
from graft.core.runmeta import RunMeta
from graft.data.folders import read_exclude_list, scan
from graft.inference.ensemble import ensemble_meta
from graft.models.backbones import get_backbone
from graft.models.model import choose_weights
from graft.training.auto import Candidate, Search, search, write_leaderboard
from graft.training.pipeline import RunResult, run_training

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
    chosen = choose_weights(spec, "auto")
    dataset = scan(
        cfg.data,
        val_split=cfg.val_split,
        seed=cfg.seed,
        draft=(chosen.preprocess if chosen else spec.preprocess).resize_size,
        exclude=read_exclude_list(cfg.exclude) if cfg.exclude else None,
        **table_options(cfg),
    )
    found = search(cfg, dataset, log=log, started=started)
    ranked = found.ranked()
    name = cfg.name or ckpt.next_run_name(cfg.out, "auto-" + ("ensemble" if cfg.ensemble else "freeze"))
    run_dir = rundir.make_run_dir(dataclasses.replace(cfg, name=name))
    write_leaderboard(run_dir / "leaderboard.csv", found)
    summary = found.summary() | {"ensemble": cfg.ensemble}
    ckpt.atomic_write_json(run_dir / AUTO_FILE, summary)
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
    metrics = ckpt.read_json_or(run_dir / "metrics.json", {}) or {}
    ckpt.atomic_write_json(run_dir / "metrics.json", metrics | {"auto": auto})
    config = ckpt.read_json_or(run_dir / "config.json", {}) or {}
    given = {k: v for k, v in cfg.to_dict().items() if k in ("auto", "time_budget", "ensemble")}
    ckpt.atomic_write_json(run_dir / "config.json", config | {"auto_search": given})
    ckpt.atomic_write_json(run_dir / AUTO_FILE, auto)


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
    ckpt.atomic_write_json(run_dir / ckpt.META_FILE, ensemble_meta(metas, paths))
    shutil.copyfile(members[0].run_dir / rundir.DATA_REPORT, run_dir / rundir.DATA_REPORT)
    config = settings(cfg, found.ranked()[0].candidate).to_dict() | {"ensemble_members": paths}
    ckpt.atomic_write_json(run_dir / "config.json", config)
    clf = load(run_dir, device=cfg.device, prepare=False)
    val = rundir.run_split(run_dir, "val", clf.classes)
    val_paths, labels = val.paths, val.labels
    batch = cfg.batch_size
    logits = stored_val_logits(clf, run_dir, val_paths, batch_size=batch)
    if logits is None:
        from graft.inference.logits import compute_logits

        clf.prepare()
        logits, _, _ = compute_logits(clf, val_paths, batch_size=batch)
    acc = float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())
    metrics = {
        "best_val_acc": acc,
        "members": [{"run": p, "best_val_acc": r.best_val_acc} for p, r in zip(paths, members, strict=True)],
        "n_train": members[0].metrics["n_train"],
        "n_val": len(val_paths),
        "classes": clf.classes,
        "device": members[0].metrics["device"],
        "train_seconds": round(sum(r.metrics["train_seconds"] for r in members), 3),
    }
    ckpt.atomic_write_json(run_dir / "metrics.json", metrics)
    log(f"auto: ensemble of {len(members)}: val acc {acc:.4f} (members {[r.best_val_acc for r in members]})")
    return RunResult(run_dir=run_dir, metrics=metrics)
