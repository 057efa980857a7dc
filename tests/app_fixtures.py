"""Small real runs for the app's tests: a randomly initialised tiny GPT saved with
gpt_ds.model_io.save_model, and TensorBoard events written by torch's SummaryWriter.

Shared by tests/test_app_support.py, tests/test_app.py and tests/test_app_browser.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gpt_ds.model import GPT, GPTConfig
from gpt_ds.model_io import save_model

# Small enough to load and sample in milliseconds; the context is short so "too long" is easy to hit.
TINY_CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)
TARGET_LOSS = 5.0
TARGET_STEP = 150  # the first val point at or below TARGET_LOSS
STEPS = 200
TRAIN_TOKENS = STEPS * 8 * TINY_CONFIG.block_size


def train_loss_at(step: int) -> float:
    return 3.5 + 7.5 * math.exp(-step / 60)


def lr_at(step: int) -> float:
    return 6e-4 * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / STEPS)))


def make_run(run_dir: Path, seed: int = 0, with_tb: bool = True) -> Path:
    """RUN_DIR with model/ (a tiny random GPT and training metadata) and tb/; returns the model folder."""
    from torch.utils.tensorboard import SummaryWriter

    if with_tb:
        writer = SummaryWriter(str(run_dir / "tb"))
        for step in range(0, STEPS + 1, 10):
            writer.add_scalar("train/loss", train_loss_at(step), step)
            writer.add_scalar("train/lr", lr_at(step), step)
            if step % 50 == 0:
                writer.add_scalar("val/loss", train_loss_at(step) + 0.1, step)
        writer.close()
    torch.manual_seed(seed)
    metadata = {
        "preset": "tiny",
        "step": STEPS,
        "tokens": TRAIN_TOKENS,
        "train_loss": train_loss_at(STEPS),
        "val_loss": train_loss_at(STEPS) + 0.1,
        "target_loss": TARGET_LOSS,
        "target_reached": True,
        "target_step": TARGET_STEP,
    }
    return save_model(run_dir / "model", GPT(TINY_CONFIG), TINY_CONFIG, metadata=metadata)
