"""Small real runs for the app's tests: a randomly initialised tiny GPT saved with
gpt_ds.model_io.save_model, its training record written as the project writes it
(`RunRecord(...).to_dict()` as the model folder's metadata), and TensorBoard events written by the
project's own writer (`gpt_ds.metrics.TensorBoard`, tags from `gpt_ds.tags`), so a renamed tag or
record field cannot leave the app broken while its tests pass. A chat run's model (chat=True) is the
`tiny` preset with the chat vocabulary, saved with the chat template: what the app's chat page talks to.

Importing this module also puts app/ first on sys.path, as `streamlit run app/app.py` does, so the
page's modules (discovery, card, curves, controls, charts) import as the page imports them.

Shared by tests/test_inference.py, tests/test_chat.py, tests/test_app_*.py, tests/test_app.py and
tests/test_app_browser.py.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import torch

from gpt_ds import tags
from gpt_ds.metrics import TensorBoard
from gpt_ds.model import GPT, MODERN_RECIPE, GPTConfig, config_from_preset
from gpt_ds.model_io import save_model
from gpt_ds.record import RunRecord
from gpt_ds.run_dir import RunDir
from gpt_ds.tokenizer import CHAT_TEMPLATE, CHAT_TOKEN_TEXT, CHAT_VOCAB_SIZE

APP_DIR = Path(__file__).resolve().parents[1] / "app"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

# Small enough to load and sample in milliseconds; the context is short so "too long" is easy to hit.
TINY_CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)
# The same shape with the modern recipe (rope, qk-norm, relu², untied head, softcap 30).
MODERN_TINY_CONFIG = dataclasses.replace(TINY_CONFIG, **MODERN_RECIPE)
MODERN_ARCHITECTURE = "modern: rope, qk-norm, relu², untied, softcap 30"
# A chat model: the tiny preset with the chat markers' rows, a context short enough to outgrow.
CHAT_CONFIG = dataclasses.replace(config_from_preset("tiny"), vocab_size=CHAT_VOCAB_SIZE, block_size=64)
TARGET_LOSS = 5.0
TARGET_STEP = 150  # the first val point at or below TARGET_LOSS
VAL_BPB = 1.25  # the record's final val bits per byte
STEPS = 200
TRAIN_TOKENS = STEPS * 8 * TINY_CONFIG.block_size


def train_loss_at(step: int) -> float:
    return 3.5 + 7.5 * math.exp(-step / 60)


def lr_at(step: int) -> float:
    return 6e-4 * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / STEPS)))


def make_run(run_dir: Path, seed: int = 0, with_tb: bool = True, config: GPTConfig | None = None, chat: bool = False) -> Path:
    """RUN_DIR with model/ (a tiny random GPT of `config` and its training record) and tb/; returns the
    model folder. A modern config's zero-initialised projections and head get random weights, as
    training would give them (else every continuation would be uniform noise). chat: a chat model of
    CHAT_CONFIG (unless `config` is given) whose markers' rows are zero, so that greedy replies run to
    their length rather than end at an <|end|> an untrained model would pick."""
    config = config or (CHAT_CONFIG if chat else TINY_CONFIG)
    run = RunDir(run_dir)
    if with_tb:
        board = TensorBoard(run.tb, enabled=True)
        for step in range(0, STEPS + 1, 10):
            board.scalars(step, {tags.TRAIN_LOSS: train_loss_at(step), tags.LR: lr_at(step)})
            if step % 50 == 0:
                board.scalars(step, {tags.VAL_LOSS: train_loss_at(step) + 0.1})
        board.close()
    torch.manual_seed(seed)
    record = RunRecord(
        step=STEPS,
        tokens=TRAIN_TOKENS,
        train_loss=train_loss_at(STEPS),
        val_loss=train_loss_at(STEPS) + 0.1,
        val_bpb=VAL_BPB,
        target_loss=TARGET_LOSS,
        target_step=TARGET_STEP,
        preset="tiny" if config.uses_gpt2_recipe else "modern-tiny",
    )
    model = GPT(config)
    if config.zero_init_proj or not config.tie_head:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("c_proj.weight") or name == "lm_head.weight":
                    p.normal_(0.0, 0.02)
    if chat:
        with torch.no_grad():
            model.transformer.wte.weight[min(CHAT_TOKEN_TEXT):] = 0
    return save_model(run.model, model, config, metadata=record.to_dict(), chat_template=CHAT_TEMPLATE if chat else None)
