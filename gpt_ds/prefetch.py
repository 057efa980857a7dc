"""Micro-batches on the device one ahead of the step: `Prefetcher`.

The step's device work is queued asynchronously (CUDA), so the host is free while it runs: right after
the forward of one micro-batch is queued, the next one (the next micro-step, or the first of the next
step) is gathered on the host, put in pinned memory and copied with `non_blocking=True` on a copy
stream of its own, so that the copy runs beside the compute rather than after it; `get` makes the
compute stream wait for that copy (and marks the tensors as used there, for the caching allocator).
The order is the stream's: every micro-batch is still a function of
(seed, step, micro-step, rank) alone, so prefetching changes no sample, and a resume at any step
starts from that step's own first micro-batch (exact resume unchanged). On the CPU nothing is
pinned and the copy is a no-op; the prefetch then only moves the host work earlier.
"""

from __future__ import annotations

import torch

from gpt_ds.sampler import TrainStream

Key = tuple[int, int]  # (step, micro_step)


class Prefetcher:
    """Rank `rank`'s micro-batches (of `micro_batch` rows, `accumulation` per step, `world_size` ranks) of
    `stream` on `device`, one micro-batch ahead."""

    def __init__(self, stream: TrainStream, *, micro_batch: int, accumulation: int, rank: int, world_size: int,
                 device: torch.device | str) -> None:
        self.stream, self.micro_batch, self.accumulation = stream, micro_batch, accumulation
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self._ahead: tuple[Key, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._copies = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def get(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of (step, micro_step) on the device: the one prefetched, else loaded now."""
        if self._ahead is not None and self._ahead[0] == (step, micro_step):
            batch = self._ahead[1]
        else:
            batch = self._load((step, micro_step))
        self._ahead = None
        if self._copies is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self._copies)
            for tensor in batch:
                tensor.record_stream(compute)
        return batch

    def loss_divisor(self, step: int) -> torch.Tensor | None:
        """For a chat stream, what each micro-batch's summed loss is divided by: the global batch's trained
        tokens over (world size x accumulation), since DeepSpeed averages over both; the step's loss is then
        the mean over the global batch's trained tokens on any world size (None for text: the mean)."""
        trained = self.stream.trained_tokens(step)
        if trained is None:
            return None
        return torch.tensor(max(trained, 1) / (self.world_size * self.accumulation), dtype=torch.float32,
                            device=self.device)

    def prefetch_after(self, step: int, micro_step: int) -> None:
        """Start the micro-batch that follows (step, micro_step) on its way to the device."""
        key = (step, micro_step + 1) if micro_step + 1 < self.accumulation else (step + 1, 0)
        self._ahead = (key, self._load(key))

    def _load(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        step, micro_step = key
        x, y = self.stream.micro_batch(step, self.micro_batch, rank=self.rank, world_size=self.world_size,
                                       micro_step=micro_step)
        if self._copies is None:
            return x.to(self.device), y.to(self.device)
        x, y = x.pin_memory(), y.pin_memory()  # pinned pages let the copy run asynchronously
        with torch.cuda.stream(self._copies):
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
