"""The checks of ``graft doctor`` and their thresholds: each takes the per-image facts (:class:`Context`) and the
similarity survey of the stored features and returns its findings (:mod:`graft.insight.doctor.findings`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from graft.features import copies
from graft.features import similarity as sim
from graft.insight.doctor.findings import Finding

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


class Context:
    """Per-image facts the checks share (index i = position in train + val)."""

    def __init__(
        self, classes: list[str], rel: list[str], split: list[str], labels: np.ndarray, measures: list[dict[str, Any]]
    ) -> None:
        self.classes, self.rel, self.split, self.labels, self.measures = classes, rel, split, labels, measures

    def label(self, i: int) -> str:
        return self.classes[int(self.labels[i])]


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


def _keep_drop(ctx: Context, group: list[int]) -> tuple[int, list[int]]:
    """The copy a user keeps (a val copy if there is one: the train copies are what leaks) and the ones to drop."""
    keep = next((i for i in group if ctx.split[i] == "val"), group[0])
    return keep, [i for i in group if i != keep]


def duplicates(ctx: Context, samples: list[Any]) -> list[Finding]:
    """Identical files or pixels (the scan's digest of the decoded pixels), and the conflicts among them."""
    from graft.data.quality import file_sha256

    by_pixels: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(ctx.measures):
        by_pixels[m["pixels"]].append(i)
    out: list[Finding] = []
    for group in (g for g in by_pixels.values() if len(g) > 1):
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
    return out


@dataclass
class Proposals:
    """Every proposed pair ``(a, b)`` (indices of train + val; for a leak, ``a`` is the val image) with what
    :mod:`graft.features.copies` made of it (``None``: identical pixels, an exact duplicate, not decoded again)."""

    pairs: sim.Pairs
    verdicts: list[copies.Verdict | None]

    def of_kind(self, kind: str) -> list[int]:
        return [i for i, v in enumerate(self.verdicts) if (v.kind if v else copies.COPY) == kind]


def verify(ctx: Context, samples: list[Any], survey: sim.Survey, n_train: int) -> Proposals:
    """The survey's proposals (nearest neighbours, hash matches, nearest across the split), each checked once by
    its pixels; pairs of identical pixels are copies without a look."""
    near, leaks = sim.near_pairs(survey.found), survey.leaks
    pairs = sim.Pairs(*(np.concatenate([getattr(leaks, k), getattr(near, k)]) for k in sim.Pairs.__dataclass_fields__))
    pairs.a[: len(leaks)] += n_train  # leaks first: val image first, the way its finding lists it
    n = np.int64(len(ctx.rel))
    key = np.minimum(pairs.a, pairs.b) * n + np.maximum(pairs.a, pairs.b)
    pairs = pairs.where(np.sort(np.unique(key, return_index=True)[1]))
    split = np.array([s == "val" for s in ctx.split])
    flip = ~split[pairs.a] & split[pairs.b]  # a leak lists its val image first: the transform maps it onto train
    pairs.a[flip], pairs.b[flip] = pairs.b[flip], pairs.a[flip]
    pixels = [m["pixels"] for m in ctx.measures]
    identical = np.array([pixels[a] == pixels[b] for a, b in zip(pairs.a, pairs.b, strict=True)], bool)
    look = np.nonzero(~identical)[0]
    checked = copies.verify(
        [s.path for s in samples], zip(pairs.a[look], pairs.b[look], strict=True), mirrored=pairs.mirrored[look]
    )
    verdicts: list[copies.Verdict | None] = [None] * len(pairs)
    for i, v in zip(look.tolist(), checked, strict=True):
        verdicts[i] = v
    return Proposals(pairs, verdicts)


def _pair_evidence(ctx: Context, p: sim.Pair, verdict: copies.Verdict | None) -> dict[str, Any]:
    return {
        "similarity": round(p.similarity, 4),
        "hash_bits": p.bits,
        "hash_mirrored": p.mirrored,
        **(verdict.evidence() if verdict else {"kind": "identical"}),
        "splits": sorted({ctx.split[p.a], ctx.split[p.b]}),
        "classes": sorted({ctx.label(p.a), ctx.label(p.b)}),
    }


def near_duplicates(ctx: Context, found: Proposals) -> list[Finding]:
    """Groups of copies (connected by verified pairs; exact duplicates are their own finding); per group, each copy
    to drop with its closest match in the group: a group of m copies lists m - 1 pairs or fewer."""
    keep = [i for i in found.of_kind(copies.COPY) if found.verdicts[i] is not None]  # not identical pixels
    near = found.pairs.where(np.array(keep, np.int64))
    verdicts = [found.verdicts[i] for i in keep]
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
        kept, drop = _keep_drop(ctx, group)
        for j in sorted({closest[i] for i in drop}):
            p = near.pair(j)
            evidence = {
                **_pair_evidence(ctx, p, verdicts[j]),
                "group": len(group),
                "group_pairs": int(pairs_in[root]),
                "keep": ctx.rel[kept],
                "drop": [ctx.rel[i] for i in drop if i in (p.a, p.b)],
            }
            out.append(Finding("near_duplicate", [ctx.rel[p.a], ctx.rel[p.b]], p.similarity, evidence))
    return out


def leakage(ctx: Context, found: Proposals) -> list[Finding]:
    """Each val image with a copy in train (verified, or identical pixels): one finding, its surest copy."""
    best: dict[int, tuple[tuple[int, int], int]] = {}
    for i in found.of_kind(copies.COPY):
        a, b = int(found.pairs.a[i]), int(found.pairs.b[i])
        if {ctx.split[a], ctx.split[b]} != {"train", "val"}:
            continue
        v = found.verdicts[i]
        sure = (1, 0) if v is None else (0, v.inliers)  # identical pixels first
        val = a if ctx.split[a] == "val" else b
        if val not in best or sure > best[val][0]:
            best[val] = (sure, i)
    out = []
    for val, (_, i) in best.items():
        p = found.pairs.pair(i)
        train = p.b if p.a == val else p.a
        evidence = {
            **_pair_evidence(ctx, p, found.verdicts[i]),
            "val_label": ctx.label(val),
            "train_label": ctx.label(train),
            "keep": ctx.rel[val],
            "drop": [ctx.rel[train]],
        }
        out.append(Finding("leakage", [ctx.rel[val], ctx.rel[train]], p.similarity, evidence))
    return out


def same_scene(ctx: Context, found: Proposals) -> list[Finding]:
    """Pairs that are another shot of the same scene or object: lined up by the same transform in places, not a
    copy. Across train and val they make the val estimate optimistic too, more softly than a copy."""
    out = []
    for i in found.of_kind(copies.SAME_SCENE):
        p = found.pairs.pair(i)
        out.append(
            Finding("same_scene", [ctx.rel[p.a], ctx.rel[p.b]], p.similarity, _pair_evidence(ctx, p, found.verdicts[i]))
        )
    return out


def label_errors(ctx: Context, x: Any, found: sim.Neighbours, seed: int) -> list[Finding]:
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


def outliers(ctx: Context, raw_sims: np.ndarray) -> list[Finding]:
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


def quality(ctx: Context, input_size: int) -> list[Finding]:
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


def unreadable(ds: Any) -> list[Finding]:
    return [Finding("unreadable", [s.path], 1.0, {"reason": s.reason}) for s in ds.report.skipped]


def imbalance(ds: Any) -> tuple[list[Finding], list[str]]:
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


def thresholds() -> dict[str, Any]:
    from graft.insight.doctor.labels import CONFIDENT

    return {
        "candidate_similarity": sim.CANDIDATE,
        "hash_bits": sim.HASH_BITS,
        "hash_min_similarity": sim.HASH_SIMILARITY,
        "copy_inliers": copies.COPY_INLIERS,
        "copy_agreement": copies.COPY_AGREEMENT,
        "same_scene_inliers": copies.SCENE_INLIERS,
        "same_scene_agreement": copies.SCENE_AGREEMENT,
        "confident_label_error": CONFIDENT,
        "outlier_z": OUTLIER_Z,
        "dark_luma": DARK_LUMA,
        "bright_luma": BRIGHT_LUMA,
        "blur_fraction_of_median": BLUR_FRACTION,
        "max_aspect": MAX_ASPECT,
        "gray_chroma": GRAY_CHROMA,
        "imbalance_ratio": IMBALANCE_RATIO,
    }
