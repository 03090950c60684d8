"""The int8 program's thread policy: how many cores it uses and how a batch is split over them (behaviour only;
the compiled program itself is tested in tests/int8)."""

from __future__ import annotations

import os

import pytest
import torch

from graft.inference.int8_classifier import per_core_chunks, usable_cores


@pytest.mark.parametrize(
    ("batch", "cores", "sizes"), [(32, 2, [16, 16]), (33, 2, [17, 16]), (1, 2, [1]), (3, 4, [1, 1, 1]), (5, 1, [5])]
)
def test_a_batch_is_split_into_one_chunk_per_core(batch: int, cores: int, sizes: list[int]) -> None:
    x = torch.arange(batch * 2.0).reshape(batch, 2)
    chunks = per_core_chunks(x, cores)
    assert [len(c) for c in chunks] == sizes
    assert torch.equal(torch.cat(chunks), x)  # in order, nothing lost


def test_usable_cores_follow_the_affinity_and_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert usable_cores() == 4
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a caller that lowered torch's threads is obeyed
    assert usable_cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert usable_cores() == 1
