"""The learning-rate schedule: a function of the step alone, so a resumed run follows it exactly.

Two shapes share the linear warmup and the floor after the schedule's end:
- "cosine" (the default, GPT-2/nanoGPT): cosine from the peak down to the floor at `decay_steps`;
- "wsd" (warmup-stable-decay, trapezoidal): the peak held, then a linear decay to the floor over the
  last `decay_fraction` of the schedule (as modded-nanogpt's stable-then-decay, which a run can
  extend from any step of its stable phase).

`lr(step)` is the learning rate of the reference parameter groups (AdamW's, or Muon's Adam half);
groups with a peak of their own (Muon's matrices) follow it at a fixed ratio (gpt_ds.engine.set_lr).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "wsd")
DEFAULT_DECAY_FRACTION = 0.2  # wsd: the last 20% of the schedule decays


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to `peak`, then `kind`'s decay to `floor` at `decay_steps`, then `floor`."""

    peak: float
    floor: float
    warmup: int
    decay_steps: int
    kind: str = "cosine"
    decay_fraction: float = DEFAULT_DECAY_FRACTION  # wsd only

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule kind must be one of {SCHEDULES}, got {self.kind!r}")

    @property
    def decay_start(self) -> int:
        """The first step below the peak: the warmup's end (cosine), the stable phase's end (wsd)."""
        if self.kind == "cosine":
            return self.warmup
        return max(self.warmup, self.decay_steps - decay_length(self.decay_steps, self.decay_fraction))

    def lr(self, step: int) -> float:
        # 1) linear warmup over the first `warmup` steps (step 0 already moves: lr = peak / warmup)
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        # 2) past the schedule's end, the floor
        if step >= self.decay_steps:
            return self.floor
        if self.kind == "wsd":
            # 3a) wsd: the peak until the decay starts, then a straight line down to the floor
            start = self.decay_start
            if step < start:
                return self.peak
            return self.peak - (self.peak - self.floor) * (step - start) / (self.decay_steps - start)
        # 3b) cosine: from peak down to floor
        progress = (step - self.warmup) / max(1, self.decay_steps - self.warmup)
        return self.floor + 0.5 * (self.peak - self.floor) * (1 + math.cos(math.pi * progress))


def decay_length(decay_steps: int, decay_fraction: float) -> int:
    """The wsd decay's number of steps: `decay_fraction` of the schedule, at least one step."""
    return max(1, round(decay_steps * decay_fraction))
