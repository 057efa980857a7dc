"""Where one gpt-ds training step goes: forward / loss / backward / optimizer / ZeRO bookkeeping / data / host sync.

Builds gpt-ds's own engine (gpt_ds.engine.build_engine, ds_configs/zero2.json by default) on random
tokens, runs --warmup steps, then profiles --steps steps of exactly gpt_ds.train's step (train_step +
agree) under torch.profiler with labelled regions, and prints the mean milliseconds per step of each:

    data        gpt_ds.prefetch.Prefetcher._load: the window gather, pinning and the copy to the device
    forward     the model's forward without the head + loss
    loss        head + cross-entropy (gpt_ds.loss, or --loss plain: F.cross_entropy of full logits, the old way)
    backward    engine.backward without DeepSpeed's gradient hooks
    zero        ZeRO's bookkeeping: gradient hooks/reduction in the backward, and engine.step around the
                optimizer (flattening, overflow check, grad norm, clipping, bf16 <-> fp32 copies)
    optimizer   the wrapped torch optimizer's own step (AdamW)
    host sync   agree: the step's all-reduce and its one read back to the host

Run with one process, or with 2 ranks under the deepspeed launcher (rank 0 prints):

    python bench/profile_step.py --model tiny [--loss plain] [--precision fp32] [--ops 12]
    python -m deepspeed.launcher.runner --num_gpus 2 bench/profile_step.py --model small
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from bench.train import start_ranks  # noqa: E402
from gpt_ds import ds_config, model as model_module, sampler, settings as run_settings  # noqa: E402
from gpt_ds.plan import Plan  # noqa: E402
from gpt_ds.prefetch import Prefetcher  # noqa: E402
from gpt_ds.schedule import Schedule  # noqa: E402
from gpt_ds import engine as engine_module, train as train_module  # noqa: E402
from gpt_ds.config_variant import write_variant  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("data", "forward", "loss", "backward", "zero.backward", "zero.step", "optimizer", "host sync")


def labelled(label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def plain_cross_entropy(hidden, weight, targets, *, vocab_size, softcap=None, ignore_index=-100, chunk_rows=None):
    """The loss before gpt_ds.loss: full (N, V) logits, their float32 copy, F.cross_entropy."""
    logits = F.linear(hidden, weight)[:, :vocab_size].float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


def instrument(engine, loss: str) -> None:
    """Label the regions; nothing else changes."""
    ce = plain_cross_entropy if loss == "plain" else model_module.chunked_cross_entropy
    model_module.chunked_cross_entropy = labelled("loss", ce)
    Prefetcher._load = labelled("data", Prefetcher._load)  # the gather, pinning and copy; looked up at each call
    zero = engine.optimizer
    for name in ("reduce_independent_p_g_buckets_and_remove_grads", "reduce_ready_partitions_and_remove_grads",
                 "reduce_ipg_grads"):
        if hasattr(zero, name):
            setattr(zero, name, labelled("zero.backward", getattr(zero, name)))
    inner = getattr(zero, "optimizer", None)
    if inner is not None and hasattr(inner, "step"):
        inner.step = labelled("optimizer", inner.step)
    engine.forward = labelled("forward", engine.forward)
    engine.backward = labelled("backward", engine.backward)
    engine.step = labelled("zero.step", engine.step)


def exclusive_ms(prof, steps: int) -> dict[str, float]:
    """Per label: its time minus that of the labels nested in it, in ms per step."""
    total = {label: 0.0 for label in LABELS}
    for event in prof.key_averages():
        if event.key in total:
            total[event.key] += event.cpu_time_total / 1e3 / steps
    # nesting: loss in forward, zero.backward in backward, optimizer in zero.step
    total["forward"] -= total["loss"]
    total["backward"] -= total["zero.backward"]
    total["zero.step"] -= total["optimizer"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--deepspeed_config", default=str(ROOT / "ds_configs" / "zero2.json"))
    parser.add_argument("--precision", choices=("config", "fp32", "bf16"), default="config",
                        help="override the config's precision")
    parser.add_argument("--loss", choices=("chunked", "plain"), default="chunked")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ops", type=int, default=0, help="also print the top N ops by self CPU time")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    def set_precision(config: dict) -> None:  # --precision fp32|bf16 replaces the config's own
        if args.precision != "config":
            config.pop("fp16", None)
            config["bf16"] = {"enabled": args.precision == "bf16"}

    config_path = write_variant(Path(tempfile.mkdtemp()) / "ds.json", Path(args.deepspeed_config), set_precision)
    config = json.loads(config_path.read_text())

    dist_env = start_ranks()
    from gpt_ds.model import config_from_preset

    settings = run_settings.RunSettings(deepspeed_config=str(config_path), data="(random tokens)", out="(none)",
                                        model=args.model)
    model_config = config_from_preset(args.model, **settings.shape_overrides)
    tokens = np.random.default_rng(0).integers(0, 50257, size=4_000_000, dtype=np.uint16)
    plan = Plan(settings, ds_config.resolve(config, config_path, dist_env.world_size), model_config,
                model_config.block_size, Schedule(peak=1e-3, floor=1e-4, warmup=10, decay_steps=1000),
                sampler.TokenWindows([tokens], model_config.block_size), None, None, dist_env.world_size)
    engine = engine_module.build_engine(plan)
    instrument(engine, args.loss)
    batches = train_module.prefetcher(plan, dist_env.rank, engine.device)

    def step(i: int) -> None:
        engine_module.set_lr(engine, plan.schedule.lr(i))
        local = train_module.train_step(engine, batches, i)
        with record_function("host sync"):
            train_module.agree(local, False)

    for i in range(args.warmup):
        step(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for i in range(args.warmup, args.warmup + args.steps):
            step(i)
    wall = (time.perf_counter() - started) / args.steps * 1e3
    if dist_env.rank != 0:
        return
    ms = exclusive_ms(prof, args.steps)
    accounted = sum(ms.values())
    print(f"model {args.model}, {dist_env.world_size} rank(s) x {torch.get_num_threads()} thread(s), batch "
          f"{plan.micro_batch} x {plan.seq_len} per rank, {plan.precision}, ZeRO {config['zero_optimization']['stage']}, "
          f"loss {args.loss}; mean of {args.steps} profiled steps")
    print(f"{'region':<34s}{'ms/step':>10s}{'share':>8s}")
    names = {"zero.backward": "ZeRO bookkeeping (backward hooks)", "zero.step": "ZeRO bookkeeping (step)",
             "optimizer": "optimizer (AdamW)"}
    for label in LABELS:
        print(f"{names.get(label, label):<34s}{ms[label]:10.1f}{ms[label] / wall:8.1%}")
    print(f"{'other (lr, python, profiler)':<34s}{wall - accounted:10.1f}{(wall - accounted) / wall:8.1%}")
    print(f"{'step (wall, profiled)':<34s}{wall:10.1f}")
    if args.ops:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


if __name__ == "__main__":
    main()
