"""gpt_ds.bpb (bits per byte) by hand, and the Validator's val loss and bpb on a real one-rank engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt_ds.bpb import bits_per_byte, bpb_sums, token_byte_lengths
from gpt_ds.tokenizer import EOT_TOKEN


def test_byte_lengths_of_tokens_and_of_the_end_of_text(encoding):
    lengths = token_byte_lengths(50304)  # a padded vocabulary: the ids beyond the encoding decode to nothing
    assert lengths.shape == (50304,) and lengths.dtype == torch.int64
    assert lengths[EOT_TOKEN] == 0 and int(lengths[50257:].sum()) == 0
    ids = encoding.encode("héllo, wörld")
    assert [int(lengths[i]) for i in ids] == [len(encoding.decode_single_token_bytes(i)) for i in ids]
    assert int(lengths[ids].sum()) == len("héllo, wörld".encode())  # é and ö are 2 bytes each


def test_bits_per_byte_of_a_tiny_case_by_hand(encoding):
    hello, world = encoding.encode("hello"), encoding.encode(" world")  # one token each: 5 and 6 bytes
    assert len(hello) == len(world) == 1
    targets = torch.tensor([hello[0], EOT_TOKEN, world[0]])
    losses = torch.tensor([2.0, 7.0, 3.0])  # nats; the end-of-text's 7.0 is left out
    sums = bpb_sums(losses, targets, token_byte_lengths(50257))
    assert sums.tolist() == [5.0, 11.0]
    assert bits_per_byte(*sums.tolist()) == pytest.approx((2.0 + 3.0) / math.log(2) / 11)
    assert bits_per_byte(0.0, 0.0) is None


@pytest.mark.usefixtures("encoding")
def test_validator_loss_and_bpb_equal_a_plain_computation(tmp_path):
    """One rank, a real DeepSpeed engine (ZeRO-2, fp32): the Validator's mean loss and bpb over its windows,
    against the plain model's logits and F.cross_entropy over the same windows."""
    import os

    from gpt_ds import distributed, ds_config, sampler, settings as run_settings
    from gpt_ds.config_variant import write_variant
    from gpt_ds.engine import build_engine
    from gpt_ds.model import config_from_preset
    from gpt_ds.plan import Plan
    from gpt_ds.schedule import Schedule
    from gpt_ds.validate import Validator

    path = write_variant(tmp_path / "ds.json", train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1,
                         bf16={"enabled": False})
    environ = dict(os.environ)  # fill_env sets RANK, MASTER_PORT...: not for later tests' training subprocesses
    try:
        distributed.init(distributed.fill_env())
        settings = run_settings.RunSettings(deepspeed_config=str(path), data="(random tokens)", out="(none)",
                                            model="tiny", block_size=32, eval_tokens=5 * 32)
        tokens = np.random.default_rng(0).integers(0, 50257, size=2_000, dtype=np.uint16)
        tokens[::7] = EOT_TOKEN  # documents of 6 tokens
        windows = sampler.TokenWindows([tokens], 32)
        plan = Plan(settings, ds_config.resolve(ds_config.load(path), path, 1), config_from_preset("tiny", block_size=32),
                    32, Schedule(peak=1e-3, floor=1e-4, warmup=1, decay_steps=10), windows, windows, None, 1)
        engine = build_engine(plan)
        val_loss, val_bpb = Validator(plan, 0).loss(engine)
    finally:
        os.environ.clear()
        os.environ.update(environ)

    lengths = token_byte_lengths(50257)
    nats, n_tokens, counted, n_bytes = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for x, y in sampler.val_batches(windows, 5 * 32, 2, rank=0, world_size=1):
            logits, _ = engine.module(x)
            losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").double()
            nats, n_tokens = nats + losses.sum().item(), n_tokens + y.numel()
            keep = y.flatten() != EOT_TOKEN
            counted, n_bytes = counted + losses[keep].sum().item(), n_bytes + int(lengths[y.flatten()].sum())
    assert n_tokens == 5 * 32 and 0 < (y == EOT_TOKEN).sum() < y.numel()
    assert val_loss == pytest.approx(nats / n_tokens, rel=1e-5)
    assert val_bpb == pytest.approx(counted / math.log(2) / n_bytes, rel=1e-5)
