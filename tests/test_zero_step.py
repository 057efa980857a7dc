"""gpt_ds.zero_step: DeepSpeed's ZeRO step with fewer passes over the gradients trains the same numbers.

Each engine is built twice: as gpt-ds builds it, and with DeepSpeed's own norm, overflow scan and averaging
put back. Clipping is set low so that the norm decides every update."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_ds import ds_config, sampler, settings as run_settings, zero_step
from gpt_ds.config_variant import write_variant
from gpt_ds.engine import build_engine
from gpt_ds.model import config_from_preset
from gpt_ds.patching import SWAPS
from gpt_ds.plan import Plan
from gpt_ds.schedule import Schedule
from gpt_ds.train import prefetcher, train_step

SHIPPED = Path(__file__).resolve().parents[1] / "ds_configs"
LIGHTER = ["fused adam", "norm", "overflow check", "average"]


def make_plan(tmp_path: Path, config: str, model: str) -> Plan:
    path = write_variant(tmp_path / config, SHIPPED / config, train_micro_batch_size_per_gpu=2, gradient_clipping=0.05)
    settings = run_settings.RunSettings(deepspeed_config=str(path), data="(random tokens)", out="(none)",
                                        model=model, block_size=32)
    tokens = np.random.default_rng(0).integers(0, 50257, size=20_000, dtype=np.uint16)
    return Plan(settings, ds_config.resolve(ds_config.load(path), path, 1),
                config_from_preset(model, **settings.shape_overrides), 32,
                Schedule(peak=1e-3, floor=1e-4, warmup=1, decay_steps=10), sampler.TokenWindows([tokens], 32),
                None, None, 1)


def deepspeeds_own(engine) -> None:
    """DeepSpeed's norm, overflow scan and averaging back on this engine (fused Adam stays: its own test)."""
    for name in ("get_grad_norm_direct", "check_overflow"):
        del engine.optimizer.__dict__[name]
    engine.optimizer.gradient_average = True


@pytest.mark.parametrize("config, model", [("zero2.json", "tiny"), ("zero2_muon.json", "modern-tiny")])
def test_the_lighter_step_trains_deepspeeds_numbers(tmp_path, one_rank, config, model):
    plan = make_plan(tmp_path, config, model)
    runs = {}
    for side in ("gpt-ds", "deepspeed"):
        engine = build_engine(plan)
        assert zero_step.lighten(engine.optimizer) == ["fused adam"]  # already applied, once: nothing left to do
        if side == "deepspeed":
            deepspeeds_own(engine)
        batches = prefetcher(plan, 0, engine.device)
        losses, norms = [], []
        for step in range(4):
            losses.append(train_step(engine, batches, step).item())
            norms.append(float(engine.get_global_grad_norm()))
        runs[side] = losses, norms, [p.detach().clone() for p in engine.module.parameters()]
    (losses, norms, weights), (ds_losses, ds_norms, ds_weights) = runs["gpt-ds"], runs["deepspeed"]
    assert min(norms) > 0.05  # clipped: the norm is in every update
    assert losses == ds_losses and norms == ds_norms
    assert all(torch.equal(a, b) for a, b in zip(weights, ds_weights))


def test_what_one_rank_gets(tmp_path, one_rank):
    engine = build_engine(make_plan(tmp_path, "zero2.json", "tiny"))
    deepspeeds_own(engine)
    assert zero_step.lighten(engine.optimizer) == LIGHTER
    assert {"DeepSpeedZeroOptimizer.check_overflow", "DeepSpeedZeroOptimizer.get_grad_norm_direct"} <= SWAPS.keys()


@pytest.mark.parametrize("side", ["gpt-ds", "deepspeed"])
def test_an_overflowing_step_is_skipped(tmp_path, one_rank, side):
    """A nan in the gradients: no weight moves and the step counts as an overflow, without the scan."""
    plan = make_plan(tmp_path, "zero2.json", "tiny")
    engine = build_engine(plan)
    if side == "deepspeed":
        deepspeeds_own(engine)
    scans = []
    has_overflow = engine.optimizer.has_overflow
    engine.optimizer.has_overflow = lambda *args: scans.append(1) or has_overflow(*args)
    batches = prefetcher(plan, 0, engine.device)
    train_step(engine, batches, 0)
    before = [p.detach().clone() for p in engine.module.parameters()]
    poison = engine.module.transformer.h[0].mlp.c_fc.weight.register_hook(lambda grad: grad * float("nan"))
    train_step(engine, batches, 1)
    poison.remove()
    assert engine.optimizer.overflow and engine.get_global_grad_norm() == float("inf")
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, engine.module.parameters()))
    assert len(scans) == (0 if side == "gpt-ds" else 2)  # DeepSpeed scans at each of the two steps
    train_step(engine, batches, 2)  # and the next step trains
    assert not engine.optimizer.overflow and not all(torch.equal(a, p.detach())
                                                       for a, p in zip(before, engine.module.parameters()))


def test_sum_of_squares_reads_float64_sums():
    torch.manual_seed(0)
    tensors = [torch.randn(zero_step.NORM_CHUNK * 2 + 17).bfloat16(),  # chunks and a remainder
               torch.randn(300, 7)[:, ::2],  # not contiguous
               torch.empty(0, dtype=torch.bfloat16),
               torch.randn(5, dtype=torch.float64) * 1e30]
    reference = sum(t.double().square().sum() for t in tensors)
    total = zero_step.sum_of_squares(tensors)
    assert total.dtype == torch.float64 and torch.allclose(total, reference, rtol=1e-14, atol=0)
    assert zero_step.sum_of_squares([]) == 0
    assert zero_step.sum_of_squares([torch.tensor([1.0, float("inf")])]) == float("inf")
    assert zero_step.sum_of_squares([torch.tensor([-float("inf")]).bfloat16()]) == float("inf")
    assert zero_step.sum_of_squares([torch.tensor([1.0, float("nan")])]).isnan()
