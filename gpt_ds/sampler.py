"""Deterministic batches from memmapped shards: the run's training stream and the fixed validation set.

The training data belongs to the run, not to its ranks: the global batch of step s (train_batch_size
windows) is a pure function of (seed, step), and rank r of W takes its slice of it, micro-batch by
micro-batch (micro-step m of rank r reads rows (m * W + r) * micro_batch onwards). No data loader, no
iterator state: a resumed run sees exactly the batches the uninterrupted run would have seen, the
checkpoint's "data position" is simply the step, and with the global batch fixed a change of world
size changes the gradient accumulation, not the samples (2 ranks x accumulation 1 and 1 rank x
accumulation 2 train on the same windows at every step).

A window is `block_size + 1` tokens (inputs the first block_size, targets the last block_size). Two
ways to choose them (`TrainStream.sampling`): "random", windows at uniformly random offsets over all
shards, drawn anew for every step (nanoGPT's and llm.c's random loader); "epoch", the shards cut into
non-overlapping windows (each token a target once) taken in a seeded permutation, a new one each
epoch, without replacement (llm.c's and modded-nanogpt's sequential loaders, shuffled).
Validation reads a fixed token budget: windows spread evenly over the whole val split, dealt
out between ranks, identical at every evaluation and (all ranks together) for any world size.

A chat folder's windows (`ChatWindows`) are conversations: each window starts at a conversation's start and
holds that conversation alone, padded after its end, with the targets that its loss mask leaves out set to
-100. Padding rather than packing keeps attention inside one conversation with the plain causal kernel (flash
on a GPU; a block-diagonal mask would leave it), as nanochat's SFT does. A longer conversation is cut at the
window. The fine-tune's loss divides by the global batch's trained tokens (`TrainStream.trained_tokens`),
which every rank computes from (seed, step) alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from gpt_ds.errors import UserError
from gpt_ds.loss import IGNORE_INDEX
from gpt_ds.tokenizer import EOT_TOKEN



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

    def epoch_starts(self) -> np.ndarray:
        """Non-overlapping window starts, shard after shard: position k * block_size of each shard, for
        every k with a whole window (block_size + 1 tokens) there."""
        return _epoch_starts(self)

    def val_starts(self, token_budget: int) -> np.ndarray:
        """The validation windows: budget // block_size of them (at most as many as fit side by side), at
        equal spacing from the split's first position to its end (spacing >= block_size: no overlap)."""
        T = self.block_size
        count = max(1, min(token_budget // T, self.num_windows // T))
        return np.arange(count, dtype=np.int64) * self.num_windows // count


class ChatWindows:
    """Conversations as windows of `block_size + 1` tokens (see the module's docstring): shards of tokens, each
    with its loss mask (gpt_ds.data.open_masks); a conversation starts at each <|endoftext|>."""

    def __init__(self, shards: list[np.ndarray], masks: list[np.ndarray], block_size: int, name: str = "split") -> None:
        self.shards, self.masks, self.block_size = shards, masks, block_size
        where, first, length = [], [], []
        for index, shard in enumerate(shards):
            starts = np.flatnonzero(np.asarray(shard) == EOT_TOKEN)
            where.append(np.full(len(starts), index, dtype=np.int64))
            first.append(starts)
            length.append(np.diff(np.append(starts, len(shard))))
        self._shard = np.concatenate(where) if where else np.zeros(0, np.int64)
        self._first = np.concatenate(first) if first else np.zeros(0, np.int64)
        self._length = np.minimum(np.concatenate(length), block_size + 1) if length else np.zeros(0, np.int64)
        if not len(self._first):
            raise UserError(f"the {name} split holds no conversation (none starts with <|endoftext|>); prepare it "
                            "with python -m data_prep --format chat")
        # each window's trained targets: its mask after the first token (targets are tokens 1..)
        self._trained = np.array([int(np.asarray(masks[s][f + 1 : f + n]).sum())
                                  for s, f, n in zip(self._shard.tolist(), self._first.tolist(), self._length.tolist())],
                                 dtype=np.int64)

    @property
    def num_windows(self) -> int:
        return len(self._first)

    def batch(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (len(starts), block_size) for conversations `starts` (their indices): padded with
        <|endoftext|> after the conversation, every target the mask leaves out IGNORE_INDEX."""
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        if len(starts) and not (starts.min() >= 0 and starts.max() < self.num_windows):
            raise IndexError(f"conversations must lie in [0, {self.num_windows}), got {starts.min()}..{starts.max()}")
        rows = np.full((len(starts), self.block_size + 1), EOT_TOKEN, dtype=np.int64)
        trained = np.zeros(rows.shape, dtype=bool)
        for row, index in enumerate(starts.tolist()):
            shard, first, n = int(self._shard[index]), int(self._first[index]), int(self._length[index])
            rows[row, :n] = self.shards[shard][first : first + n]
            trained[row, :n] = self.masks[shard][first : first + n]
        targets = np.where(trained[:, 1:], rows[:, 1:], IGNORE_INDEX)
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(targets)

    def trained_tokens(self, starts: np.ndarray) -> int:
        """The targets a loss counts in these windows."""
        return int(self._trained[np.asarray(starts, dtype=np.int64)].sum())

    def epoch_starts(self) -> np.ndarray:
        """Every conversation once."""
        return np.arange(self.num_windows, dtype=np.int64)

    def val_starts(self, token_budget: int) -> np.ndarray:
        """budget // block_size conversations (at most all), at equal spacing over the split."""
        count = max(1, min(token_budget // self.block_size, self.num_windows))
        return np.arange(count, dtype=np.int64) * self.num_windows // count


SAMPLINGS = ("random", "epoch")


@dataclass(frozen=True)
class TrainStream:
    """The run's training windows: the global batch of every step, a function of (seed, step) alone."""

    windows: TokenWindows | ChatWindows
    global_batch: int  # train_batch_size: windows per optimizer step, all ranks and micro-batches together
    seed: int
    sampling: str = "random"

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise UserError(f"--sampling {self.sampling!r}: choose one of {', '.join(SAMPLINGS)}")

    @property
    def epoch_windows(self) -> int:
        """Windows per epoch ("epoch" sampling): each shard's (len - 1) // block_size."""
        return len(self._epoch_starts())

    def starts(self, step: int) -> np.ndarray:
        """The global start positions (TokenWindows.window's numbering) of step `step`'s global batch."""
        if self.sampling == "random":
            # SeedSequence mixes the integers into independent streams (no collisions between
            # (seed=1, step=0) and (seed=0, step=1), as a naive seed + step would have)
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step])))
            return rng.integers(0, self.windows.num_windows, size=self.global_batch)
        n = self.epoch_windows
        first = step * self.global_batch
        out = np.empty(self.global_batch, dtype=np.int64)
        for epoch in range(first // n, (first + self.global_batch - 1) // n + 1):  # a batch may span epochs
            lo, hi = max(first, epoch * n), min(first + self.global_batch, (epoch + 1) * n)
            out[lo - first : hi - first] = self._epoch_order(epoch)[lo - epoch * n : hi - epoch * n]
        return out

    def micro_batch(self, step: int, micro_batch: int, *, rank: int = 0, world_size: int = 1,
                    micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (micro_batch, block_size) that `rank` trains on at (step, micro_step)."""
        first = (micro_step * world_size + rank) * micro_batch
        if first + micro_batch > self.global_batch:
            raise ValueError(f"micro-step {micro_step} of rank {rank}/{world_size} x {micro_batch} rows lies past "
                             f"the global batch of {self.global_batch}")
        return self.windows.batch(self.starts(step)[first : first + micro_batch])

    def trained_tokens(self, step: int) -> int | None:
        """The targets the loss counts in step `step`'s global batch (a chat folder); None for text, where
        every target counts and each micro-batch's mean is the loss."""
        if not isinstance(self.windows, ChatWindows):
            return None
        return self.windows.trained_tokens(self.starts(step))

    def position(self, step: int) -> dict[str, int | float]:
        """Where the stream stands after `step` steps: windows and tokens drawn; with "epoch", the epoch."""
        drawn = step * self.global_batch
        out: dict[str, int | float] = {"windows_seen": drawn, "tokens_seen": drawn * self.windows.block_size}
        if self.sampling == "epoch":
            out["epoch"] = drawn / self.epoch_windows
        return out

    def _epoch_starts(self) -> np.ndarray:
        return self.windows.epoch_starts()

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return _epoch_order(self.windows, self.seed, epoch)


@functools.lru_cache(maxsize=4)
def _epoch_starts(windows: TokenWindows) -> np.ndarray:
    """Non-overlapping window starts, shard after shard: position k * block_size of each shard, for
    every k with a whole window (block_size + 1 tokens) there."""
    T = windows.block_size
    counts = windows.cumulative - windows._shard_base  # starts per shard: len - T
    return np.concatenate([base + np.arange(0, count, T, dtype=np.int64)
                           for base, count in zip(windows._shard_base.tolist(), counts.tolist())])


@functools.lru_cache(maxsize=2)
def _epoch_order(windows: TokenWindows | ChatWindows, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s windows in their seeded order (a permutation of the windows' epoch_starts)."""
    starts = windows.epoch_starts()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 0xE90C])))
    return starts[rng.permutation(len(starts))]


def val_batches(windows: TokenWindows | ChatWindows, token_budget: int, batch_size: int, *, rank: int,
                world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of the validation set, in micro-batches: `token_budget` tokens (all ranks
    together) read as non-overlapping windows spread evenly over the whole split, so a split of many
    documents is sampled across all of them rather than in its first few. The windows are the same at
    every evaluation and, all ranks together, for any number of ranks (rank r reads every world_size-th)."""
    starts = windows.val_starts(token_budget)
    mine = starts[rank::world_size]
    return [windows.batch(mine[i : i + batch_size]) for i in range(0, len(mine), batch_size)]


def step_seed(seed: int, step: int, rank: int) -> int:
    """A torch seed for (seed, step, rank): the loop reseeds torch at every step, so dropout and any
    other randomness are also functions of the step, and a resume needs no saved RNG state."""
    return int(np.random.SeedSequence([seed, step, rank, 0x5EED]).generate_state(1, dtype=np.uint64)[0] >> 1)
