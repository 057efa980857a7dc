"""Tests of gpt_ds.model: config and presets, parameter counts, causality, loss, init, training hooks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gpt_ds.errors import UserError
from gpt_ds.model import GPT, PRESETS, GPTConfig, KVCache, config_from_preset

# Small enough to run in milliseconds, with a vocabulary that is not a multiple of 64 so padding shows.
SMALL = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=100)


def closed_form_params(c: GPTConfig) -> int:
    """GPT-2's parameter count from its shape: per block 12 C^2 matrix weights (QKV 3C^2, proj C^2,
    MLP 8C^2), plus biases 9C (QKV 3C, proj C, MLP 4C + C) and two LayerNorms 4C when bias, else 2C
    of LayerNorm gains; embeddings V*C + T*C (head tied); final LayerNorm 2C (C without bias)."""
    C = c.n_embd
    per_block = 12 * C * C + (13 * C if c.bias else 2 * C)
    return c.vocab_size * C + c.block_size * C + c.n_layer * per_block + (2 * C if c.bias else C)


def meta_model(config: GPTConfig) -> GPT:
    with torch.device("meta"):  # shapes only: gpt2-xl costs no memory
        return GPT(config)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_matches_the_closed_form_parameter_count(name):
    config = PRESETS[name]
    model = meta_model(config)
    assert model.num_params() == closed_form_params(config)
    embeddings = (config.vocab_size + config.block_size) * config.n_embd
    assert model.num_params(non_embedding=True) == closed_form_params(config) - embeddings


def test_gpt2_is_the_124M_model_and_bias_free_counts_match():
    assert meta_model(PRESETS["gpt2"]).num_params() == 124_439_808  # as GPT-2 / Hugging Face count it
    no_bias = config_from_preset("gpt2", bias=False)
    assert meta_model(no_bias).num_params() == closed_form_params(no_bias)
    assert PRESETS["gpt2"].padded_vocab_size == 50304
    small = meta_model(PRESETS["small"]).num_params(non_embedding=True)
    assert 1_000_000 <= small <= 10_000_000  # "a few million non-embedding parameters"


def test_flops_per_token_is_6N_plus_the_attention_term():
    config = PRESETS["gpt2"]
    model = meta_model(config)
    N = model.num_params(non_embedding=True) + config.vocab_size * config.n_embd  # the head is a matmul
    assert model.flops_per_token() == 6 * N + 12 * 12 * 768 * 1024
    assert model.flops_per_token(seq_len=256) == 6 * N + 12 * 12 * 768 * 256


def test_config_validation_and_round_trip():
    with pytest.raises(UserError, match="unknown model preset 'gpt5'.*gpt2, gpt2-medium.*tiny, small"):
        config_from_preset("gpt5")
    with pytest.raises(UserError, match=r"n_embd \(100\) must be divisible by n_head \(3\)"):
        config_from_preset("tiny", n_embd=100, n_head=3)
    with pytest.raises(UserError, match="unknown model config field.*n_layers"):
        config_from_preset("tiny", n_layers=3)
    with pytest.raises(UserError, match="dropout"):
        config_from_preset("tiny", dropout=1.5)
    with pytest.raises(UserError, match="block_size must be a positive integer"):
        config_from_preset("tiny", block_size=0)
    changed = config_from_preset("gpt2", block_size=256, dropout=0.1)
    assert (changed.block_size, changed.dropout, changed.n_layer) == (256, 0.1, 12)
    assert PRESETS["gpt2"].block_size == 1024  # presets are not modified by overrides
    assert GPTConfig.from_dict(changed.to_dict()) == changed
    with pytest.raises(UserError, match="missing field.*n_head"):
        GPTConfig.from_dict({"n_layer": 1, "n_embd": 8, "block_size": 8})
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["gpt2"].n_layer = 1


def test_changing_token_t_never_changes_earlier_logits():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(0, SMALL.vocab_size, (1, SMALL.block_size))
    logits, _ = model(idx)
    for t in (0, 5, SMALL.block_size - 1):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % SMALL.vocab_size
        changed_logits, _ = model(changed)
        torch.testing.assert_close(changed_logits[:, :t], logits[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(changed_logits[:, t], logits[:, t])  # the change is seen from t on


def test_logits_and_loss_cover_the_real_vocabulary_only():
    torch.manual_seed(0)
    model = GPT(SMALL)
    assert model.transformer.wte.weight.shape[0] == 128  # padded to a multiple of 64
    idx = torch.randint(0, SMALL.vocab_size, (2, 8))
    targets = torch.randint(0, SMALL.vocab_size, (2, 8))
    logits, _ = model(idx)
    none, loss = model(idx, targets)
    assert none is None  # with targets only the loss: gpt_ds.loss never makes the logits
    assert logits.shape == (2, 8, SMALL.vocab_size)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, SMALL.vocab_size), targets.reshape(-1)))
    # Huge padding rows would dominate any softmax they entered: logits and loss must not move.
    with torch.no_grad():
        model.transformer.wte.weight[SMALL.vocab_size :] = 1e4
    (logits2, _), (_, loss2) = model(idx), model(idx, targets)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(loss2, loss)


def test_loss_skips_ignored_targets_and_starts_near_log_vocab():
    torch.manual_seed(0)
    config = config_from_preset("tiny", block_size=32)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (2, 32))
    targets = torch.randint(0, config.vocab_size, (2, 32))
    (logits, _), (_, loss) = model(idx), model(idx, targets)
    assert abs(loss.item() - math.log(config.vocab_size)) < 0.1  # the N(0, 0.02) init is near-uniform
    masked = targets.clone()
    masked[:, ::2] = -1
    _, masked_loss = model(idx, masked, ignore_index=-1)
    keep = masked != -1
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(masked_loss, expected)


def test_init_depends_only_on_the_seed_and_follows_gpt2():
    torch.manual_seed(1)
    a = GPT(SMALL).state_dict()
    torch.manual_seed(1)
    b = GPT(SMALL).state_dict()
    torch.manual_seed(2)
    c = GPT(SMALL).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.h.0.attn.c_attn.weight"], c["transformer.h.0.attn.c_attn.weight"])

    torch.manual_seed(0)
    config = config_from_preset("small", n_layer=4, block_size=64)
    model = GPT(config)
    block = model.transformer.h[0]
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    assert abs(block.mlp.c_fc.weight.std().item() - 0.02) < 0.001
    assert abs(block.attn.c_proj.weight.std().item() - residual_std) < 0.001
    assert abs(block.mlp.c_proj.weight.std().item() - residual_std) < 0.001
    assert torch.count_nonzero(block.attn.c_attn.bias) == 0
    assert torch.equal(block.ln_1.weight, torch.ones(256))


def test_param_groups_decay_matrices_only_and_cover_every_parameter_once():
    model = GPT(SMALL)
    decay, no_decay = model.param_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    torch.optim.AdamW(model.param_groups(0.1), lr=1e-3)  # accepted as optimizer groups


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GPT(SMALL)
    idx = torch.randint(0, SMALL.vocab_size, (2, 16))
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_activation_checkpointing(enabled)
        model(idx, idx)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)


def test_cached_chunks_equal_one_full_pass():
    # Generation feeds the cache a prompt, then single tokens; any chunking must match the full pass.
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    idx = torch.randint(0, SMALL.vocab_size, (2, 16))
    with torch.no_grad():
        full = model.hidden_states(idx)
        cache = KVCache(SMALL, batch_size=2, device="cpu", dtype=torch.float32)
        chunks = [model.hidden_states(idx[:, a:b], cache) for a, b in ((0, 5), (5, 6), (6, 11), (11, 16))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 16
    with pytest.raises(ValueError, match="longer than the context"):
        model.hidden_states(idx[:, :1], cache)


def test_attention_weights_are_causal_distributions():
    torch.manual_seed(0)
    model = GPT(SMALL)
    weights = model.attention_weights(torch.randint(0, SMALL.vocab_size, (10,)))
    assert weights.shape == (2, 2, 10, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 10))
    assert torch.count_nonzero(weights.triu(diagonal=1)) == 0
    with pytest.raises(ValueError, match="one sequence"):
        model.attention_weights(torch.zeros(2, 4, dtype=torch.long))


def test_bfloat16_autocast_keeps_the_loss_in_float32():
    torch.manual_seed(0)
    model = GPT(SMALL)
    idx = torch.randint(0, SMALL.vocab_size, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (logits, _), (_, loss) = model(idx), model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
