"""Faster to the same loss: tokens/s of gpt-ds's default training step against a plain PyTorch loop.

The baseline is bench/baseline.py's PlainTrainer, what a ~300-line GPT-2 script does on a CPU
(nanoGPT's model written out: same shape, GPT-2's vocabulary padded to 50304, tied head; float32,
the (B*T, V) logits into F.cross_entropy, loss.backward(), clip_grad_norm_, torch.optim.AdamW, no
compile, loss.item() every step). gpt-ds's side is its own default step: the engine from
ds_configs/zero2.json (bf16 ZeRO-2) built by gpt_ds.engine.build_engine, gpt_ds.train.train_step
(chunked head + cross-entropy) and agree (the step's one all-reduce and host read). Same batch size
(the global batch), same windows of the same data. Both run in one program, alternating step by step
(A B A B) so that a change of machine load hits both alike; the figures are medians of the per-step
times and their ratio.

With 2 ranks (`python -m deepspeed.launcher.runner --num_gpus 2 bench/train.py ...`), gpt-ds's step
runs on both ranks (one core each on a 2-core machine, as share_cpu_threads gives them); then rank
0 alone runs the plain loop with all the host's cores over the same global batch while rank 1 waits
in a barrier, and so on, step by step.

    python bench/train.py [--model tiny|small|gpt2] [--steps 20] [--device cpu|cuda] [--deepspeed_config ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.baseline import PlainTrainer  # noqa: E402
from gpt_ds import distributed, ds_config, host_memory, metrics, sampler, settings as run_settings  # noqa: E402
from gpt_ds.plan import Plan  # noqa: E402
from gpt_ds.schedule import Schedule  # noqa: E402
from gpt_ds.engine import build_engine, set_lr  # noqa: E402
from gpt_ds.train import agree, prefetcher, train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_plan(args: argparse.Namespace, world_size: int) -> Plan:
    from gpt_ds.model import config_from_preset

    settings = run_settings.RunSettings(deepspeed_config=args.deepspeed_config, data="(random tokens)", out="(none)",
                                        model=args.model, block_size=args.block_size, compile=args.compile)
    model_config = config_from_preset(args.model, **settings.shape_overrides)
    tokens = np.random.default_rng(0).integers(0, 50257, size=4_000_000, dtype=np.uint16)
    ds = ds_config.resolve(ds_config.load(args.deepspeed_config), args.deepspeed_config, world_size)
    return Plan(settings, ds, model_config,
                model_config.block_size, Schedule(peak=1e-3, floor=1e-4, warmup=10, decay_steps=1000),
                sampler.TokenWindows([tokens], model_config.block_size), None, None, world_size)


def start_ranks() -> distributed.DistEnv:
    """This process as one rank, set up as gpt_ds.train sets up its ranks (threads, host memory, the process group)."""
    dist_env = distributed.fill_env()
    distributed.share_cpu_threads(dist_env)
    host_memory.keep_freed_memory()
    distributed.init(dist_env)
    return dist_env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deepspeed_config", default=str(ROOT / "ds_configs" / "zero2.json"))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--compile", action="store_true", help="gpt-ds side: engine.compile()")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args()

    dist_env = start_ranks()
    rank, world = dist_env.rank, dist_env.world_size
    device = distributed.device()
    plan = make_plan(args, world)
    engine = build_engine(plan)
    batches = prefetcher(plan, rank, engine.device)
    ds_threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    plain_threads = cores if world > 1 and device.type == "cpu" else ds_threads  # rank 0 alone: all the cores
    params = plan.ds_config["optimizer"]["params"]
    plain_step = PlainTrainer(plan.model_config, plan.train, None, plan.micro_batch * world, plan.schedule,
                              seed=plan.settings.seed, weight_decay=params.get("weight_decay", 0.1),
                              betas=tuple(params["betas"]), eps=params["eps"], device=device).step if rank == 0 else None

    def ds_step(i: int) -> None:
        set_lr(engine, plan.schedule.lr(i))
        agree(train_step(engine, batches, i), False)

    def plain(i: int) -> None:
        if plain_step is not None:
            torch.set_num_threads(plain_threads)
            plain_step(i)
            torch.set_num_threads(ds_threads)
        if world > 1:
            distributed.barrier()

    times = {"gpt-ds": [], "plain": []}
    for i in range(args.warmup + args.steps):
        for name, fn in (("gpt-ds", ds_step), ("plain", plain)):
            if world > 1:
                distributed.barrier()
            sync(device)
            started = time.perf_counter()
            fn(i)
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - started)
    if rank != 0:
        return
    tokens = plan.micro_batch * world * plan.accumulation * plan.seq_len
    from gpt_ds.model import GPT

    with torch.device("meta"):
        flops_per_token = GPT(plan.model_config).flops_per_token(plan.seq_len)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision, torch.float32)
    peaks = {"gpt-ds": metrics.device_peak_flops(dtype)}
    torch.set_num_threads(plain_threads)  # the CPU's peak is measured, and cached, per number of threads
    peaks["plain"] = metrics.device_peak_flops(torch.float32)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in med.items()}
    print(f"model {args.model} (block {plan.seq_len}), global batch {plan.micro_batch * world} x {plan.seq_len} tokens, "
          f"{args.device}; gpt-ds: {world} rank(s) x {ds_threads} thread(s), {plan.precision}, ZeRO stage "
          f"{plan.ds_config['zero_optimization']['stage']}{', compiled' if args.compile else ''}; plain: 1 process x "
          f"{plain_threads} thread(s), fp32; {args.steps} steps per side, "
          "alternating; MFU of each side against the peak of its own precision:")
    for name in ("plain", "gpt-ds"):
        peak, source = peaks[name]
        print(f"{name:7s}: median step {med[name] * 1e3:8.1f} ms  {tps[name]:10,.0f} tokens/s  "
              f"MFU {tps[name] * flops_per_token / peak:6.1%} of {peak / 1e12:.2f} TFLOP/s ({source})")
    print(f"gpt-ds / plain tokens/s: {tps['gpt-ds'] / tps['plain']:.2f}x")


if __name__ == "__main__":
    main()
