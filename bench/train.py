"""What DeepSpeed costs: tokens/s and MFU of our DeepSpeed training step against a plain PyTorch loop.

Same model, batches, precision (bf16 with fp32 master weights), optimizer (AdamW, weight decay on
matrices) and gradient clipping; one process. The DeepSpeed side is gpt_ds.train's own engine and
step (ZeRO-2 from the given config); the baseline is the textbook loop: torch.autocast(bf16) over
fp32 weights, loss.backward(), clip_grad_norm_, AdamW.step(). Both run in this process, alternating
step by step so that a machine whose load changes affects both alike; the ratio is the figure.

    python bench/train.py [--model tiny] [--block-size 128] [--steps 40] [--deepspeed_config ds_configs/zero2.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gpt_ds import distributed, metrics, sampler, settings as run_settings  # noqa: E402
from gpt_ds.plan import Plan  # noqa: E402
from gpt_ds.schedule import Schedule  # noqa: E402
from gpt_ds.train import build_engine, set_lr, train_step  # noqa: E402


def plain_loop(plan: Plan):
    """The baseline: a step function for a GPT trained without DeepSpeed."""
    from gpt_ds.model import GPT

    torch.manual_seed(plan.settings.seed)
    model = GPT(plan.model_config)
    params = plan.ds_config["optimizer"]["params"]
    optimizer = torch.optim.AdamW(model.param_groups(run_settings.weight_decay_of(plan.ds_config)), lr=params["lr"],
                                  betas=tuple(params["betas"]), eps=params["eps"])
    micro = plan.ds_config["train_micro_batch_size_per_gpu"]
    clip = plan.ds_config.get("gradient_clipping", 0.0)
    dtype = torch.bfloat16 if run_settings.precision_of(plan.ds_config) == "bf16" else torch.float32

    def step(step_index: int) -> float:
        x, y = sampler.train_batch(plan.train, micro, seed=plan.settings.seed, step=step_index, rank=0, micro_step=0)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            _, loss = model(x, y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


def timed(step, index: int) -> float:
    started = time.perf_counter()
    step(index)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deepspeed_config", default=str(Path(__file__).resolve().parents[1] / "ds_configs" / "zero2.json"))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side")
    args = parser.parse_args()

    from gpt_ds.model import config_from_preset

    dist_env = distributed.fill_env()
    distributed.share_cpu_threads(dist_env)
    distributed.init(dist_env)
    settings = run_settings.RunSettings(deepspeed_config=args.deepspeed_config, data="(random tokens)", out="(none)",
                                        model=args.model, block_size=args.block_size)
    model_config = config_from_preset(args.model, **settings.shape_overrides)
    tokens = np.random.default_rng(0).integers(0, 50257, size=2_000_000, dtype=np.uint16)
    schedule = Schedule(peak=1e-3, floor=1e-4, warmup=10, decay_steps=1000)
    plan = Plan(settings, run_settings.resolve_ds_config(args.deepspeed_config, 1), model_config,
                model_config.block_size, schedule, sampler.TokenWindows([tokens], model_config.block_size), None,
                None, 1)

    engine = build_engine(plan)

    def ds_step(i: int) -> float:
        set_lr(engine, schedule.lr(i))
        return train_step(engine, plan, i, 0)

    plain_model, plain_step = plain_loop(plan)
    tokens_per_step = plan.tokens_per_step
    precision = plan.precision
    peak, source = metrics.device_peak_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
    flops_per_token = plain_model.flops_per_token(model_config.block_size)

    for warm in range(3):  # first steps allocate buffers and pick kernels
        ds_step(warm)
        plain_step(warm)
    # Alternate step by step: a change of machine load hits both sides alike.
    steps = args.steps
    ds_seconds = plain_seconds = 0.0
    for i in range(3, 3 + steps):
        ds_seconds += timed(ds_step, i)
        plain_seconds += timed(plain_step, i)
    ds_tps, plain_tps = tokens_per_step * steps / ds_seconds, tokens_per_step * steps / plain_seconds
    print(f"model {args.model} (block {model_config.block_size}), batch {plan.ds_config['train_batch_size']} x "
          f"{model_config.block_size} tokens, {precision}, ZeRO stage {plan.ds_config['zero_optimization']['stage']}, "
          f"{torch.get_num_threads()} threads, {steps} steps per side; peak {peak / 1e12:.2f} TFLOP/s ({source})")
    print(f"plain PyTorch : {plain_tps:10,.0f} tokens/s  MFU {plain_tps * flops_per_token / peak:6.1%}")
    print(f"DeepSpeed     : {ds_tps:10,.0f} tokens/s  MFU {ds_tps * flops_per_token / peak:6.1%}")
    print(f"DeepSpeed / plain throughput: {ds_tps / plain_tps:.3f} (DeepSpeed costs {1 - ds_tps / plain_tps:+.1%})")


if __name__ == "__main__":
    main()
