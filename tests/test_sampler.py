"""gpt_ds.sampler: batches as a pure function of (seed, step, rank, micro-step); the fixed val set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt_ds.errors import UserError
from gpt_ds.sampler import TokenWindows, step_seed, train_batch, val_batches


@pytest.fixture
def windows(tmp_path) -> TokenWindows:
    from gpt_ds.data import read_shard, write_shard

    shards = []
    for i, size in enumerate((300, 17, 500)):  # a middle shard shorter than a window is skipped
        path = write_shard(tmp_path / f"train_{i:06d}.bin", np.arange(size, dtype=np.uint16) + 1000 * i)
        shards.append(read_shard(path))
    return TokenWindows(shards, block_size=16)


def test_batches_are_a_function_of_seed_step_rank_microstep(windows):
    batch = train_batch(windows, 8, seed=1, step=5, rank=0, micro_step=0)
    assert torch.equal(batch[0], train_batch(windows, 8, seed=1, step=5, rank=0, micro_step=0)[0])
    others = [dict(seed=2, step=5, rank=0, micro_step=0), dict(seed=1, step=6, rank=0, micro_step=0),
              dict(seed=1, step=5, rank=1, micro_step=0), dict(seed=1, step=5, rank=0, micro_step=1)]
    for key in others:
        assert not torch.equal(batch[0], train_batch(windows, 8, **key)[0]), key


def test_windows_are_contiguous_targets_shifted_and_within_one_shard(windows):
    x, y = train_batch(windows, 64, seed=0, step=0, rank=0, micro_step=0)
    assert x.shape == y.shape == (64, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # tokens of shard i are 1000*i + position: a window never straddles two shards
    assert torch.all(y - x == 1)
    starts = {int(v) // 1000 for v in x[:, 0]}
    assert starts <= {0, 2}  # the 17-token shard is too short for a 17-token window and is never read


def test_val_set_is_fixed_disjoint_between_ranks_and_budgeted(windows):
    one = val_batches(windows, token_budget=160, batch_size=4, rank=0, world_size=1)
    assert sum(len(x) for x, _ in one) == 10
    assert torch.equal(torch.cat([x for x, _ in one]), torch.cat([x for x, _ in val_batches(windows, 160, 4, rank=0, world_size=1)]))
    ranks = [torch.cat([x for x, _ in val_batches(windows, 160, 4, rank=r, world_size=2)]) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert set(ranks[0][:, 0].tolist()).isdisjoint(ranks[1][:, 0].tolist())
    together = sorted(int(v) for r in ranks for v in r[:, 0])
    assert together == sorted(int(v) for v in torch.cat([x for x, _ in one])[:, 0])


def test_too_short_split_is_a_user_error():
    with pytest.raises(UserError, match="--block-size"):
        TokenWindows([np.arange(10, dtype=np.uint16)], block_size=16, name="val")


def test_step_seed_differs_per_step_and_rank():
    seeds = {step_seed(1, step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


def test_batch_gathers_the_same_windows_as_window_row_by_row(windows):
    n = windows.num_windows
    seams = np.array([0, 1, n - 1, int(windows.cumulative[0]) - 1, int(windows.cumulative[0]), 7, 7])
    starts = np.concatenate([seams, np.random.default_rng(0).integers(0, n, size=200)])
    x, y = windows.batch(starts)
    rows = torch.from_numpy(np.stack([windows.window(int(i)) for i in starts]).astype(np.int64))
    assert x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
    torch.testing.assert_close(x, rows[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(y, rows[:, 1:], rtol=0, atol=0)
    assert windows.batch(np.array([], dtype=np.int64))[0].shape == (0, 16)
    with pytest.raises(IndexError):
        windows.batch(np.array([n]))
