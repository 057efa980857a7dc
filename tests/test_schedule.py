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


def test_wsd_warms_up_holds_the_peak_then_decays_linearly_to_the_floor():
    schedule = Schedule(peak=1.0, floor=0.1, warmup=10, decay_steps=110, kind="wsd", decay_fraction=0.2)
    assert schedule.decay_start == 88  # the last 22 of 110 steps decay
    assert schedule.lr(0) == pytest.approx(0.1) and schedule.lr(9) == pytest.approx(1.0)  # the same warmup
    assert all(schedule.lr(step) == 1.0 for step in range(10, 89))  # stable at the peak
    assert schedule.lr(99) == pytest.approx(1.0 - 0.9 * 11 / 22)  # half way down the line
    lrs = [schedule.lr(step) for step in range(88, 111)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly down
    assert [b - a for a, b in zip(lrs, lrs[1:])] == pytest.approx([-0.9 / 22] * 22)  # a straight line
    assert schedule.lr(110) == pytest.approx(0.1) and schedule.lr(5000) == pytest.approx(0.1)


def test_wsd_decay_never_starts_inside_the_warmup_and_cosine_is_the_default():
    whole = Schedule(peak=2.0, floor=0.0, warmup=4, decay_steps=10, kind="wsd", decay_fraction=1.0)
    assert whole.decay_start == 4 and whole.lr(4) == 2.0 and whole.lr(7) == pytest.approx(1.0)
    assert Schedule(1.0, 0.1, warmup=10, decay_steps=110).kind == "cosine"
    with pytest.raises(ValueError, match="cosine"):
        Schedule(1.0, 0.1, warmup=1, decay_steps=5, kind="linear")
