"""gpt_ds.prefetch: one micro-batch ahead, in the stream's own order, for any accumulation and rank,
and from any step a resume starts at."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt_ds import ds_config, sampler, settings as run_settings
from gpt_ds.model import config_from_preset
from gpt_ds.plan import Plan
from gpt_ds.prefetch import Prefetcher
from gpt_ds.schedule import Schedule


def plan_of(world_size: int, accumulation: int, sampling: str) -> Plan:
    settings = run_settings.RunSettings(deepspeed_config="(inline)", data="(random tokens)", out="(none)",
                                        block_size=16, sampling=sampling)
    ds = ds_config.resolve({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": accumulation,
                            "zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}, "(inline)", world_size)
    tokens = np.random.default_rng(0).integers(0, 50257, size=5_000, dtype=np.uint16)
    return Plan(settings, ds, config_from_preset("tiny", block_size=16), 16,
                Schedule(peak=1e-3, floor=1e-4, warmup=1, decay_steps=10), sampler.TokenWindows([tokens], 16),
                None, None, world_size)


def batches_of(plan: Plan, rank: int) -> Prefetcher:
    return Prefetcher(plan.stream, micro_batch=plan.micro_batch, accumulation=plan.accumulation, rank=rank,
                      world_size=plan.world_size, device="cpu")


@pytest.mark.parametrize("world_size,accumulation,sampling", [(1, 1, "random"), (1, 3, "epoch"), (2, 2, "random")])
def test_the_prefetched_micro_batches_are_the_streams_own(world_size, accumulation, sampling):
    plan = plan_of(world_size, accumulation, sampling)
    for rank in range(world_size):
        for resume_at in (0, 3):  # a fresh prefetcher, as after a resume, starts at its step's first micro-batch
            batches = batches_of(plan, rank)
            for step in range(resume_at, 6):
                for micro_step in range(accumulation):
                    x, y = batches.get(step, micro_step)
                    want = plan.stream.micro_batch(step, 2, rank=rank, world_size=world_size, micro_step=micro_step)
                    assert torch.equal(x, want[0]) and torch.equal(y, want[1]), (rank, step, micro_step)
                    batches.prefetch_after(step, micro_step)
                    assert batches._ahead[0] == ((step, micro_step + 1) if micro_step + 1 < accumulation
                                                 else (step + 1, 0))


def test_a_batch_asked_out_of_order_is_loaded_rather_than_the_prefetched_one():
    plan = plan_of(1, 2, "random")
    batches = batches_of(plan, 0)
    batches.get(0, 0)
    batches.prefetch_after(0, 0)  # (0, 1) ahead
    x, _ = batches.get(4, 1)
    assert torch.equal(x, plan.stream.micro_batch(4, 2, micro_step=1)[0]) and batches._ahead is None
