"""gpt_ds.schedule: warmup, cosine to the floor, the floor after the schedule's end."""

from __future__ import annotations

import math

import pytest

from gpt_ds.schedule import Schedule


def test_warmup_then_cosine_then_floor():
    schedule = Schedule(peak=1.0, floor=0.1, warmup=10, decay_steps=110)
    assert schedule.lr(0) == pytest.approx(0.1) and schedule.lr(9) == pytest.approx(1.0)  # linear, step 0 moves
    assert schedule.lr(10) == pytest.approx(1.0)  # the cosine starts at the peak
    assert schedule.lr(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))  # half way: the mean
    assert schedule.lr(110) == pytest.approx(0.1) and schedule.lr(10_000) == pytest.approx(0.1)
    lrs = [schedule.lr(step) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # decays monotonically


def test_no_warmup_starts_at_the_peak():
    assert Schedule(peak=3e-4, floor=3e-5, warmup=0, decay_steps=5).lr(0) == pytest.approx(3e-4)
