"""gpt_ds.sampler.val_batches, as the Validator reads it: a fixed budget of windows spread over the
whole val split (not its first documents), the same at every evaluation and for any world size; and the
Validator's val loss and bits per byte on a real one-rank engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt_ds.bpb import token_byte_lengths
from gpt_ds.sampler import TokenWindows, val_batches
from gpt_ds.tokenizer import EOT_TOKEN

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
    assert len(split.val_starts(10**9)) == split.num_windows // T
    assert len(split.val_starts(1)) == 1  # below one window: still one


@pytest.mark.usefixtures("encoding", "one_rank")
def test_validator_loss_and_bpb_equal_a_plain_computation(tmp_path):
    """One rank, a real DeepSpeed engine (ZeRO-2, fp32): the Validator's mean loss and bpb over its windows,
    against the plain model's logits and F.cross_entropy over the same windows."""
    from gpt_ds import ds_config, sampler, settings as run_settings
    from gpt_ds.config_variant import write_variant
    from gpt_ds.engine import build_engine
    from gpt_ds.model import config_from_preset
    from gpt_ds.plan import Plan
    from gpt_ds.schedule import Schedule
    from gpt_ds.validate import Validator

    path = write_variant(tmp_path / "ds.json", train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1,
                         bf16={"enabled": False})
    settings = run_settings.RunSettings(deepspeed_config=str(path), data="(random tokens)", out="(none)",
                                        model="tiny", block_size=32, eval_tokens=5 * 32)
    tokens = np.random.default_rng(0).integers(0, 50257, size=2_000, dtype=np.uint16)
    tokens[::7] = EOT_TOKEN  # documents of 6 tokens
    windows = sampler.TokenWindows([tokens], 32)
    plan = Plan(settings, ds_config.resolve(ds_config.load(path), path, 1), config_from_preset("tiny", block_size=32),
                32, Schedule(peak=1e-3, floor=1e-4, warmup=1, decay_steps=10), windows, windows, None, 1)
    engine = build_engine(plan)
    val_loss, val_bpb = Validator(plan, 0).loss(engine)

    lengths = token_byte_lengths(50257)
    nats, n_tokens, counted, n_bytes = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for x, y in sampler.val_batches(windows, 5 * 32, 2, rank=0, world_size=1):
            logits, _ = engine.module(x)
            losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").double()
            nats, n_tokens = nats + losses.sum().item(), n_tokens + y.numel()
            keep = y.flatten() != EOT_TOKEN
            counted, n_bytes = counted + losses[keep].sum().item(), n_bytes + int(lengths[y.flatten()].sum())
    assert n_tokens == 5 * 32 and 0 < (y == EOT_TOKEN).sum() < y.numel()
    assert val_loss == pytest.approx(nats / n_tokens, rel=1e-5)
    assert val_bpb == pytest.approx(counted / math.log(2) / n_bytes, rel=1e-5)
