"""gpt_ds.sampler: the run's training stream (the global batch a function of (seed, step), sliced per rank
and micro-step, the same windows for any world size; random and epoch sampling); the fixed val set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt_ds.errors import UserError
from gpt_ds.sampler import TokenWindows, TrainStream, step_seed, val_batches


@pytest.fixture
def windows(tmp_path) -> TokenWindows:
    from gpt_ds.data import read_shard, write_shard

    shards = []
    for i, size in enumerate((300, 17, 500)):  # a middle shard shorter than a window is skipped
        path = write_shard(tmp_path / f"train_{i:06d}.bin", np.arange(size, dtype=np.uint16) + 1000 * i)
        shards.append(read_shard(path))
    return TokenWindows(shards, block_size=16)


def test_batches_are_a_function_of_seed_and_step_sliced_per_rank_and_micro_step(windows):
    stream = TrainStream(windows, global_batch=16, seed=1)
    batch = stream.micro_batch(5, 8)
    assert torch.equal(batch[0], TrainStream(windows, 16, seed=1).micro_batch(5, 8)[0])
    for other in (TrainStream(windows, 16, seed=2).micro_batch(5, 8), stream.micro_batch(6, 8),
                  stream.micro_batch(5, 8, rank=1, world_size=2), stream.micro_batch(5, 8, micro_step=1)):
        assert not torch.equal(batch[0], other[0])
    with pytest.raises(ValueError, match="past the global batch"):
        stream.micro_batch(5, 8, rank=1, world_size=2, micro_step=1)


@pytest.mark.parametrize("sampling", ["random", "epoch"])
def test_the_windows_of_a_step_are_the_same_for_1_2_and_4_ranks(windows, sampling):
    """With the global batch fixed, world size x accumulation only regroups the step's windows."""
    stream = TrainStream(windows, global_batch=16, seed=3, sampling=sampling)
    for step in range(12):
        layouts = []
        for world, accumulation in ((1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 4)):
            micro = 16 // (world * accumulation)
            rows = [stream.micro_batch(step, micro, rank=r, world_size=world, micro_step=m)[0]
                    for m in range(accumulation) for r in range(world)]
            layouts.append(torch.cat(rows))
        assert all(torch.equal(layouts[0], other) for other in layouts[1:]), step


def test_epoch_sampling_reads_every_window_once_per_epoch_in_a_new_order(windows):
    stream = TrainStream(windows, global_batch=5, seed=0, sampling="epoch")
    n = stream.epoch_windows
    assert n == (300 - 1) // 16 + (17 - 1) // 16 + (500 - 1) // 16  # whole windows of 17 tokens, stride 16
    steps = 3 * n // 5 + 1
    drawn = np.concatenate([stream.starts(step) for step in range(steps)])
    first, second = drawn[:n], drawn[n : 2 * n]
    assert len(set(first.tolist())) == n and set(first.tolist()) == set(second.tolist())
    assert not np.array_equal(first, second)  # each epoch its own permutation
    x, y = windows.batch(first)
    targets = torch.sort(y.flatten()).values
    assert len(torch.unique(targets)) == len(targets)  # no token is a target twice in an epoch
    assert stream.position(steps)["epoch"] == pytest.approx(steps * 5 / n)
    assert stream.position(2) == {"windows_seen": 10, "tokens_seen": 160, "epoch": 10 / n}


def test_windows_are_contiguous_targets_shifted_and_within_one_shard(windows):
    x, y = TrainStream(windows, 64, seed=0).micro_batch(0, 64)
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
