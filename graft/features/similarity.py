"""Exact nearest neighbours of backbone features, and the thresholds that call two images copies of each other.

Features are centred (the mean feature of the dataset subtracted: pooled ReLU features of one backbone share a
large common component, which made every pair look alike) and L2-normalised, so a dot product is a cosine
similarity. Neighbours are exact: the similarity matrix is computed in blocks of rows (a few hundred MB at most
at a time) and only each row's top k is kept, so memory is O(n k) however many images. At 16k images and 1280
features that is ~330 GFLOP, seconds on a laptop CPU; an approximate index would only pay past what fits in memory.

This module imports only numpy, torch and the standard library (``graft train`` uses it for its leakage warning).

The thresholds are calibrated (``benchmarks/bench_doctor.py``, see NOTES.md) on mobilenet_v2 features of
hymenoptera with planted copies, one random transform each: mirrored, re-cropped keeping 60-90% of the area,
resized to 40-80%, re-encoded as JPEG quality 30-60, brightness x0.7-1.3. The lowest similarity a planted copy
reached was compared with the highest similarity of two distinct photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

#: Cosine similarity (centred features) from which two images are near-duplicates by their embedding alone.
#: Planted copies: re-crops reached down to 0.70, mirrors 0.82, re-encodes 0.74, brightness 0.80; distinct
#: hymenoptera photos at most 0.68. Resized copies fell to 0.50 (detail lost), but their hashes matched.
NEAR_DUPLICATE = 0.70
#: Perceptual hashes (64 bits) this close, directly or one mirrored, also make a pair near-duplicates...
HASH_BITS = 10
#: ...when the embeddings agree at least this much (a guard against two plain images hashing alike). Planted
#: resized, re-encoded, brightened and mirrored copies were within 6 bits; no two distinct hymenoptera photos
#: were within 12.
HASH_SIMILARITY = 0.35
#: Memory one block of the similarity matrix may take.
BLOCK_BYTES = 256 << 20


def hash_signs(hexes: Sequence[str]) -> torch.Tensor:
    """64-bit hashes (hex) as rows of +-1: the dot product of two rows is 64 - 2 x their Hamming distance, so
    all pairs' distances are one small matrix product beside the features'."""
    ints = np.array([int(h, 16) for h in hexes], dtype=np.uint64)
    bits = np.unpackbits(ints.byteswap().view(np.uint8).reshape(-1, 8), axis=1)
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1)


@dataclass
class Hashes:
    """Perceptual hashes of a set of images, and of their mirror images, as :func:`hash_signs` rows."""

    direct: torch.Tensor
    mirrored: torch.Tensor

    @classmethod
    def of(cls, direct: Sequence[str], mirrored: Sequence[str]) -> Hashes:
        return cls(hash_signs(direct), hash_signs(mirrored))

    def take(self, index: Sequence[int] | np.ndarray) -> Hashes:
        i = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return Hashes(self.direct[i], self.mirrored[i])


def normalise(features: np.ndarray | torch.Tensor, mean: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Rows centred by ``mean`` (default: their own mean) and scaled to unit length, as float32."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    m = x.mean(0) if mean is None else torch.as_tensor(np.asarray(mean), dtype=torch.float32)
    x = x - m
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class Neighbours:
    """What :func:`search` found: every query's ``k`` most similar base rows (``sims``, ``index``, best first), and
    the (query, base, similarity, hash bits, mirrored) of pairs whose perceptual hashes matched."""

    sims: np.ndarray
    index: np.ndarray
    hash_pairs: list[tuple[int, int, float, int, bool]] = field(default_factory=list)


def search(
    queries: torch.Tensor,
    base: torch.Tensor,
    k: int,
    *,
    same: bool = False,
    hashes: tuple[Hashes, Hashes] | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Neighbours:
    """Exact k nearest neighbours of normalised rows (blocked matrix products, top-k per block of rows).

    ``same``: queries are ``base`` itself, and a row is not its own neighbour. ``hashes`` = (queries', base's):
    pairs within :data:`HASH_BITS` (directly or mirrored) and :data:`HASH_SIMILARITY` are collected as well,
    from the same blocks (64-wide products: a few percent of the work)."""
    n, m = len(queries), len(base)
    k = max(0, min(k, m - 1 if same else m))
    sims, index = np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
    found = Neighbours(sims, index)
    if n == 0 or m == 0:
        return found
    rows = max(1, min(n, block_bytes // max(1, 4 * m * (3 if hashes else 1))))
    with torch.inference_mode():
        for start in range(0, n, rows):
            block = queries[start : start + rows] @ base.T
            r = torch.arange(block.shape[0])
            if same:  # a row is its own best match: out of the running
                block[r, r + start] = -2.0
            if k:
                s, i = block.topk(k, dim=1)
                sims[start : start + rows], index[start : start + rows] = s.numpy(), i.numpy()
            if hashes is not None:
                found.hash_pairs += _hash_block(block, hashes, start, rows)
    return found


def _hash_block(
    block: torch.Tensor, hashes: tuple[Hashes, Hashes], start: int, rows: int
) -> list[tuple[int, int, float, int, bool]]:
    q, b = hashes
    direct = q.direct[start : start + rows] @ b.direct.T
    mirror = q.mirrored[start : start + rows] @ b.direct.T
    best = torch.maximum(direct, mirror)
    hit = (best >= 64 - 2 * HASH_BITS) & (block >= HASH_SIMILARITY)
    out = []
    for i, j in hit.nonzero().tolist():
        bits = int(64 - best[i, j].item()) // 2
        out.append((start + i, j, float(block[i, j]), bits, bool(mirror[i, j] > direct[i, j])))
    return out


@dataclass(frozen=True)
class Pair:
    """Two images (indices) that look like copies: cosine similarity, hash bits apart (None when the hashes did
    not match) and whether the hashes matched mirrored."""

    a: int
    b: int
    similarity: float
    bits: int | None = None
    mirrored: bool = False


def near_pairs(found: Neighbours, *, threshold: float = NEAR_DUPLICATE) -> list[Pair]:
    """Near-duplicate pairs (a < b) of a ``same`` search: kNN similarity >= ``threshold``, or matching hashes."""
    pairs: dict[tuple[int, int], Pair] = {}
    for i, j, sim, bits, mirrored in found.hash_pairs:
        a, b = sorted((i, j))
        if (a, b) not in pairs or (pairs[(a, b)].bits or 64) > bits:
            pairs[(a, b)] = Pair(a, b, sim, bits, mirrored)
    for i, j in zip(*np.nonzero(found.sims >= threshold), strict=True):
        a, b = sorted((int(i), int(found.index[i, j])))
        if (a, b) not in pairs:
            pairs[(a, b)] = Pair(a, b, float(found.sims[i, j]))
    return sorted(pairs.values(), key=lambda p: -p.similarity)


def leaked(
    train: np.ndarray | torch.Tensor,
    val: np.ndarray | torch.Tensor,
    *,
    hashes: tuple[Hashes, Hashes] | None = None,
    threshold: float = NEAR_DUPLICATE,
) -> list[Pair]:
    """Val images whose nearest train image is a near-duplicate: ``Pair(a=val index, b=train index)``, one per
    leaked val image (its closest train copy). Raw features; both splits are centred by their common mean.
    ``hashes`` = (val's, train's), when the scan measured them. What ``graft train`` warns about."""
    t = torch.as_tensor(np.asarray(train), dtype=torch.float32)
    v = torch.as_tensor(np.asarray(val), dtype=torch.float32)
    if len(t) == 0 or len(v) == 0:
        return []
    mean = torch.cat([t, v]).mean(0)
    found = search(normalise(v, mean), normalise(t, mean), 1, hashes=hashes)
    best: dict[int, Pair] = {}
    for i, j, sim, bits, mirrored in found.hash_pairs:
        if i not in best or best[i].similarity < sim:
            best[i] = Pair(i, j, sim, bits, mirrored)
    for i in np.nonzero(found.sims[:, 0] >= threshold)[0]:
        i = int(i)
        if i not in best or best[i].similarity < found.sims[i, 0]:
            best[i] = Pair(i, int(found.index[i, 0]), float(found.sims[i, 0]))
    return [best[i] for i in sorted(best)]
