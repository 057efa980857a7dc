"""The learning-rate schedule: a function of the step alone, so a resumed run follows it exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to `peak`, cosine decay to `floor` at `decay_steps`, then `floor`."""

    peak: float
    floor: float
    warmup: int
    decay_steps: int

    def lr(self, step: int) -> float:
        # 1) linear warmup over the first `warmup` steps (step 0 already moves: lr = peak / warmup)
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        # 2) past the schedule's end, the floor
        if step >= self.decay_steps:
            return self.floor
        # 3) in between, a cosine from peak down to floor
        progress = (step - self.warmup) / max(1, self.decay_steps - self.warmup)
        return self.floor + 0.5 * (self.peak - self.floor) * (1 + math.cos(math.pi * progress))
