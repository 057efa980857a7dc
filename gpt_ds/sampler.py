"""Deterministic batches from memmapped shards: training windows and the fixed validation set.

A training batch is a pure function of (seed, step, rank, micro_step): no data loader, no iterator
state. A resumed run therefore sees exactly the batches the uninterrupted run would have seen, and
the checkpoint's "data position" is simply the step. Each rank draws from its own random stream,
so ranks read different data.

Windows are `block_size + 1` tokens at uniformly random offsets over all shards (inputs are the
first block_size tokens, targets the last block_size), like nanoGPT and llm.c's random loader.
Validation reads a fixed token budget: windows spread evenly over the whole val split, dealt
out between ranks, identical at every evaluation and (all ranks together) for any world size.
"""

from __future__ import annotations

import numpy as np
import torch

from gpt_ds.errors import UserError


class TokenWindows:
    """Windows of `block_size + 1` tokens over a list of shards (np.memmap of uint16)."""

    def __init__(self, shards: list[np.ndarray], block_size: int, name: str = "split") -> None:
        self.shards = [s for s in shards if len(s) > block_size]
        self.block_size = block_size
        # Window start positions available in each shard, and their running total to pick a shard
        # with probability proportional to its size.
        counts = np.array([len(s) - block_size for s in self.shards], dtype=np.int64)
        if counts.sum() <= 0:
            longest = max((len(s) for s in shards), default=0)
            raise UserError(
                f"the {name} split has no shard longer than the training sequence + 1 = {block_size + 1} tokens "
                f"(longest: {longest}); lower --seq-len (it defaults to the model's context, --block-size) "
                "or prepare more data")
        self.cumulative = np.cumsum(counts)
        self._shard_base = self.cumulative - counts  # first global start position of each shard
        self._span = np.arange(block_size + 1, dtype=np.int64)

    @property
    def num_windows(self) -> int:
        return int(self.cumulative[-1])

    def window(self, index: int) -> np.ndarray:
        """The window starting at global start position `index` (0 <= index < num_windows)."""
        shard = int(np.searchsorted(self.cumulative, index, side="right"))
        offset = index - (int(self.cumulative[shard - 1]) if shard else 0)
        return self.shards[shard][offset : offset + self.block_size + 1]

    def batch(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (len(starts), block_size) int64 for the given window starts: the windows
        `window(start)` gives, gathered with one fancy index per shard touched (not a loop over rows)."""
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        if len(starts) and not (starts.min() >= 0 and starts.max() < self.num_windows):
            raise IndexError(f"window starts must lie in [0, {self.num_windows}), got {starts.min()}..{starts.max()}")
        shard_of = np.searchsorted(self.cumulative, starts, side="right")
        index = (starts - self._shard_base[shard_of])[:, None] + self._span  # (rows, block_size + 1)
        rows = np.empty(index.shape, dtype=np.int64)
        for shard in np.unique(shard_of):
            mine = shard_of == shard
            rows[mine] = self.shards[shard][index[mine]]
        tensor = torch.from_numpy(rows)
        return tensor[:, :-1].contiguous(), tensor[:, 1:].contiguous()


def train_batch(windows: TokenWindows, batch_size: int, *, seed: int, step: int, rank: int,
                micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-batch that `rank` trains on at (step, micro_step): the same on every call."""
    # SeedSequence mixes the four integers into independent streams (no collisions between e.g.
    # (step=1, rank=0) and (step=0, rank=1), as a naive seed + step + rank would have).
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step, rank, micro_step])))
    starts = rng.integers(0, windows.num_windows, size=batch_size)
    return windows.batch(starts)


def val_batches(windows: TokenWindows, token_budget: int, batch_size: int, *, rank: int,
                world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of the validation set, in micro-batches: `token_budget` tokens (all ranks
    together) read as non-overlapping windows spread evenly over the whole split, so a split of many
    documents is sampled across all of them rather than in its first few. The windows are the same at
    every evaluation and, all ranks together, for any number of ranks (rank r reads every world_size-th)."""
    starts = val_starts(windows, token_budget)
    mine = starts[rank::world_size]
    return [windows.batch(mine[i : i + batch_size]) for i in range(0, len(mine), batch_size)]


def val_starts(windows: TokenWindows, token_budget: int) -> np.ndarray:
    """The start positions of the validation windows: budget // block_size of them (at most as many as fit
    side by side), at equal spacing from the split's first position to its end."""
    T = windows.block_size
    count = max(1, min(token_budget // T, windows.num_windows // T))
    # spacing num_windows / count >= T: the windows never overlap
    return np.arange(count, dtype=np.int64) * windows.num_windows // count


def step_seed(seed: int, step: int, rank: int) -> int:
    """A torch seed for (seed, step, rank): the loop reseeds torch at every step, so dropout and any
    other randomness are also functions of the step, and a resume needs no saved RNG state."""
    return int(np.random.SeedSequence([seed, step, rank, 0x5EED]).generate_state(1, dtype=np.uint64)[0] >> 1)
