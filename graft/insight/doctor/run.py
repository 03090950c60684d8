"""``graft.doctor(DATA)``: scan, stored features, then every check on them; writes doctor.json/.csv/.html.

The scan is training's (``graft.data.folders``: it decodes each new file once to validate it, and takes the quality
measures and hashes then, cached with its verdict); the features are training's (the same store, key and engine,
so ``graft doctor`` and ``graft train`` run the backbone once per image between them). What is left is arithmetic
on features: one blocked similarity product (kNN + hash matches), k-fold linear heads, and thresholds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import graft.insight.doctor.checks as checks
from graft.core.config import DoctorConfig, from_options, table_options
from graft.core.config.fields import takes_fields
from graft.core.errors import DataError
from graft.features import similarity as sim
from graft.insight.doctor.findings import DoctorResult, csv_text, exclude_entries, write_exclude_list


@takes_fields(DoctorConfig, "data")
def doctor(data: str | Path, /, *, log: Callable[[str], None] = print, **options: Any) -> DoctorResult:
    """Check a dataset folder; ``options`` are the fields of :class:`DoctorConfig` (``arch``, ``out``, ...; ``json``
    is the command's output format); ``log``: where progress lines go.

    Returns a :class:`DoctorResult` (``findings``, ``summary``, ``exit_code``) and writes ``doctor.json``,
    ``doctor.csv`` and ``doctor.html`` into ``out`` (default ``doctor/<name of DATA>``)."""
    return run_doctor(from_options(DoctorConfig, options, data=data), log=log)


def run_doctor(cfg: DoctorConfig, *, log: Callable[[str], None] = print) -> DoctorResult:
    """:func:`doctor` with a :class:`DoctorConfig` (checked when it was made)."""
    from graft.core.atomic import atomic_write_text

    times: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        times[name] = round(now - clock[0], 3)
        clock[0] = now

    ds, feats, preprocess = scan_and_features(cfg, lap)
    root = Path(ds.report.root)
    samples = ds.train + ds.val
    rel = [s.path.relative_to(root).as_posix() for s in samples]
    split = ["train"] * len(ds.train) + ["val"] * len(ds.val)
    labels = np.array([s.label for s in samples], np.int64)
    measures = _measures(ds, samples, preprocess.resize_size)
    lap("measures")
    ctx = checks.Context(ds.classes, rel, split, labels, measures)
    hashes = sim.Hashes.of([m["phash"] for m in measures], [m["phash_flip"] for m in measures])
    found = sim.survey(feats, checks.K, hashes=hashes, n_train=len(ds.train), raw_k=checks.OUTLIER_K)
    lap("similarity")
    proposals = checks.verify(ctx, samples, found, len(ds.train))
    lap("verify")
    findings = checks.duplicates(ctx, samples) + checks.near_duplicates(ctx, proposals)
    findings += checks.leakage(ctx, proposals) + checks.same_scene(ctx, proposals)
    lap("duplicates")
    findings += checks.label_errors(ctx, found.x, found.found, cfg.seed)
    lap("labels")
    findings += (
        checks.outliers(ctx, found.raw_sims) + checks.quality(ctx, preprocess.input_size) + checks.unreadable(ds)
    )
    imbalance, advice = checks.imbalance(ds)
    findings += imbalance
    files = {r: {"split": s, "label": ds.classes[y]} for r, s, y in zip(rel, split, labels, strict=True)}
    summary = {
        "images": len(samples),
        "train": len(ds.train),
        "val": len(ds.val),
        "classes": ds.classes,
        "counts": ds.report.counts,
        "arch": cfg.arch,
        "found": {k: sum(f.kind == k for f in findings) for k in dict.fromkeys(f.kind for f in findings)},
        "proposed_pairs": len(proposals.pairs),
        "thresholds": checks.thresholds(),
        "advice": advice,
    }
    result = DoctorResult(str(root), findings, files, summary, times, fail_on_same_scene=cfg.fail_on_same_scene)
    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.out / "doctor.csv", csv_text(result))
    result.written = {"json": str(cfg.out / "doctor.json"), "csv": str(cfg.out / "doctor.csv")}
    if cfg.exclude_list is not None:
        write_exclude_list(cfg.exclude_list, exclude_entries(result))
        result.written["exclude_list"] = str(cfg.exclude_list)
    lap("write")
    if cfg.html:
        from graft.insight.doctor.page import write_page

        write_page(cfg.out / "doctor.html", result, root)
        result.written["html"] = str(cfg.out / "doctor.html")
        lap("page")
    atomic_write_text(cfg.out / "doctor.json", result.json_text())  # last: with the page's time
    return result


def scan_and_features(cfg: DoctorConfig, lap: Callable[[str], None]) -> tuple[Any, Any, Any]:
    """The scan and the view-0 features of every usable image, exactly as ``graft train`` gets them."""
    import torch

    from graft.core.device import pick_device
    from graft.core.loaders import default_workers
    from graft.data.datasets import available_memory
    from graft.data.folders import scan
    from graft.features.store import cached_features
    from graft.models.backbones import get_backbone
    from graft.models.model import build_model, choose_weights

    device = pick_device(cfg.device)
    spec = get_backbone(cfg.arch)
    chosen = choose_weights(spec, cfg.pretrained)
    preprocess = chosen.preprocess if chosen else spec.preprocess
    keep = min(1 << 30, int(available_memory() * 0.1))
    draft = preprocess.resize_size
    ds = scan(cfg.data, val_split=cfg.val_split, seed=cfg.seed, draft=draft, keep_decoded=keep, **table_options(cfg))
    if ds.label_sets is not None:  # its label checks (out-of-fold heads, confident learning) are single-label
        raise DataError("graft doctor checks single-label datasets; this table is multi-label (--task multilabel)")
    lap("scan")
    model, weights, pretrained = build_model(spec, len(ds.classes), pretrained=cfg.pretrained)
    lap("model")
    samples = ds.train + ds.val
    if pretrained.sha256 is None:
        from graft.features.store import extract_features

        feats = extract_features(model.body, samples, preprocess, device=device, batch_size=cfg.batch_size)
    else:
        key = {
            "arch": spec.name,
            "arch_kwargs": spec.arch_kwargs(weights),
            "weights_sha256": pretrained.sha256,
            "device": device.type,
        }
        feats, _ = cached_features(
            model.body,
            samples,
            preprocess,
            key,
            device=device,
            batch_size=cfg.batch_size,
            workers=default_workers(),
            desc="features",
            decoded=ds.decoded,
        )
    ds.decoded.clear()
    lap("features")
    return ds, torch.as_tensor(feats, dtype=torch.float32), preprocess


def _measures(ds: Any, samples: list[Any], draft: int) -> list[dict[str, Any]]:
    """The scan's measures of every sample; those it did not take (files validated before measures existed, or
    at another draft size) are taken now, decoding those files once, and stored with their verdicts."""
    from concurrent.futures import ThreadPoolExecutor

    from graft.core.progress import progress
    from graft.data.folders import ScanVerdicts
    from graft.data.images import load_rgb
    from graft.data.quality import measure, usable

    out = [ds.measures.get(s.path) for s in samples]
    todo = [i for i, m in enumerate(out) if not usable(m, draft)]
    if todo:
        verdicts = ScanVerdicts(Path(ds.report.root))

        def take(i: int) -> dict[str, Any]:
            path = samples[i].path
            return measure(path, load_rgb(path, draft=draft), draft)

        with ThreadPoolExecutor(max_workers=4) as pool:
            for i, m in zip(todo, progress(pool.map(take, todo), desc="measures", total=len(todo)), strict=True):
                out[i] = m
                verdicts.put(samples[i].path, None, m)
        verdicts.save()
    return out  # type: ignore[return-value]
