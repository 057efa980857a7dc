"""gpt_ds.zero_step: DeepSpeed's ZeRO step with fewer passes over the gradients trains the same numbers.

Each engine is built twice: as gpt-ds builds it, and with DeepSpeed's own norm, overflow scan and averaging
put back. Clipping is set low so that the norm decides every update."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from gpt_ds import zero_step
from gpt_ds.config_variant import write_variant
from gpt_ds.engine import build_engine
from gpt_ds.patching import SWAPS
from gpt_ds.plan import Plan
from gpt_ds.train import prefetcher, train_step
from random_plans import random_token_plan

TESTS = Path(__file__).resolve().parent
SHIPPED = TESTS.parent / "ds_configs"
LIGHTER = ["fused adam", "norm", "overflow check", "average"]
REPLACED = ("check_overflow", "get_grad_norm_direct")  # what lighten() sets on the optimizer object


def make_plan(tmp_path: Path, config: str, model: str) -> Plan:
    return random_token_plan(write_variant(tmp_path / config, SHIPPED / config, train_micro_batch_size_per_gpu=2,
                                           gradient_clipping=0.05), model)


def deepspeeds_own(engine) -> None:
    """DeepSpeed's norm, overflow scan and averaging back on this engine (fused Adam stays: its own test)."""
    for name in REPLACED:
        engine.optimizer.__dict__.pop(name, None)  # the norm is replaced on the CPU only
    engine.optimizer.gradient_average = True


def train_side(plan: Plan, side: str, steps: int, rank: int = 0) -> dict:
    """`steps` steps of a fresh engine, as gpt-ds builds it ("gpt-ds") or with DeepSpeed's own step put back
    ("deepspeed"): its losses, gradient norms and final weights, what it replaced and whether it averages."""
    engine = build_engine(plan)
    if side == "deepspeed":
        deepspeeds_own(engine)
    batches = prefetcher(plan, rank, engine.device)
    losses, norms = [], []
    for step in range(steps):
        losses.append(train_step(engine, batches, step).item())
        norms.append(float(engine.get_global_grad_norm()))
    return dict(losses=losses, norms=norms, weights=[p.detach().clone() for p in engine.module.parameters()],
                replaced=sorted(name for name in REPLACED if name in vars(engine.optimizer)),
                average=engine.optimizer.gradient_average)


def same_numbers(ours: dict, deepspeeds: dict) -> bool:
    """The same losses, norms and weights, to the bit."""
    return (ours["losses"] == deepspeeds["losses"] and ours["norms"] == deepspeeds["norms"]
            and all(torch.equal(a, b) for a, b in zip(ours["weights"], deepspeeds["weights"])))


@pytest.mark.parametrize("config, model", [("zero2.json", "tiny"), ("zero2_muon.json", "modern-tiny")])
def test_the_lighter_step_trains_deepspeeds_numbers(tmp_path, one_rank, config, model):
    plan = make_plan(tmp_path, config, model)
    ours, deepspeeds = (train_side(plan, side, 4) for side in ("gpt-ds", "deepspeed"))
    assert min(ours["norms"]) > 0.05  # clipped: the norm is in every update
    assert same_numbers(ours, deepspeeds)


def test_what_one_rank_gets(tmp_path, one_rank):
    engine = build_engine(make_plan(tmp_path, "zero2.json", "tiny"))
    assert zero_step.lighten(engine.optimizer) == ["fused adam"]  # already applied, once: nothing left to do
    deepspeeds_own(engine)
    on_cpu = engine.device.type == "cpu"
    assert zero_step.lighten(engine.optimizer) == [name for name in LIGHTER if on_cpu or name != "norm"]
    assert "DeepSpeedZeroOptimizer.check_overflow" in SWAPS


def test_a_predivide_factor_keeps_deepspeeds_average(tmp_path, one_rank):
    """DeepSpeed multiplies by 1/f and f around the sum: not an identity, so one rank keeps it."""
    engine = build_engine(make_plan(tmp_path, "zero2.json", "tiny"))
    deepspeeds_own(engine)
    engine.optimizer.gradient_predivide_factor = 3.0
    assert "average" not in zero_step.lighten(engine.optimizer) and engine.optimizer.gradient_average


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


RANKS = r'''
import json, sys
from pathlib import Path

from gpt_ds import distributed
from gpt_ds.config_variant import write_variant

env = distributed.fill_env()
distributed.init(env)
folder, shipped = Path(sys.argv[-3]), Path(sys.argv[-2])
sys.path.insert(0, sys.argv[-1])
from random_plans import random_token_plan
from test_zero_step import same_numbers, train_side

out = {}
for config, model, stage, accumulation in (("zero2.json", "tiny", 2, 1), ("zero2_muon.json", "modern-tiny", 1, 2)):
    path = write_variant(folder / f"{env.rank}_{config}", shipped / config, train_micro_batch_size_per_gpu=2,
                         gradient_accumulation_steps=accumulation, gradient_clipping=0.05,
                         edit=lambda c: c["zero_optimization"].update(stage=stage))
    plan = random_token_plan(path, model, 2)
    ours, deepspeeds = (train_side(plan, side, 3, env.rank) for side in ("gpt-ds", "deepspeed"))
    out[config] = dict(replaced=ours["replaced"], average=ours["average"], norms=ours["norms"],
                       same=same_numbers(ours, deepspeeds))
(folder / f"rank{env.rank}.json").write_text(json.dumps(out))
'''


@pytest.mark.slow
def test_two_ranks_train_deepspeeds_numbers(tmp_path):
    """Two ranks: the norm's sum over ranks, the average kept (2 ranks divide by 2), ZeRO-1 and -2, Muon,
    gradient accumulation: the same losses, norms and weights as DeepSpeed's own step on each rank."""
    from gpt_ds import distributed

    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    proc = subprocess.run(distributed.launcher_command(2, str(script), [str(tmp_path), str(SHIPPED), str(TESTS)]),
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for config, run in out.items():
            assert run["replaced"] == list(REPLACED) and run["average"], (rank, config, run)
            assert min(run["norms"]) > 0.05 and run["same"], (rank, config, run)
