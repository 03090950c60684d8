"""Exact nearest neighbours of backbone features, and the thresholds that call two images copies of each other.

Features are centred (the mean feature of the dataset subtracted: pooled ReLU features of one backbone share a
large common component, which made every pair look alike) and L2-normalised, so a dot product is a cosine
similarity. Neighbours are exact: the similarity matrix is computed in blocks of rows (a few hundred MB at most
at a time) and only each row's top k is kept, so memory is O(n k) however many images. At 16k images and 1280
features that is ~330 GFLOP, seconds on a laptop CPU; an approximate index would only pay past what fits in memory.

This module imports only numpy, torch and the standard library (``graft train`` uses it for its leakage warning).

Similarity only proposes pairs: in a fine-grained set two different photos reach cosine 0.84 while a copy that was
cropped and shrunk falls to 0.37. What a proposed pair is (a copy, another shot of the same scene, or merely
alike) is decided from its pixels by :mod:`graft.features.copies`. Proposals (NOTES.md, "Copies"): each image's
nearest neighbour, each val image's nearest train image and each train image's nearest val image, from
:data:`CANDIDATE` up; and pairs whose perceptual hashes match (a copy resized down loses the detail the features
see, not its hash).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

#: Cosine similarity (centred features) from which a nearest neighbour is proposed as a copy. Of 555 planted
#: copies (every val image of hymenoptera, trashnet_half and flowers5, each edited by one or two random edits),
#: 98% were a nearest neighbour this close; most of the rest matched by hash. Lower, the proposals grow fast
#: (0.45: +90% on hymenoptera) for little more recall.
CANDIDATE = 0.5
#: ...and from STANDOUT_FLOOR when it stands out: at least STANDOUT_MARGIN above the second nearest (a threshold
#: relative to the image's own neighbours: a shrunk copy whose features fell to 0.4 is still far closer than
#: anything else). It adds 8-15 proposals per 1,000 images on the three datasets.
STANDOUT_FLOOR, STANDOUT_MARGIN = 0.3, 0.15
#: Perceptual hashes (64 bits) this close, directly or one mirrored, also propose a pair...
HASH_BITS = 10
#: ...when the embeddings agree at least this much (a guard against two plain images hashing alike). Resized
#: copies keep their hash (within 2-8 bits) when their features fall to 0.37.
HASH_SIMILARITY = 0.35
#: Memory one block of the similarity matrix may take.
BLOCK_BYTES = 256 << 20


def _ints(hexes: Sequence[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)


@dataclass
class Hashes:
    """Perceptual hashes (64-bit, ``uint64``) of a set of images and of their mirror images."""

    direct: np.ndarray
    mirrored: np.ndarray

    @classmethod
    def of(cls, direct: Sequence[str], mirrored: Sequence[str]) -> Hashes:
        return cls(_ints(direct), _ints(mirrored))

    def take(self, index: Sequence[int] | np.ndarray) -> Hashes:
        i = np.asarray(index, dtype=np.int64)
        return Hashes(self.direct[i], self.mirrored[i])


def normalise(features: np.ndarray | torch.Tensor, mean: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Rows centred by ``mean`` (default: their own mean) and scaled to unit length, as float32."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    m = x.mean(0) if mean is None else torch.as_tensor(np.asarray(mean), dtype=torch.float32)
    x = x - m
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class Matches:
    """Pairs (query row, base row) whose perceptual hashes matched: their similarity, the hash bits apart (the
    closer of direct and mirrored) and whether the mirrored hash was the closer."""

    query: np.ndarray
    base: np.ndarray
    sims: np.ndarray
    bits: np.ndarray
    mirrored: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[Matches]) -> Matches:
        if not parts:
            e = np.zeros(0, np.int64)
            return cls(e, e, np.zeros(0, np.float32), e, np.zeros(0, bool))
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in cls.__dataclass_fields__))

    def where(self, keep: np.ndarray) -> Matches:
        return Matches(*(getattr(self, k)[keep] for k in self.__dataclass_fields__))


@dataclass
class Neighbours:
    """What :func:`search` found: every query's ``k`` most similar base rows (``sims``, ``index``, best first), and
    the pairs whose perceptual hashes matched (when hashes were given)."""

    sims: np.ndarray
    index: np.ndarray
    matches: Matches = field(default_factory=lambda: Matches.concat([]))


def _blocks(
    queries: torch.Tensor, base: torch.Tensor, same: bool, block_bytes: int, copies: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, similarities of a block of rows to every base row), the diagonal at -2 when ``same``; rows
    per block such that ``copies`` blocks fit in ``block_bytes``."""
    n, m = len(queries), len(base)
    rows = max(1, min(n, block_bytes // max(1, 4 * m * copies)))
    for start in range(0, n, rows):
        block = queries[start : start + rows] @ base.T
        if same:  # a row is its own best match: out of the running
            r = torch.arange(block.shape[0])
            block[r, r + start] = -2.0
        yield start, block


def search(
    queries: torch.Tensor,
    base: torch.Tensor,
    k: int,
    *,
    same: bool = False,
    hashes: tuple[Hashes, Hashes] | None = None,
    block_bytes: int = BLOCK_BYTES,
    exact_up_to: int | None = None,
) -> Neighbours:
    """The k nearest neighbours of normalised rows: exact (blocked matrix products, top-k per block of rows), or
    approximate past ``exact_up_to`` rows (default :data:`graft.features.ann.EXACT_UP_TO`; n x m past its
    square) when faiss is installed.

    ``same``: queries are ``base`` itself, and a row is not its own neighbour. ``hashes`` = (queries', base's):
    pairs within :data:`HASH_BITS` (directly or mirrored) and :data:`HASH_SIMILARITY` are collected as well
    (exhaustively either way), from the same blocks (the hashes are compared only where the similarity already
    passes)."""
    n, m = len(queries), len(base)
    k = max(0, min(k, m - 1 if same else m))
    sims, index = np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
    if n == 0 or m == 0:
        return Neighbours(sims, index)
    from graft.features import ann

    if ann.wanted(n, m, exact_up_to):
        with torch.inference_mode():
            if k:
                sims, index = ann.Index(base).search(queries, k, self_offset=0 if same else None)
            matches = _approximate_matches(queries, base, hashes, same) if hashes is not None else Matches.concat([])
        return Neighbours(sims, index, matches)
    parts = []
    with torch.inference_mode():
        for start, block in _blocks(queries, base, same, block_bytes, 2):
            if k:
                s, i = block.topk(k, dim=1)
                sims[start : start + len(block)], index[start : start + len(block)] = s.numpy(), i.numpy()
            if hashes is not None:
                parts.append(_hash_block(block, hashes, start))
    return Neighbours(sims, index, Matches.concat(parts))


def _hash_block(block: torch.Tensor, hashes: tuple[Hashes, Hashes], start: int) -> Matches:
    """The pairs of a block within :data:`HASH_SIMILARITY` whose hashes (direct or mirrored) are within
    :data:`HASH_BITS`: few pass the similarity, so the hashes are compared for those alone."""
    i, j = torch.nonzero(block >= HASH_SIMILARITY, as_tuple=True)
    return _matched(i.numpy() + start, j.numpy(), block[i, j].numpy(), hashes)


def _matched(query: np.ndarray, base: np.ndarray, sims: np.ndarray, hashes: tuple[Hashes, Hashes]) -> Matches:
    """Of the pairs (query row, base row, similarity), those whose hashes are within :data:`HASH_BITS`, directly
    or the query's mirrored (the closer counts)."""
    q, b = hashes
    direct = _popcount(q.direct[query] ^ b.direct[base])
    mirror = _popcount(q.mirrored[query] ^ b.direct[base])
    bits = np.minimum(direct, mirror)
    hit = bits <= HASH_BITS
    return Matches(query[hit], base[hit], sims[hit], bits[hit].astype(np.int64), (mirror < direct)[hit])


def _approximate_matches(
    queries: torch.Tensor, base: torch.Tensor, hashes: tuple[Hashes, Hashes], same: bool
) -> Matches:
    """The hash matches :func:`search` finds, without the product: a Hamming range search first (exhaustive)."""
    from graft.features import ann

    q, b = hashes
    codes = (q.direct, q.mirrored, b.direct)
    return _matched(*ann.hash_pairs(queries, base, codes, HASH_BITS, HASH_SIMILARITY, same), hashes)


@dataclass(frozen=True)
class Pair:
    """Two images (indices) that look like copies: cosine similarity, hash bits apart (None when the hashes did
    not match) and whether the hashes matched mirrored."""

    a: int
    b: int
    similarity: float
    bits: int | None = None
    mirrored: bool = False


@dataclass
class Pairs:
    """Pairs as arrays (``a < b`` for pairs of one set): similarity, hash bits apart (-1: the hashes did not
    match) and whether the hashes matched mirrored; most similar first."""

    a: np.ndarray
    b: np.ndarray
    sims: np.ndarray
    bits: np.ndarray
    mirrored: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def where(self, keep: np.ndarray) -> Pairs:
        return Pairs(*(getattr(self, k)[keep] for k in self.__dataclass_fields__))

    def pair(self, i: int) -> Pair:
        bits = int(self.bits[i])
        return Pair(
            int(self.a[i]), int(self.b[i]), float(self.sims[i]), bits if bits >= 0 else None, bool(self.mirrored[i])
        )


def _first(key: np.ndarray, *order: np.ndarray) -> np.ndarray:
    """Indices of the first row of each ``key`` when rows are sorted by ``order`` (last = primary) within it."""
    idx = np.lexsort((*order, key)) if order else np.argsort(key, kind="stable")
    k = key[idx]
    return idx[np.r_[True, k[1:] != k[:-1]]] if len(k) else idx


def _proposed(top2: np.ndarray) -> np.ndarray:
    """Which rows' nearest neighbour (``top2``: each row's two highest similarities, best first) is proposed."""
    first = top2[:, 0]
    second = top2[:, 1] if top2.shape[1] > 1 else np.full(len(top2), -1.0, np.float32)
    return (first >= CANDIDATE) | ((first >= STANDOUT_FLOOR) & (first - second >= STANDOUT_MARGIN))


def _best_matches(m: Matches, *by: np.ndarray) -> Matches:
    """Of the hash matches, each row's closest (fewest bits, then most similar) for every row array in ``by``.
    One per image keeps the proposals linear in the images: a photo with 40 copies has 780 matching pairs, and
    the copies are proposed as well by their own closest matches."""
    keep = np.unique(np.concatenate([_first(rows, -m.sims, m.bits) for rows in by])) if len(m.query) else []
    return m.where(np.asarray(keep, np.int64))


def near_pairs(found: Neighbours) -> Pairs:
    """Proposed copies (a < b) of a ``same`` search: each row's nearest neighbour when :func:`_proposed`, and
    each row's closest hash match (of a pair found both ways, the closer hashes)."""
    n = np.int64(max(len(found.sims), 1))
    m = _best_matches(found.matches, found.matches.query)
    a, b = np.minimum(m.query, m.base), np.maximum(m.query, m.base)
    hashed = _first(a * n + b, np.arange(len(a)), m.bits)
    a, b = a[hashed], b[hashed]
    i = np.nonzero(_proposed(found.sims))[0] if found.sims.shape[1] else np.zeros(0, np.int64)
    j = np.zeros(len(i), np.int64)
    ka, kb = np.minimum(i, found.index[i, j]), np.maximum(i, found.index[i, j])
    plain = _first(ka * n + kb)
    plain = plain[~np.isin(ka[plain] * n + kb[plain], a * n + b)]
    out = Pairs(
        np.concatenate([a, ka[plain]]),
        np.concatenate([b, kb[plain]]),
        np.concatenate([m.sims[hashed], found.sims[i, j][plain]]).astype(np.float32),
        np.concatenate([m.bits[hashed], np.full(len(plain), -1, np.int64)]),
        np.concatenate([m.mirrored[hashed], np.zeros(len(plain), bool)]),
    )
    return out.where(np.argsort(-out.sims, kind="stable"))


def _cross(
    val_sims: np.ndarray, val_index: np.ndarray, train_sims: np.ndarray, train_index: np.ndarray, m: Matches
) -> Pairs:
    """Proposed leaks, ``(a = val row, b = train row)``: each val row's nearest train row and each train row's
    nearest val row when :func:`_proposed`, and the closest hash match ``m`` (query = val, base = train) of
    each val row and each train row; each pair once (with its hash evidence when it has some), most similar
    first. ``*_sims``: each row's two highest similarities on the other side; ``*_index``: the highest's column."""
    m = _best_matches(m, m.query, m.base)
    v = np.nonzero(_proposed(val_sims))[0]
    t = np.nonzero(_proposed(train_sims))[0]
    val_sims, train_sims = val_sims[:, 0], train_sims[:, 0]
    none = np.full(len(v) + len(t), -1, np.int64)
    pairs = Pairs(
        np.concatenate([m.query, v, train_index[t]]),
        np.concatenate([m.base, val_index[v], t]),
        np.concatenate([m.sims, val_sims[v], train_sims[t]]).astype(np.float32),
        np.concatenate([m.bits, none]),
        np.concatenate([m.mirrored, np.zeros(len(none), bool)]),
    )
    n = np.int64(max(len(train_sims), 1))
    pairs = pairs.where(np.sort(_first(pairs.a * n + pairs.b, np.arange(len(pairs)))))
    return pairs.where(np.argsort(-pairs.sims, kind="stable"))


def leak_candidates(
    train: np.ndarray | torch.Tensor,
    val: np.ndarray | torch.Tensor,
    *,
    hashes: tuple[Hashes, Hashes] | None = None,
    exact_up_to: int | None = None,
) -> Pairs:
    """Pairs ``(a = val index, b = train index)`` that may be copies, proposed as :func:`_cross` says; what
    ``graft train`` checks for its leakage warning (:mod:`graft.features.copies` decides). Raw features; both
    splits are centred by their common mean. ``hashes`` = (val's, train's), when the scan measured them."""
    t = torch.as_tensor(np.asarray(train), dtype=torch.float32)
    v = torch.as_tensor(np.asarray(val), dtype=torch.float32)
    if len(t) == 0 or len(v) == 0:
        return near_pairs(Neighbours(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64)))
    mean = torch.cat([t, v]).mean(0)
    nv, nt = normalise(v, mean), normalise(t, mean)
    to_train = search(nv, nt, 2, hashes=hashes, exact_up_to=exact_up_to)
    to_val = search(nt, nv, 2, exact_up_to=exact_up_to)
    return _cross(to_train.sims, to_train.index[:, 0], to_val.sims, to_val.index[:, 0], to_train.matches)


def _top2(block: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each row's two highest values (the second -2 when there is one column) and the highest's column."""
    s, i = block.topk(min(2, block.shape[1]), dim=1)
    two = np.full((len(block), 2), -2.0, np.float32)
    two[:, : s.shape[1]] = s.numpy()
    return two, i[:, 0].numpy()


@dataclass
class Survey:
    """Everything ``graft doctor`` asks of the features, from one blocked product: the centred, normalised rows
    ``x``; their kNN and hash matches (``found``, a ``same`` search); each row's most similar *uncentred*
    cosines (``raw_sims``, outliers); and the proposed leaks (``leaks``: val row, train row; :func:`_cross`)."""

    x: torch.Tensor
    found: Neighbours
    raw_sims: np.ndarray
    leaks: Pairs


def survey(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    hashes: Hashes,
    n_train: int,
    raw_k: int = 5,
    block_bytes: int = BLOCK_BYTES,
    exact_up_to: int | None = None,
) -> Survey:
    """One pass where four searches were: the kNN of the centred rows with hash matches, the kNN of the
    uncentred rows, and val rows' nearest train row and train rows' nearest val row (rows ``[0, n_train)`` are
    train), as :func:`search` and :func:`leak_candidates` find them.

    The uncentred cosine follows from the centred one: with ``c = x - mean``,
    ``x_i.x_j = |c_i||c_j| cos_ij + c_i.mean + c_j.mean + mean.mean``, elementwise work on each block beside its
    ``d``-long dot products. Leakage is a column range of the same blocks (train and val share the mean).
    Past ``exact_up_to`` rows (as :func:`search`) the searches are approximate: :func:`graft.features.ann.survey`."""
    from graft.features import ann

    raw = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    n = len(raw)
    mean = raw.mean(0)
    centred = raw - mean
    cnorm = centred.norm(dim=1).clamp_min(1e-12)
    x = centred / cnorm[:, None]
    if ann.wanted(n, n, exact_up_to):
        del centred
        k, raw_k = max(0, min(k, n - 1)), max(0, min(raw_k, n - 1))
        sims, index, raw_sims, cross = ann.survey(x, raw, k, raw_k, n_train)
        found = Neighbours(sims, index, _approximate_matches(x, x, (hashes, hashes), True))
        return _surveyed(x, found, raw_sims, n_train, cross)
    inv = 1 / raw.norm(dim=1).clamp_min(1e-12)
    scale = cnorm * inv  # uncentred cos_ij = scale_i scale_j cos_ij + shift_i inv_j + inv_i shift_j
    shift = (centred @ mean + 0.5 * (mean @ mean)) * inv
    k, raw_k = max(0, min(k, n - 1)), max(0, min(raw_k, n - 1))
    sims, index = np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
    raw_sims = np.zeros((n, raw_k), np.float32)
    val_sims, val_index = np.full((n - n_train, 2), -2.0, np.float32), np.zeros(n - n_train, np.int64)
    train_sims, train_index = np.full((n_train, 2), -2.0, np.float32), np.zeros(n_train, np.int64)
    parts = []
    with torch.inference_mode():
        for start, block in _blocks(x, x, True, block_bytes, 3):
            rows = slice(start, start + len(block))
            if k:
                s, i = block.topk(k, dim=1)
                sims[rows], index[rows] = s.numpy(), i.numpy()
            parts.append(_hash_block(block, (hashes, hashes), start))
            if n_train and rows.stop > n_train:  # val rows: their two nearest train rows
                first = max(start, n_train)
                v = slice(first - n_train, rows.stop - n_train)
                val_sims[v], val_index[v] = _top2(block[first - start :, :n_train])
            if n_train < n and start < n_train:  # train rows: their two nearest val rows
                last = min(rows.stop, n_train)
                train_sims[start:last], train_index[start:last] = _top2(block[: last - start, n_train:])
            if raw_k:
                u = block * scale[None, :]
                u.mul_(scale[rows, None]).addr_(shift[rows], inv).addr_(inv[rows], shift)
                r = torch.arange(len(block))
                u[r, r + start] = -2.0
                raw_sims[rows] = u.topk(raw_k, dim=1).values.numpy()
    found = Neighbours(sims, index, Matches.concat(parts))
    return _surveyed(x, found, raw_sims, n_train, (val_sims, val_index, train_sims, train_index))


def _surveyed(
    x: torch.Tensor, found: Neighbours, raw_sims: np.ndarray, n_train: int, cross: tuple[np.ndarray, ...]
) -> Survey:
    """The survey of these searches: the leaks are the val x train hash matches and the ``cross`` nearest rows
    (val rows' two highest similarities to train, the highest's column, and train rows' to val)."""
    m = found.matches
    leak = m.where((m.query >= n_train) & (m.base < n_train))
    leak.query = leak.query - n_train
    return Survey(x, found, raw_sims, _cross(*cross, leak))
