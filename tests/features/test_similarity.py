"""The proposals of graft.features.similarity: what the copy check is asked to look at."""

from __future__ import annotations

import numpy as np
import torch

from graft.features import similarity as sim


def _unit(rows: list[list[float]]) -> torch.Tensor:
    x = torch.tensor(rows, dtype=torch.float32)
    return x / x.norm(dim=1, keepdim=True)


def test_leaks_are_proposed_from_both_sides() -> None:
    """A val image's nearest train image, and the train image whose nearest val image it is: in a fine-grained
    set a copy is often not the val image's nearest, but the val image is the copy's."""
    val = _unit([[1, 0, 0, 0], [0, 0, 0, 1]])
    train = _unit([[1, 0.2, 0, 0], [1, 0, 0.9, 0], [0, 1, 0, 0]])
    train = torch.cat([train, -(train.sum(0) + val.sum(0))[None]])  # the rows' mean is 0: centring changes nothing
    found = sim.leak_candidates(train, val)
    pairs = set(zip(found.a.tolist(), found.b.tolist(), strict=True))
    cos = (val @ sim.normalise(train, torch.zeros(4)).T).numpy()
    assert cos[0].argmax() == 0 and cos[0, 1] >= sim.CANDIDATE  # val 0's nearest is train 0, train 1 second
    assert cos[:, 1].argmax() == 0  # ...and train 1's nearest val image is val 0
    assert pairs == {(0, 0), (0, 1)}
    assert list(found.sims) == sorted(found.sims, reverse=True)


def test_a_nearest_neighbour_that_stands_out_is_proposed_lower() -> None:
    """From CANDIDATE up always; below it, down to STANDOUT_FLOOR, when it is STANDOUT_MARGIN above the next."""
    top = np.array([[0.55, 0.54], [0.4, 0.2], [0.4, 0.3], [0.25, -0.5], [0.5, -2.0]], np.float32)
    index = np.array([[1, 2], [0, 2], [0, 1], [0, 1], [0, 1]])
    pairs = sim.near_pairs(sim.Neighbours(top, index))
    assert sorted(zip(pairs.a.tolist(), pairs.b.tolist(), strict=True)) == [(0, 1), (0, 4)]
    top = np.array([[0.4, 0.2], [0.4, 0.3], [0.2, 0.1]], np.float32)
    stands_out = sim.near_pairs(sim.Neighbours(top, np.array([[2, 1], [2, 0], [0, 1]])))
    assert list(zip(stands_out.a, stands_out.b, strict=True)) == [(0, 2)]  # 0.2 above the next, not 0.1


def test_one_closest_hash_match_per_image() -> None:
    """Ten copies of one photo match each other's hashes (45 pairs); each image proposes its closest only."""
    rng = np.random.default_rng(0)
    copies = rng.normal(size=16) + 0.1 * rng.normal(size=(10, 16))
    x = torch.tensor(np.concatenate([copies, rng.normal(size=(20, 16))]), dtype=torch.float32)
    x = x / x.norm(dim=1, keepdim=True)
    codes = [f"{0xF0F0F0F0F0F0F0F0 ^ (1 << i):016x}" for i in range(10)]
    codes += [f"{int(v):016x}" for v in rng.integers(1 << 62, size=20)]
    hashes = sim.Hashes.of(codes, codes)
    found = sim.search(x, x, 3, same=True, hashes=(hashes, hashes))
    assert len(found.matches.query) == 90  # both ways, every pair of the ten (2 bits apart), nothing else
    no_neighbours = sim.Neighbours(np.full_like(found.sims, -2.0), found.index, found.matches)
    pairs = sim.near_pairs(no_neighbours)  # the hash proposals alone
    assert len(pairs) <= 10 and set(pairs.a) | set(pairs.b) == set(range(10))
    assert (pairs.bits == 2).all() and (pairs.a < pairs.b).all()
