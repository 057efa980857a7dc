"""A reference test in the spirit of llm.c's test against PyTorch: 10 steps of launch/train.py (one
process, a real single-rank DeepSpeed engine, ZeRO-2 in fp32) against a plain PyTorch loop written
here from first principles, step for step.

Everything the training path decides is written out again below rather than imported, so a drift
in any of it fails this test: the initialisation seed, the two AdamW parameter groups (decay on
>= 2-D parameters only), AdamW's hyperparameters from the DeepSpeed config, gradient clipping, the
warmup + cosine schedule, gradient accumulation, and the batches (read from the llm.c shard files
with numpy, the step's global batch drawn from a (seed, step) stream and sliced per micro-step).
Only the model itself (gpt_ds.model.GPT) is shared: it is what is being trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from gpt_ds import metrics
from gpt_ds.config_variant import ZERO2, write_variant
from gpt_ds.model import GPT, PRESETS
from gpt_ds.model_io import load_model

REPO = Path(__file__).resolve().parents[1]

SEED, STEPS, WARMUP, PEAK_LR, BLOCK = 1234, 10, 3, 3e-3, 64
MICRO_BATCH, ACCUMULATION = 4, 2
TOLERANCE = dict(atol=1e-5, rtol=1e-5)
# The weights after 10 steps: a rare token's embedding row has a near-zero second moment, so Adam turns a
# rounding-level difference of its gradient (DeepSpeed's flat fp32 partition against per-tensor ones) into a
# visible one: measured up to 1.4e-5 on one element of wte (of 6.4M) with torch's fused Adam on both sides.
# A wrong hyperparameter, schedule or batch moves the weights by 1e-3 and more.
WEIGHT_TOLERANCE = dict(atol=3e-5, rtol=1e-5)


def fp32_zero2_config() -> dict:
    """ds_configs/zero2.json (ZeRO-2, AdamW, clipping, weight decay) with bf16 off: fp32 throughout."""
    config = json.loads(ZERO2.read_text())
    config["bf16"] = {"enabled": False}
    config["train_micro_batch_size_per_gpu"] = MICRO_BATCH
    config["gradient_accumulation_steps"] = ACCUMULATION
    assert config["zero_optimization"]["stage"] == 2 and config["optimizer"]["type"] == "AdamW"
    return config


# ---------------------------------------------------------------------------------------------
# the reference, written from the contracts


def read_llmc_shard(path: Path) -> np.ndarray:
    """An llm.c shard: 256 little-endian int32 (magic 20240520, version 1, token count), then uint16."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1
    tokens = np.fromfile(path, dtype="<u2", offset=1024)
    assert len(tokens) == header[2]
    return tokens


def reference_batches(data: Path, step: int, rank: int = 0, world_size: int = 1) -> list[tuple[torch.Tensor,
                                                                                           torch.Tensor]]:
    """The micro-batches of `step` on `rank`: the step's global batch (MICRO_BATCH x ACCUMULATION x world_size
    windows of BLOCK + 1 tokens) at global start offsets drawn from PCG64(SeedSequence([seed, step])),
    numbered shard after shard (a shard of n tokens holds n - BLOCK starts; shards no longer than BLOCK hold
    none); micro-step m of rank r takes the MICRO_BATCH rows from (m * world_size + r) * MICRO_BATCH."""
    manifest = json.loads((data / "manifest.json").read_text())
    shards = [read_llmc_shard(data / s["name"]) for s in manifest["splits"]["train"]["shards"]]
    shards = [s for s in shards if len(s) > BLOCK]
    starts_per_shard = [len(s) - BLOCK for s in shards]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([SEED, step])))
    drawn = rng.integers(0, sum(starts_per_shard), size=MICRO_BATCH * ACCUMULATION * world_size)
    batches = []
    for micro_step in range(ACCUMULATION):
        first = (micro_step * world_size + rank) * MICRO_BATCH
        rows = []
        for index in drawn[first : first + MICRO_BATCH]:
            shard = 0
            while index >= starts_per_shard[shard]:
                index -= starts_per_shard[shard]
                shard += 1
            rows.append(shards[shard][index : index + BLOCK + 1].astype(np.int64))
        window = torch.from_numpy(np.stack(rows))
        batches.append((window[:, :-1], window[:, 1:]))
    return batches


def reference_lr(step: int, peak: float, floor: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup (step 0 already at peak / warmup), cosine from peak to floor at decay_steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= decay_steps:
        return floor
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * (step - warmup) / (decay_steps - warmup)))


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """Scale the gradients by max_norm / (norm + 1e-6) where that is below 1 (torch's and DeepSpeed's
    rule), with the global norm accumulated in float64. Not torch.nn.utils.clip_grad_norm_: its fp32
    norm is off by up to ~5e-5 relative here (6.9265046 vs 6.9265383 at step 1, dominated by the 6.4M
    elements of wte), while DeepSpeed's ZeRO-2 norm matches the exact one; through AdamW that moves
    rare tokens' embeddings by up to 1e-4 in 10 steps, ten times the tolerance."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads)).float()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)


def reference_run(data: Path, config: dict) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Plain PyTorch: the per-step mean losses and the final weights."""
    params = config["optimizer"]["params"]
    torch.manual_seed(SEED)
    model = GPT(dataclasses.replace(PRESETS["tiny"], block_size=BLOCK))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": params["weight_decay"]},
         {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}],
        # torch's fused kernel: the one gpt_ds.zero_step.use_fused_adam switches DeepSpeed's AdamW to
        lr=PEAK_LR, betas=tuple(params["betas"]), eps=params["eps"], fused=True)
    losses = []
    for step in range(STEPS):
        lr = reference_lr(step, PEAK_LR, PEAK_LR / 10, WARMUP, STEPS)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for x, y in reference_batches(data, step):
            _, loss = model(x, y)
            (loss / ACCUMULATION).backward()
            total += loss.item()
        clip_grad_norm(trainable, config["gradient_clipping"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total / ACCUMULATION)
    return losses, {name: t.detach().clone() for name, t in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------


def test_train_py_matches_a_plain_pytorch_loop(reference_shards, tmp_path):
    config = fp32_zero2_config()
    config_path = write_variant(tmp_path / "zero2_fp32.json", **config)
    run_dir = tmp_path / "run"
    data_dir = reference_shards
    command = [sys.executable, str(REPO / "launch" / "train.py"), "--deepspeed_config", str(config_path),
               "--data", str(data_dir), "--out", str(run_dir), "--model", "tiny", "--block-size", str(BLOCK),
               "--seed", str(SEED), "--max-steps", str(STEPS), "--warmup-steps", str(WARMUP), "--lr", str(PEAK_LR),
               "--log-interval", "1", "--eval-interval", "1000000", "--save-interval", "1000000",
               "--sample-tokens", "0"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    losses = metrics.read_scalars(run_dir / "tb")["train/loss"]
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    model, info = load_model(run_dir / "model")
    assert info.metadata["precision"] == "fp32" and info.metadata["world_size"] == 1

    expected_losses, expected_weights = reference_run(data_dir, config)
    torch.testing.assert_close(torch.tensor([v for _, v in losses], dtype=torch.float64),
                               torch.tensor(expected_losses, dtype=torch.float64), **TOLERANCE)
    assert expected_losses[-1] < expected_losses[0] - 1  # it learned: the comparison is not of a flat line

    weights = model.state_dict()
    vocab = model.config.vocab_size  # the export keeps the real rows of the padded embedding
    weights["transformer.wte.weight"] = weights["transformer.wte.weight"][:vocab]
    expected_weights["transformer.wte.weight"] = expected_weights["transformer.wte.weight"][:vocab]
    assert weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, **WEIGHT_TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")
