"""gpt_ds.sampler.val_batches, as the Validator reads it: a fixed budget of windows spread over the
whole val split (not its first documents), the same at every evaluation and for any world size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt_ds.sampler import TokenWindows, val_batches, val_starts

T = 16


@pytest.fixture
def split(tmp_path) -> TokenWindows:
    """A val split of three shards (tokens are their own positions: 0..N-1 across the shards)."""
    from gpt_ds.data import read_shard, write_shard

    shards, offset = [], 0
    for i, size in enumerate((4000, 2500, 3500)):
        path = write_shard(tmp_path / f"val_{i:06d}.bin", np.arange(offset, offset + size, dtype=np.uint16))
        shards.append(read_shard(path))
        offset += size
    return TokenWindows(shards, block_size=T, name="val")


def window_firsts(windows: TokenWindows, budget: int, world_size: int, batch: int = 3) -> list[list[int]]:
    """Each rank's windows, named by their first token."""
    return [[int(v) for x, _ in val_batches(windows, budget, batch, rank=r, world_size=world_size) for v in x[:, 0]]
            for r in range(world_size)]


def test_the_windows_span_the_whole_split(split):
    firsts = sorted(window_firsts(split, 40 * T, 1)[0])
    assert len(firsts) == 40 and len(set(firsts)) == 40
    total = 10_000
    assert firsts[0] < total / 4 and firsts[-1] >= 3 * total / 4  # the first and the last quarter are read
    assert all(b - a >= T for a, b in zip(firsts, firsts[1:]))  # non-overlapping
    for lo in range(0, total, 2500):  # every quarter holds about a quarter of them
        assert 8 <= sum(lo <= f < lo + 2500 for f in firsts) <= 12, (lo, firsts)


def test_the_windows_are_the_same_at_every_evaluation(split):
    first = val_batches(split, 40 * T, 4, rank=1, world_size=2)
    again = val_batches(split, 40 * T, 4, rank=1, world_size=2)
    assert len(first) == len(again)
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("budget_windows", [40, 7, 1])
def test_all_ranks_together_read_the_same_windows_for_1_2_4_ranks(split, budget_windows):
    sets = {}
    for world_size in (1, 2, 4):
        per_rank = window_firsts(split, budget_windows * T, world_size)
        together = [f for rank in per_rank for f in rank]
        assert len(together) == len(set(together))  # disjoint between ranks
        sets[world_size] = sorted(together)
    assert sets[1] == sets[2] == sets[4] and len(sets[1]) == budget_windows


def test_the_budget_is_capped_by_what_fits(split):
    # 10_000 tokens hold 10_000 - 3 * 16 window starts, 622 side by side
    assert len(val_starts(split, 10**9)) == split.num_windows // T
    assert len(val_starts(split, 1)) == 1  # below one window: still one
