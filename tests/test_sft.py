"""Supervised fine-tuning on conversations through the one trainer: a chat folder (`python -m data_prep --format
chat`) gives windows that train only the assistant's tokens (gpt_ds.sampler.ChatWindows), the loss is the mean over
the global batch's trained tokens on any world size and accumulation, a run resumes exactly, and its model folder
is a chat model (its vocabulary grown to the chat markers, its template recorded)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt_ds import metrics
from gpt_ds.config_variant import write_variant
from gpt_ds.data import open_masks, open_split
from gpt_ds.model import GPT, GPTConfig
from gpt_ds.model_io import read_model_info, save_model
from gpt_ds.loss import IGNORE_INDEX
from gpt_ds.sampler import ChatWindows, TrainStream
from gpt_ds.tokenizer import CHAT_TEMPLATE, CHAT_VOCAB_SIZE, EOT_TOKEN, ROLE_TOKENS
from test_train import TRAIN, assert_close_run, deepspeed_command, load_weights, run_ok, train_args

BLOCK = 48


def conversations(n: int, seed: int) -> list[dict]:
    """Arithmetic chats of varied lengths (one or two turns, some with a system message), so micro-batches hold
    different numbers of trained tokens: a per-micro-batch mean would differ from the global mean."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": "Answer with the number."}] if rng.random() < 0.3 else []
        for _turn in range(rng.choice((1, 1, 2))):
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            messages += [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f" {a} plus {b} is {a + b}." * rng.choice((1, 2))}]
        out.append({"messages": messages})
    return out


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory, encoding) -> Path:
    folder = tmp_path_factory.mktemp("chat")
    source = folder / "chats.jsonl"
    source.write_text("".join(json.dumps(c) + "\n" for c in conversations(400, seed=3)))
    out = folder / "data"
    subprocess.run([sys.executable, "-m", "data_prep", "--format", "chat", "--input", str(source), "--out", str(out),
                    "--val-fraction", "0.1", "--workers", "1", "--quiet"], check=True, timeout=120)
    return out


def fp32_config(folder: Path, micro_batch: int, accumulation: int) -> Path:
    return write_variant(folder / f"fp32_mb{micro_batch}_ga{accumulation}.json", train_micro_batch_size_per_gpu=micro_batch,
                         gradient_accumulation_steps=accumulation, bf16={"enabled": False})


# ---- the windows and the loss (fast) ----------------------------------------------------------------------

def test_windows_are_conversations_that_train_only_the_assistant(chat_data):
    shards, masks = open_split(chat_data, "train"), open_masks(chat_data, "train")
    windows = ChatWindows(shards, masks, BLOCK)
    assert windows.num_windows == int(sum((np.asarray(s) == EOT_TOKEN).sum() for s in shards))
    x, y = windows.batch(np.arange(windows.num_windows))
    assert (x[:, 0] == EOT_TOKEN).all()
    trained = y != IGNORE_INDEX
    assert int(trained.sum()) == windows.trained_tokens(np.arange(windows.num_windows)) > 0
    # a trained target is never a user's, a system's or a role marker, and every window trains something
    assert not torch.isin(y[trained], torch.tensor(list(ROLE_TOKENS.values()))).any()
    assert trained.any(dim=1).all()
    # each window is one conversation: after its own tokens, padding (<|endoftext|>) that no loss counts
    for row in range(len(x)):
        ends = (x[row, 1:] == EOT_TOKEN).nonzero()
        if len(ends):
            start = int(ends[0]) + 1
            assert (x[row, start:] == EOT_TOKEN).all() and (y[row, start - 1:] == IGNORE_INDEX).all()


def test_the_loss_is_the_mean_over_the_global_batchs_trained_tokens(chat_data):
    """Each micro-batch's sum over the global batch's trained tokens: summed over the micro-batches it is the
    masked mean of the whole batch, whatever the split (the plain mean of means is not)."""
    windows = ChatWindows(open_split(chat_data, "train"), open_masks(chat_data, "train"), BLOCK)
    stream = TrainStream(windows, global_batch=8, seed=1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=CHAT_VOCAB_SIZE))
    x, y = stream.micro_batch(0, 8)
    logits, _ = model(x)
    masked_mean = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)
    trained = stream.trained_tokens(0)
    assert trained == int((y != IGNORE_INDEX).sum())
    parts = [model(*stream.micro_batch(0, 2, rank=r, world_size=2, micro_step=m), loss_divisor=trained)[1]
             for r in range(2) for m in range(2)]
    torch.testing.assert_close(sum(parts), masked_mean)
    means = [model(*stream.micro_batch(0, 2, rank=r, world_size=2, micro_step=m))[1] for r in range(2) for m in range(2)]
    assert abs(float(sum(means).detach() / 4 - masked_mean.detach())) > 1e-4  # the counts differ between micro-batches


# ---- through DeepSpeed -----------------------------------------------------------------------------------

COMMON = dict(block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, warmup_steps=2, lr=3e-3, eval_tokens=4 * BLOCK,
              log_interval=1, sample_tokens=0, eval_interval=4, save_interval=2)


@pytest.mark.slow
def test_two_ranks_equal_one_rank_accumulating_and_a_resume_is_exact(chat_data, tmp_path):
    """fp32, a global batch of 8 conversations: 2 ranks x micro-batch 4, 1 rank x 2 micro-batches of 4 and 1 rank x
    one micro-batch of 8 give the same per-step losses and weights (the reduction order is the only difference;
    a mean per micro-batch would set the last apart); 2N steps on one rank equal N, then a resume to 2N, bit for
    bit. The model folder is a chat model: template recorded, vocabulary grown."""
    n = 4
    two, one, whole = fp32_config(tmp_path, 4, 1), fp32_config(tmp_path, 4, 2), fp32_config(tmp_path, 8, 1)
    args = lambda out, config, steps: train_args(chat_data, out, config, **COMMON, max_steps=steps,  # noqa: E731
                                                 lr_decay_steps=2 * n)
    run_ok(deepspeed_command(args(tmp_path / "two", two, 2 * n), 2), tmp_path)
    run_ok([sys.executable, TRAIN, *args(tmp_path / "one", one, 2 * n)], tmp_path)
    run_ok([sys.executable, TRAIN, *args(tmp_path / "whole", whole, 2 * n)], tmp_path)
    assert_close_run(tmp_path / "one", tmp_path / "two", 1e-5, 1e-5)
    assert_close_run(tmp_path / "whole", tmp_path / "two", 1e-5, 1e-5)

    resumed = tmp_path / "resumed"
    run_ok([sys.executable, TRAIN, *args(resumed, one, n)], tmp_path)
    run_ok([sys.executable, TRAIN, *args(resumed, one, 2 * n)], tmp_path)
    a, b = load_weights(tmp_path / "one" / "model"), load_weights(resumed / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)

    info = read_model_info(tmp_path / "one" / "model")
    assert info.chat_template == CHAT_TEMPLATE and info.config.vocab_size == CHAT_VOCAB_SIZE
    val = metrics.read_scalars(tmp_path / "one" / "tb")["val/loss"]
    assert len(val) == 2 and val[-1][1] < val[0][1]  # the val conversations' masked loss falls


@pytest.mark.slow
def test_a_base_model_is_fine_tuned_into_a_chat_model(chat_data, tmp_path):
    """--init-from a base model (GPT-2's 50,257 tokens): the run grows the vocabulary to the chat markers (their
    rows start at the mean row) and trains them; the folder records the template and its parent."""
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK)
    torch.manual_seed(5)
    base = save_model(tmp_path / "base", GPT(config), config, metadata={"step": 10})
    out = tmp_path / "sft"
    output = run_ok([sys.executable, TRAIN, *train_args(chat_data, out, fp32_config(tmp_path, 4, 2), max_steps=4,
                                                        init_from=base, log_interval=1, sample_tokens=0,
                                                        eval_interval=4, eval_tokens=4 * BLOCK)], tmp_path)
    info = read_model_info(out / "model")
    assert info.chat_template == CHAT_TEMPLATE and info.config.vocab_size == CHAT_VOCAB_SIZE, output[-2000:]
    assert info.metadata["init_from"]["folder"].endswith("base")
    weights = load_weights(out / "model")["transformer.wte.weight"]
    assert weights.shape[0] == CHAT_VOCAB_SIZE
