"""``graft.doctor(DATA)``: scan, stored features, then every check on them; writes doctor.json/.csv/.html.

The scan is training's (``graft.data.folders``: it decodes each new file once to validate it, and takes the quality
measures and hashes then, cached with its verdict); the features are training's (the same store, key and engine,
so ``graft doctor`` and ``graft train`` run the backbone once per image between them). What is left is arithmetic
on features: one blocked similarity product (kNN + hash matches), k-fold linear heads, and thresholds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.config import DoctorConfig, table_options
from graft.core.errors import DataError
from graft.features import similarity as sim
from graft.insight.doctor.findings import DoctorResult, Finding, csv_text, exclude_entries, write_exclude_list

#: Neighbours kept per image (near-duplicates, outliers, label disagreement).
K = 10
#: An image is an outlier when the mean similarity (uncentred features) to its OUTLIER_K nearest neighbours is this many
#: robust standard deviations (1.4826 x MAD) below the dataset's median: hymenoptera's most isolated photo is at
#: 5.1, trashnet_half's at 5.5, a planted noise image at 7.4. (Centred features hid it: the few odd images of a
#: set, dark, blurred, noise, are each other's nearest neighbours there.)
OUTLIER_Z = 6.0
OUTLIER_K = 5
#: Quality thresholds (measures of graft.data.quality, luminance in 0..1).
DARK_LUMA, BRIGHT_LUMA, BRIGHT_CONTRAST = 0.12, 0.90, 0.12
BLUR_FRACTION = 0.1  # sharpness under a tenth of the dataset's median
MAX_ASPECT = 3.0
#: grey: mean spread of R, G, B under 4% of the mean luminance (relative: a dark photo has little spread too), in a
#: set that is >= 90% colour
GRAY_CHROMA, COLOUR_SHARE = 0.04, 0.9
IMBALANCE_RATIO = 3.0


def doctor(data: str | Path, /, **options: Any) -> DoctorResult:
    """Check a dataset folder; ``options`` are the fields of :class:`DoctorConfig` (``arch``, ``out``, ...).

    Returns a :class:`DoctorResult` (``findings``, ``summary``, ``exit_code``) and writes ``doctor.json``,
    ``doctor.csv`` and ``doctor.html`` into ``out`` (default ``doctor/<name of DATA>``)."""
    return run_doctor(DoctorConfig(data=Path(data), **options))


def run_doctor(cfg: DoctorConfig, *, log: Callable[[str], None] = print) -> DoctorResult:
    from graft.core.checkpoint import atomic_write_text

    times: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        times[name] = round(now - clock[0], 3)
        clock[0] = now

    ds, feats, preprocess = _scan_and_features(cfg, lap)
    root = Path(ds.report.root)
    samples = ds.train + ds.val
    rel = [s.path.relative_to(root).as_posix() for s in samples]
    split = ["train"] * len(ds.train) + ["val"] * len(ds.val)
    labels = np.array([s.label for s in samples], np.int64)
    measures = _measures(ds, samples, preprocess.resize_size)
    lap("measures")
    ctx = _Context(ds.classes, rel, split, labels, measures)
    hashes = sim.Hashes.of([m["phash"] for m in measures], [m["phash_flip"] for m in measures])
    found = sim.survey(feats, K, hashes=hashes, n_train=len(ds.train), raw_k=OUTLIER_K)
    lap("similarity")
    findings = _duplicates(ctx, samples, found.found)
    findings += _leakage(ctx, found.leaked, len(ds.train))
    lap("duplicates")
    findings += _label_errors(ctx, found.x, found.found, cfg.seed)
    lap("labels")
    findings += _outliers(ctx, found.raw_sims) + _quality(ctx, preprocess.input_size) + _unreadable(ds)
    imbalance, advice = _imbalance(ds)
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
        "thresholds": _thresholds(),
        "advice": advice,
    }
    result = DoctorResult(str(root), findings, files, summary, times)
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


class _Context:
    """Per-image facts the checks share (index i = position in train + val)."""

    def __init__(
        self, classes: list[str], rel: list[str], split: list[str], labels: np.ndarray, measures: list[dict[str, Any]]
    ) -> None:
        self.classes, self.rel, self.split, self.labels, self.measures = classes, rel, split, labels, measures

    def label(self, i: int) -> str:
        return self.classes[int(self.labels[i])]


def _scan_and_features(cfg: DoctorConfig, lap: Callable[[str], None]) -> tuple[Any, Any, Any]:
    """The scan and the view-0 features of every usable image, exactly as ``graft train`` gets them."""
    import torch

    from graft.core.runtime import default_workers, pick_device
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

    from graft.core.runtime import progress
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


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected component of each of ``n`` nodes under the edges ``(a, b)``: the smallest node of its component
    (min-label propagation with pointer jumping, a handful of vectorised rounds)."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        while not np.array_equal(new, new[new]):
            new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def _keep_drop(ctx: _Context, group: list[int]) -> tuple[int, list[int]]:
    """The copy a user keeps (a val copy if there is one: the train copies are what leaks) and the ones to drop."""
    keep = next((i for i in group if ctx.split[i] == "val"), group[0])
    return keep, [i for i in group if i != keep]


def _duplicates(ctx: _Context, samples: list[Any], found: sim.Neighbours) -> list[Finding]:
    from graft.data.quality import file_sha256

    by_pixels: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(ctx.measures):
        by_pixels[m["pixels"]].append(i)
    out: list[Finding] = []
    identical = np.full(len(ctx.rel), -1)  # pixel-identical group of each image
    for g, group in enumerate(g for g in by_pixels.values() if len(g) > 1):
        identical[group] = g
        shas = {i: file_sha256(samples[i].path) for i in group}
        files = [ctx.rel[i] for i in group]
        classes = sorted({ctx.label(i) for i in group})
        same_file = len(set(shas.values())) == 1
        keep, drop = _keep_drop(ctx, group)
        evidence = {
            "identical": "file" if same_file else "pixels",
            "splits": sorted({ctx.split[i] for i in group}),
            "classes": classes,
            "keep": ctx.rel[keep],
            "drop": [ctx.rel[i] for i in drop],
        }
        out.append(Finding("exact_duplicate", files, 1.0, evidence))
        if len(classes) > 1:
            out.append(Finding("label_conflict", files, 1.0, {"classes": classes, "identical": evidence["identical"]}))
    near = sim.near_pairs(found)
    ia, ib = identical[near.a], identical[near.b]
    return out + _near_duplicates(ctx, near.where((ia != ib) | (ia < 0)))


def _near_duplicates(ctx: _Context, near: sim.Pairs) -> list[Finding]:
    """Groups of near-copies (connected by matching pairs); per group, each copy to drop with its closest match
    in the group: a group of m copies lists m - 1 pairs or fewer, not its up to m(m-1)/2 matching pairs."""
    label = _components(len(ctx.rel), near.a, near.b)
    members = np.unique(np.concatenate([near.a, near.b]))
    groups: dict[int, list[int]] = defaultdict(list)
    for i in members.tolist():
        groups[int(label[i])].append(i)
    pairs_in = np.bincount(label[near.a], minlength=len(ctx.rel))
    ends = np.concatenate([near.a, near.b])
    order = np.lexsort((np.tile(np.arange(len(near)), 2), ends))  # pairs are most similar first: keep that order
    first = order[np.r_[True, ends[order][1:] != ends[order][:-1]]] if len(order) else order
    closest = dict(zip(ends[first].tolist(), (first % max(len(near), 1)).tolist(), strict=True))
    out = []
    for root, group in groups.items():
        keep, drop = _keep_drop(ctx, group)
        for j in sorted({closest[i] for i in drop}):
            p = near.pair(j)
            evidence = {
                "similarity": round(p.similarity, 4),
                "hash_bits": p.bits,
                "mirrored": p.mirrored,
                "splits": sorted({ctx.split[p.a], ctx.split[p.b]}),
                "classes": sorted({ctx.label(p.a), ctx.label(p.b)}),
                "group": len(group),
                "group_pairs": int(pairs_in[root]),
                "keep": ctx.rel[keep],
                "drop": [ctx.rel[i] for i in drop if i in (p.a, p.b)],
            }
            out.append(Finding("near_duplicate", [ctx.rel[p.a], ctx.rel[p.b]], p.similarity, evidence))
    return out


def _leakage(ctx: _Context, pairs: list[sim.Pair], n_train: int) -> list[Finding]:
    """Each val image whose nearest train image is a near-duplicate (or identical)."""
    out = []
    for p in pairs:
        v, t = n_train + p.a, p.b
        evidence = {
            "similarity": round(p.similarity, 4),
            "hash_bits": p.bits,
            "mirrored": p.mirrored,
            "val_label": ctx.label(v),
            "train_label": ctx.label(t),
            "keep": ctx.rel[v],
            "drop": [ctx.rel[t]],
        }
        out.append(Finding("leakage", [ctx.rel[v], ctx.rel[t]], p.similarity, evidence))
    return out


def _label_errors(ctx: _Context, x: Any, found: sim.Neighbours, seed: int) -> list[Finding]:
    from graft.insight.doctor.labels import CONFIDENT, score_labels

    if len(ctx.rel) < 2 * len(ctx.classes):
        return []
    scores = score_labels(x, ctx.labels, len(ctx.classes), found.sims, found.index, seed=seed)
    out = []
    for i in np.nonzero(scores.candidate)[0]:
        i = int(i)
        s = float(scores.score[i])
        evidence = {
            "given": ctx.label(i),
            "suggested": ctx.classes[int(scores.suggested[i])],
            "p_given": round(float(scores.probs[i, ctx.labels[i]]), 4),
            "p_suggested": round(float(scores.probs[i, scores.suggested[i]]), 4),
            "knn_disagreement": round(float(scores.disagreement[i]), 4),
            "confident": s >= CONFIDENT,  # candidates only: confident learning flagged it first
            "split": ctx.split[i],
        }
        out.append(Finding("label_error", [ctx.rel[i]], s, evidence))
    return out


def _outliers(ctx: _Context, raw_sims: np.ndarray) -> list[Finding]:
    """Images whose mean uncentred similarity to their nearest neighbours is far below the dataset's median."""
    if len(ctx.rel) < 10:
        return []
    near = raw_sims.mean(1)
    median = float(np.median(near))
    spread = 1.4826 * float(np.median(np.abs(near - median))) or 1e-6
    z = (median - near) / spread
    return [
        Finding(
            "outlier",
            [ctx.rel[i]],
            float(z[i]),
            {"neighbour_similarity": round(float(near[i]), 4), "z": round(float(z[i]), 2)},
        )
        for i in np.nonzero(z >= OUTLIER_Z)[0]
    ]


def _quality(ctx: _Context, input_size: int) -> list[Finding]:
    m = ctx.measures
    sharp = np.array([x["sharpness"] for x in m])
    median_sharp = float(np.median(sharp)) if len(sharp) else 0.0
    gray = [x["chroma"] < GRAY_CHROMA * max(x["luma"], 0.05) for x in m]
    colour = 1 - float(np.mean(gray)) if m else 0.0
    out = []
    for i, x in enumerate(m):
        f = [ctx.rel[i]]
        short, long = sorted((x["width"], x["height"]))
        if x["sharpness"] < BLUR_FRACTION * median_sharp:
            out.append(
                Finding(
                    "blurry",
                    f,
                    1 - x["sharpness"] / median_sharp,
                    {"sharpness": x["sharpness"], "median": median_sharp},
                )
            )
        if x["luma"] < DARK_LUMA:
            out.append(Finding("dark", f, 1 - x["luma"], {"luma": x["luma"]}))
        if x["luma"] > BRIGHT_LUMA and x["contrast"] < BRIGHT_CONTRAST:
            out.append(Finding("bright", f, x["luma"], {"luma": x["luma"], "contrast": x["contrast"]}))
        if short < input_size / 2:
            out.append(Finding("tiny", f, 1 - short / input_size, {"width": x["width"], "height": x["height"]}))
        if long / max(short, 1) > MAX_ASPECT:
            out.append(Finding("aspect", f, long / max(short, 1), {"width": x["width"], "height": x["height"]}))
        if colour >= COLOUR_SHARE and gray[i]:
            out.append(
                Finding(
                    "grayscale", f, 1 - x["chroma"], {"chroma": x["chroma"], "colour_share": round(float(colour), 3)}
                )
            )
    return out


def _unreadable(ds: Any) -> list[Finding]:
    return [Finding("unreadable", [s.path], 1.0, {"reason": s.reason}) for s in ds.report.skipped]


def _imbalance(ds: Any) -> tuple[list[Finding], list[str]]:
    counts = {c: ds.report.counts["train"][c] + ds.report.counts["val"][c] for c in ds.classes}
    big, small = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
    ratio = counts[big] / max(counts[small], 1)
    if ratio <= IMBALANCE_RATIO:
        return [], []
    advice = [
        f"classes are imbalanced: {big!r} has {counts[big]} images, {ratio:.1f}x the {counts[small]} of {small!r}.",
        "Collect more images of the small classes if you can; judge runs by balanced accuracy and per-class recall "
        "(graft evaluate RUN), not accuracy alone; or leave out images of the big classes to even them out.",
    ]
    evidence = {"counts": counts, "ratio": round(ratio, 2), "largest": big, "smallest": small}
    return [Finding("imbalance", [], ratio, evidence)], advice


def _thresholds() -> dict[str, Any]:
    from graft.insight.doctor.labels import CONFIDENT

    return {
        "near_duplicate_similarity": sim.NEAR_DUPLICATE,
        "hash_bits": sim.HASH_BITS,
        "hash_min_similarity": sim.HASH_SIMILARITY,
        "confident_label_error": CONFIDENT,
        "outlier_z": OUTLIER_Z,
        "dark_luma": DARK_LUMA,
        "bright_luma": BRIGHT_LUMA,
        "blur_fraction_of_median": BLUR_FRACTION,
        "max_aspect": MAX_ASPECT,
        "gray_chroma": GRAY_CHROMA,
        "imbalance_ratio": IMBALANCE_RATIO,
    }
