"""The modern recipe's training step against GPT-2's, on the same shape, batch and data.

Builds two of gpt-ds's own engines in one program: `--model` (GPT-2, ds_configs/zero2.json) and
`modern-<model>` (the modern recipe: Muon, RoPE, QK-norm, ReLU², untied soft-capped head;
ds_configs/zero2_muon.json). Each runs gpt_ds.train's step (train_step + agree) on the same random
windows, alternating in blocks of steps (A B A B, `--block` steps each) so that a change of machine load
hits both alike, while each block runs with its own engine's memory in the caches, as a run does (step by
step, each engine evicted the other's: the bigger one lost more). The figures are medians of the per-step
times, each block's first step left out, and their ratio.

With 2 ranks, under the deepspeed launcher, both engines run on both ranks (rank 0 prints):

    python bench/recipe_step.py [--model tiny|small] [--rounds 4] [--block 10] [--warmup 3]
    python -m deepspeed.launcher.runner --num_gpus 2 bench/recipe_step.py --model small
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.train import make_plan, start_ranks, sync  # noqa: E402
from gpt_ds import distributed  # noqa: E402
from gpt_ds.engine import build_engine, set_lr  # noqa: E402
from gpt_ds.train import agree, prefetcher, train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"gpt2": ROOT / "ds_configs" / "zero2.json", "modern": ROOT / "ds_configs" / "zero2_muon.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="a GPT-2 preset; the modern side is modern-<model>")
    parser.add_argument("--rounds", type=int, default=4, help="A B rounds")
    parser.add_argument("--block", type=int, default=10, help="steps per side in a round (the first is not timed)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args()

    dist_env = start_ranks()
    sides = {}
    for name, model in (("gpt2", args.model), ("modern", f"modern-{args.model}")):
        plan = make_plan(argparse.Namespace(deepspeed_config=str(CONFIGS[name]), model=model, block_size=None,
                                            compile=False), dist_env.world_size)
        engine = build_engine(plan)
        sides[name] = (plan, engine, prefetcher(plan, dist_env.rank, engine.device))

    def step(name: str, i: int) -> None:
        plan, engine, batches = sides[name]
        set_lr(engine, plan.schedule.lr(i))
        agree(train_step(engine, batches, i), False)

    for name in sides:
        for i in range(args.warmup):
            step(name, i)
    times: dict[str, list[float]] = {name: [] for name in sides}
    i = args.warmup
    for _ in range(args.rounds):
        for name in sides:
            for k in range(args.block):
                if dist_env.world_size > 1:
                    distributed.barrier()
                sync(sides[name][1].device)
                started = time.perf_counter()
                step(name, i + k)
                sync(sides[name][1].device)
                if k > 0:
                    times[name].append(time.perf_counter() - started)
        i += args.block
    if dist_env.rank != 0:
        return
    plan = sides["gpt2"][0]
    print(f"model {args.model} vs modern-{args.model}, batch {plan.micro_batch * dist_env.world_size} x "
          f"{plan.seq_len} tokens, {dist_env.world_size} rank(s) x {torch.get_num_threads()} thread(s), "
          f"{plan.precision}; {args.rounds} rounds of {args.block} steps per side, alternating")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in med.items():
        print(f"{name:7s}: median step {seconds * 1e3:8.1f} ms")
    print(f"modern / gpt2 step time: {med['modern'] / med['gpt2']:.2f}x (target <= 1.15)")


if __name__ == "__main__":
    main()
