"""Approximate nearest neighbours (faiss k-means lists), for :mod:`graft.features.similarity` past :data:`EXACT_UP_TO`.

The exact search is an n x m product: quadratic (:data:`EXACT_UP_TO` gives the figures). Past it the k nearest
rows come from an inverted file of the normalised rows: lists of :data:`LIST_ROWS` rows from spherical k-means
(faiss), each query's :data:`PROBES` nearest lists scanned exhaustively by inner product (a matrix product per
list: faiss's own IVF scan computes one query at a time). An inverted file rather than a graph (HNSW): the leak
searches ask for the nearest row *of the other split* only, which an inverted file answers exactly within the
scanned lists, where a graph walk filtered to a fifth of its nodes loses recall; and duplicates, which graphs
handle badly, are common here.

Hash matches stay exhaustive: pairs within :data:`~graft.features.similarity.HASH_BITS` of each other are found
by a brute-force Hamming range search over the 64-bit hashes (faiss ``IndexBinaryFlat``: one xor and popcount a
pair), and only those pairs get their similarity; the same pairs the blocked product finds, without the product.

faiss (the ``graft[scale]`` extra) is imported lazily; without it the search stays exact, with one warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

#: Rows (query rows x base rows = this squared) up to which the exact blocked product is used. Measured on this
#: project's 2-core AMD EPYC with mobilenet_v2 features of 16k bench_scale images (benchmarks/bench_ann.py, load
#: ~5.5 from other jobs): the doctor's survey 12.9 s exact, 29.2 s approximate. The exact product grows with n^2,
#: the approximate search with n (fixed list size and probes): they cross near 36k rows.
EXACT_UP_TO = 40_000
#: Rows per inverted list: a list's product with its queries runs at ~20 GFLOPS with 127 rows, 55 with 500 and 78
#: with 1,000 on this machine (a sqrt(n) rule made 16k rows 126 lists, slower than the exact product).
LIST_ROWS = 1000
#: k-means of the lists: rows sampled per list and iterations.
TRAIN_PER_LIST, TRAIN_ITERATIONS = 64, 10
#: Lists a query scans, its nearest by centroid: on 16k bench_scale images (16 lists) recall of the exact 10
#: nearest 0.9985, of the doctor's proposed pairs 0.9996 (benchmarks/bench_ann.py; NOTES.md, "Doctor").
PROBES = 8
#: Pairs whose similarity is computed at once (two rows of features each: 256 MB at 1280 features).
PAIR_BLOCK = 1 << 15
#: Hash range queries per call (their results are filtered before the next block: memory bounded).
HASH_BLOCK = 8192

_warned = [False]


def faiss_module() -> Any | None:
    """faiss, threads set to torch's; None (and one warning per process) when it is not installed."""
    try:
        import faiss
    except ImportError:
        if not _warned[0]:
            _warned[0] = True
            warnings.warn(
                "exact similarity search on many images is slow: pip install 'graft[scale]' makes it faster",
                stacklevel=3,
            )
        return None
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


def wanted(n: int, m: int, exact_up_to: int | None) -> bool:
    """Whether an n x m search should be approximate (and faiss is there)."""
    limit = EXACT_UP_TO if exact_up_to is None else exact_up_to
    return n * m > limit * limit and faiss_module() is not None


class Index:
    """An inverted file over the rows of ``base`` (normalised, float32): k-means lists (faiss), scanned with one
    matrix product per list (torch; faiss's own IVF scan computes one query at a time, ~8x slower here)."""

    def __init__(self, base: torch.Tensor | np.ndarray, probes: int = PROBES) -> None:
        faiss = faiss_module()
        assert faiss is not None
        self.base = torch.as_tensor(np.asarray(base, dtype=np.float32))
        n, d = self.base.shape
        lists = max(1, n // LIST_ROWS)
        # k-means on all rows would cost as much as the exact product: a seeded sample trains the lists
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, TRAIN_PER_LIST * lists), replace=False))
        kmeans = faiss.Kmeans(d, lists, niter=TRAIN_ITERATIONS, seed=0, spherical=True)
        kmeans.train(np.ascontiguousarray(self.base[torch.from_numpy(sample)].numpy()))
        self.centroids = torch.from_numpy(kmeans.centroids)
        # rows sorted by list: a list is a slice (no gather per query block)
        self.order = torch.argsort(self._nearest_lists(self.base, 1)[:, 0], stable=True)
        self.base = self.base[self.order]
        counts = torch.bincount(self._nearest_lists(self.base, 1)[:, 0], minlength=lists)
        self.starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).tolist()
        self.probes = min(probes, lists)

    def _nearest_lists(self, rows: torch.Tensor, p: int) -> torch.Tensor:
        out = torch.empty(len(rows), p, dtype=torch.int64)
        for s in range(0, len(rows), 8192):
            out[s : s + 8192] = (rows[s : s + 8192] @ self.centroids.T).topk(p, dim=1).indices
        return out

    def search(
        self, queries: torch.Tensor | np.ndarray, k: int, *, rows: range | None = None, self_offset: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` most similar base rows (``sims``, ``index``, best first) in its :data:`PROBES`
        nearest lists, among ``rows`` only when given (indices stay the base's). ``self_offset``: query ``i`` is
        base row ``self_offset + i``, not its own neighbour. A row with fewer than ``k`` found has similarity -2
        at index 0 in the rest (as the exact product's diagonal)."""
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
        best = torch.full((len(q), k), -2.0)
        where = torch.zeros((len(q), k), dtype=torch.int64)
        probe = self._nearest_lists(q, self.probes)
        # queries grouped by the lists they probe: one sort instead of a scan of the table per list
        flat = probe.reshape(-1)
        by_list = torch.argsort(flat, stable=True) // self.probes
        bounds = torch.searchsorted(flat.sort().values, torch.arange(len(self.centroids) + 1)).tolist()
        ids = self.order
        with torch.inference_mode():
            for lst in range(len(self.centroids)):
                lo, hi = self.starts[lst], self.starts[lst + 1]
                asking = by_list[bounds[lst] : bounds[lst + 1]]
                if hi == lo or len(asking) == 0 or k == 0:
                    continue
                block = q[asking] @ self.base[lo:hi].T
                members = ids[lo:hi]
                if rows is not None:
                    block[:, (members < rows.start) | (members >= rows.stop)] = -2.0
                if self_offset is not None:
                    block[(members[None, :] - self_offset) == asking[:, None]] = -2.0
                s, i = block.topk(min(k, hi - lo), dim=1)
                merged_s = torch.cat([best[asking], s], 1)
                merged_i = torch.cat([where[asking], members[i]], 1)
                top = merged_s.topk(k, dim=1)
                best[asking], where[asking] = top.values, merged_i.gather(1, top.indices)
        where[best <= -2.0] = 0
        return best.numpy(), where.numpy()


def hash_pairs(
    queries: torch.Tensor,
    base: torch.Tensor,
    codes: tuple[np.ndarray, np.ndarray, np.ndarray],
    bits: int,
    floor: float,
    same: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, base rows, similarities) of every pair whose 64-bit hashes (``codes`` = queries' direct,
    queries' mirrored, base's direct, ``uint64``) are within ``bits``, directly or mirrored, and whose
    similarity is ``floor`` or more; sorted by query row then base row. ``same``: not a row with itself."""
    faiss = faiss_module()
    assert faiss is not None
    direct, mirrored, base_codes = codes
    m = len(base)
    index = faiss.IndexBinaryFlat(64)
    index.add(_packed(base_codes))
    out: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(queries), HASH_BLOCK):
        stop = min(start + HASH_BLOCK, len(queries))
        keys = []
        for q in (direct[start:stop], mirrored[start:stop]):
            lims, _, found = index.range_search(_packed(q), bits + 1)  # distances below the radius
            rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(lims).astype(np.int64))
            keys.append(rows * m + found)
        key = np.unique(np.concatenate(keys))
        i, j = key // m, key % m
        if same:
            i, j = i[i != j], j[i != j]
        sims = _pair_sims(queries, base, i, j)
        keep = sims >= floor
        out.append((i[keep], j[keep], sims[keep]))
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, sims = (np.concatenate(a) for a in zip(*out, strict=True))
    return i, j, sims


def _packed(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(codes, dtype=np.uint64).view(np.uint8).reshape(-1, 8)


def _pair_sims(queries: torch.Tensor, base: torch.Tensor, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Similarities of the pairs (``queries[i]``, ``base[j]``), in blocks of :data:`PAIR_BLOCK` pairs."""
    out = np.zeros(len(i), np.float32)
    for s in range(0, len(i), PAIR_BLOCK):
        a, b = torch.from_numpy(i[s : s + PAIR_BLOCK]), torch.from_numpy(j[s : s + PAIR_BLOCK])
        out[s : s + PAIR_BLOCK] = (queries[a] * base[b]).sum(1).numpy()
    return out


def survey(
    x: torch.Tensor, raw: torch.Tensor, k: int, raw_k: int, n_train: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """The neighbours :func:`graft.features.similarity.survey` asks for, approximately: of the centred,
    normalised rows ``x``, each row's ``k`` nearest others (sims, index); each row's ``raw_k`` highest uncentred
    cosines (of ``raw``, the features); and (val rows' two highest similarities to train rows, the highest's
    train row, train rows' two highest to val rows, the highest's val row counted from the first val row); rows
    ``[0, n_train)`` are train. One index for the centred rows (the leak searches are ID ranges of it), one for
    the uncentred, built one after the other (memory: one copy of the features at a time)."""
    n = len(x)
    with torch.inference_mode():
        index = Index(x)
        sims, nearest = index.search(x, k, self_offset=0) if k else _none(n, 0)
        both = 0 < n_train < n  # otherwise no leak search: as the exact product leaves them
        val = _two(index.search(x[n_train:], 2, rows=range(0, n_train))) if both else _two(_none(n - n_train))
        train = _two(index.search(x[:n_train], 2, rows=range(n_train, n)), n_train) if both else _two(_none(n_train))
        del index
        raw_sims = np.zeros((n, raw_k), np.float32)
        if raw_k:
            u = raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)
            raw_sims = Index(u).search(u, raw_k, self_offset=0)[0]
    return sims, nearest, raw_sims, (*val, *train)


def _none(n: int, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -2.0, np.float32), np.zeros((n, k), np.int64)


def _two(found: tuple[np.ndarray, np.ndarray], first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(the two highest similarities, the highest's index counted from row ``first``), as ``similarity._top2``
    gives them."""
    sims, index = found
    return sims, index[:, 0] - first
