"""The training step reads back to the host once: train_step keeps the micro-batch losses on the
device and agree's single all-reduce (loss, non-finite flag, preemption flag) is read with one .tolist().

Counted are the reads gpt-ds's code makes. DeepSpeed's ZeRO step makes its own (is_invalid_grad_norm's
bool() of the gradient norm, which also stands for its overflow scan: gpt_ds.zero_step) and torch's
single-tensor AdamW reads its step counter, a CPU tensor; those are DeepSpeed's and torch's business."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from gpt_ds.config_variant import write_variant
from gpt_ds.engine import build_engine
from gpt_ds.train import agree, prefetcher, train_step
from random_plans import random_token_plan

GPT_DS = str(Path(__file__).resolve().parents[1] / "gpt_ds")


@pytest.fixture(scope="module")
def engine_and_plan(tmp_path_factory, one_rank):
    # several micro-batches: still one read
    path = write_variant(tmp_path_factory.mktemp("ds") / "ds.json", train_micro_batch_size_per_gpu=2,
                         gradient_accumulation_steps=3)
    plan = random_token_plan(path)
    return build_engine(plan), plan


def test_one_host_read_per_step(engine_and_plan, monkeypatch):
    engine, plan = engine_and_plan
    batches = prefetcher(plan, 0, engine.device)
    agree(train_step(engine, batches, 0), False)  # warm-up: first steps may set things up
    reads = []

    def counting(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if GPT_DS in caller or "gpt_ds" in Path(caller).parts:  # gpt-ds's own reads, not DeepSpeed's
                reads.append(name)
            return real(self, *args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    real_synchronize = torch.cuda.synchronize

    def synchronize(*args, **kwargs):  # gpt-ds's own waits for the device (DeepSpeed's are its business)
        caller = sys._getframe(1).f_code.co_filename
        if GPT_DS in caller or "gpt_ds" in Path(caller).parts:
            reads.append("torch.cuda.synchronize")
        return real_synchronize(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    for step in (1, 2):
        reads.clear()
        loss, preempted, memory_gib = agree(train_step(engine, batches, step), step == 2)
        assert reads == ["tolist"], reads
        assert math.isfinite(loss) and preempted == (step == 2) and len(memory_gib) == 1 and memory_gib[0] > 0


def test_agree_flags_a_non_finite_loss(engine_and_plan):
    assert agree(torch.tensor(float("nan")), False)[:2] == (None, False)
    assert agree(torch.tensor(2.5), True)[:2] == (2.5, True)
    assert agree(1.5, False)[:2] == (1.5, False)  # a host float still works


@pytest.mark.parametrize("config, model", [("zero2.json", "tiny"), ("zero2_muon.json", "modern-tiny")])
def test_adam_steps_on_torchs_fused_kernel(tmp_path, one_rank, config, model):
    """DeepSpeed's AdamW, and Muon's Adam half, run torch's fused Adam (gpt_ds.zero_step.use_fused_adam): one
    kernel over each tensor, read from torch's profiler."""
    from torch.profiler import profile

    shipped = Path(__file__).resolve().parents[1] / "ds_configs" / config
    path = write_variant(tmp_path / config, shipped, train_micro_batch_size_per_gpu=2)
    plan = random_token_plan(path, model)
    engine = build_engine(plan)
    base = engine.optimizer.optimizer
    adams = [opt for opt in (base, getattr(base, "aux_optimizer", None)) if isinstance(opt, torch.optim.AdamW)]
    assert adams and all(group["fused"] for opt in adams for group in opt.param_groups)
    batches = prefetcher(plan, 0, engine.device)
    with profile() as prof:
        agree(train_step(engine, batches, 0), False)
    assert sum(event.name == "aten::_fused_adamw_" for event in prof.events()) >= 1
