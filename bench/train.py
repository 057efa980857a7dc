"""Faster to the same loss: tokens/s of gpt-ds's default training step against a plain PyTorch loop.

The baseline is what a ~300-line GPT-2 script does on a CPU (nanoGPT's train.py): the model written
out here (same shape: layers, heads, width, context, GPT-2's vocabulary padded to 50304, tied head),
float32, the (B*T, V) logits into F.cross_entropy, loss.backward(), clip_grad_norm_, torch.optim.AdamW,
no compile, loss.item() every step. gpt-ds's side is its own default step: the engine from
ds_configs/zero2.json (bf16 ZeRO-2) built by gpt_ds.train.build_engine, gpt_ds.train.train_step
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
import math
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gpt_ds import distributed, metrics, sampler, settings as run_settings  # noqa: E402
from gpt_ds.plan import Plan  # noqa: E402
from gpt_ds.schedule import Schedule  # noqa: E402
from gpt_ds.train import agree, build_engine, set_lr, train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ---- the plain script's model (nanoGPT's, condensed) --------------------------------------------

class PlainBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.c_attn, self.attn_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int = 50304) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([PlainBlock(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def plain_loop(plan: Plan, batch: int, device: torch.device):
    """The baseline's step over `batch` rows (the global batch), fp32, torch.optim.AdamW."""
    cfg = plan.model_config
    torch.manual_seed(plan.settings.seed)
    model = PlainGPT(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    params = plan.ds_config["optimizer"]["params"]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": params.get("weight_decay", 0.1)},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=params["lr"],
                                  betas=tuple(params["betas"]), eps=params["eps"])

    def step(index: int) -> float:
        x, y = sampler.train_batch(plan.train, batch, seed=plan.settings.seed, step=index, rank=0, micro_step=0)
        loss = model(x.to(device), y.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def make_plan(args: argparse.Namespace, world_size: int) -> Plan:
    from gpt_ds.model import config_from_preset

    settings = run_settings.RunSettings(deepspeed_config=args.deepspeed_config, data="(random tokens)", out="(none)",
                                        model=args.model, block_size=args.block_size, compile=args.compile)
    model_config = config_from_preset(args.model, **settings.shape_overrides)
    tokens = np.random.default_rng(0).integers(0, 50257, size=4_000_000, dtype=np.uint16)
    return Plan(settings, run_settings.resolve_ds_config(args.deepspeed_config, world_size), model_config,
                model_config.block_size, Schedule(peak=1e-3, floor=1e-4, warmup=10, decay_steps=1000),
                sampler.TokenWindows([tokens], model_config.block_size), None, None, world_size)


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

    dist_env = distributed.fill_env()
    distributed.share_cpu_threads(dist_env)
    distributed.init(dist_env)
    rank, world = dist_env.rank, dist_env.world_size
    device = distributed.device()
    plan = make_plan(args, world)
    engine = build_engine(plan)
    ds_threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    plain_step = plain_loop(plan, plan.micro_batch * world, device) if rank == 0 else None

    def ds_step(i: int) -> None:
        set_lr(engine, plan.schedule.lr(i))
        agree(train_step(engine, plan, i, rank), False)

    def plain(i: int) -> None:
        if plain_step is not None:
            torch.set_num_threads(cores if world > 1 and device.type == "cpu" else ds_threads)
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
    peaks = {"plain": metrics.device_peak_flops(torch.float32), "gpt-ds": metrics.device_peak_flops(dtype)}
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in med.items()}
    print(f"model {args.model} (block {plan.seq_len}), global batch {plan.micro_batch * world} x {plan.seq_len} tokens, "
          f"{args.device}; gpt-ds: {world} rank(s) x {ds_threads} thread(s), {plan.precision}, ZeRO stage "
          f"{plan.ds_config['zero_optimization']['stage']}{', compiled' if args.compile else ''}; plain: 1 process x "
          f"{cores if world > 1 and device.type == 'cpu' else ds_threads} thread(s), fp32; {args.steps} steps per side, "
          "alternating; MFU of each side against the peak of its own precision:")
    for name in ("plain", "gpt-ds"):
        peak, source = peaks[name]
        print(f"{name:7s}: median step {med[name] * 1e3:8.1f} ms  {tps[name]:10,.0f} tokens/s  "
              f"MFU {tps[name] * flops_per_token / peak:6.1%} of {peak / 1e12:.2f} TFLOP/s ({source})")
    print(f"gpt-ds / plain tokens/s: {tps['gpt-ds'] / tps['plain']:.2f}x")


if __name__ == "__main__":
    main()
