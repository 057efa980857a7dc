"""Tests of gpt_ds.model: config and presets, parameter counts, causality, loss, init, training hooks,
for GPT-2 and the opt-in modern recipe (rope, qk-norm, relu², zero-init projections, untied head, softcap)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gpt_ds.errors import UserError
from gpt_ds.checkpoint import check_same_model
from gpt_ds.model import (
    GPT,
    GPT2_RECIPE,
    MODERN_RECIPE,
    PRESETS,
    GPTConfig,
    KVCache,
    apply_rotary,
    config_from_preset,
    rotary_cos_sin,
)

# Small enough to run in milliseconds, with a vocabulary that is not a multiple of 64 so padding shows.
SMALL = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=100)
MODERN = dataclasses.replace(SMALL, **MODERN_RECIPE)
BOTH = pytest.mark.parametrize("config", [SMALL, MODERN], ids=["gpt2", "modern"])
# What config.json / a checkpoint's client state held for a model before the recipe fields existed.
OLD_GPT2_DICT = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257,
                 "dropout": 0.0, "bias": True}


def randomised(model: GPT, std: float = 0.3) -> GPT:
    """Every weight random (a fresh modern model has zero projections and a zero head: flat logits)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def closed_form_params(c: GPTConfig) -> int:
    """GPT-2's parameter count from its shape: per block 12 C^2 matrix weights (QKV 3C^2, proj C^2,
    MLP 8C^2), plus biases 9C (QKV 3C, proj C, MLP 4C + C) and two LayerNorms 4C when bias, else 2C
    of LayerNorm gains; embeddings V*C + T*C (head tied); final LayerNorm 2C (C without bias).
    The recipe: rope has no T*C position table, an untied head adds V*C, qk-norm has no gains."""
    C = c.n_embd
    per_block = 12 * C * C + (13 * C if c.bias else 2 * C)
    embeddings = c.vocab_size * C + (c.block_size * C if c.pos_embedding == "learned" else 0)
    head = 0 if c.tie_head else c.vocab_size * C
    return embeddings + head + c.n_layer * per_block + (2 * C if c.bias else C)


def meta_model(config: GPTConfig) -> GPT:
    with torch.device("meta"):  # shapes only: gpt2-xl costs no memory
        return GPT(config)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_matches_the_closed_form_parameter_count(name):
    config = PRESETS[name]
    model = meta_model(config)
    assert model.num_params() == closed_form_params(config)
    tables = config.vocab_size * (1 if config.tie_head else 2) + (config.block_size if config.pos_embedding == "learned" else 0)
    assert model.num_params(non_embedding=True) == closed_form_params(config) - tables * config.n_embd


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


@BOTH
def test_changing_token_t_never_changes_earlier_logits(config):
    torch.manual_seed(0)
    model = randomised(GPT(config).eval(), 0.1)
    idx = torch.randint(0, config.vocab_size, (1, config.block_size))
    logits, _ = model(idx)
    for t in (0, 5, config.block_size - 1):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % config.vocab_size
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


@BOTH
def test_param_groups_decay_matrices_only_and_cover_every_parameter_once(config):
    model = GPT(config)
    decay, no_decay = model.param_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    torch.optim.AdamW(model.param_groups(0.1), lr=1e-3)  # accepted as optimizer groups


@BOTH
def test_activation_checkpointing_gives_the_same_gradients(config):
    torch.manual_seed(0)
    model = randomised(GPT(config), 0.1)
    idx = torch.randint(0, config.vocab_size, (2, 16))
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_activation_checkpointing(enabled)
        model(idx, idx)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)


@BOTH
def test_cached_chunks_equal_one_full_pass(config):
    # Generation feeds the cache a prompt, then single tokens; any chunking must match the full pass
    # (with rope: each chunk's queries and keys rotated at their absolute positions).
    torch.manual_seed(0)
    model = randomised(GPT(config).eval(), 0.1)
    idx = torch.randint(0, config.vocab_size, (2, 16))
    with torch.no_grad():
        full = model.hidden_states(idx)
        cache = KVCache(config, batch_size=2, device="cpu", dtype=torch.float32)
        chunks = [model.hidden_states(idx[:, a:b], cache) for a, b in ((0, 5), (5, 6), (6, 11), (11, 16))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 16
    with pytest.raises(ValueError, match="longer than the context"):
        model.hidden_states(idx[:, :1], cache)


@BOTH
def test_attention_weights_are_causal_distributions(config):
    torch.manual_seed(0)
    model = GPT(config)
    weights = model.attention_weights(torch.randint(0, config.vocab_size, (10,)))
    assert weights.shape == (2, 2, 10, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 10))
    assert torch.count_nonzero(weights.triu(diagonal=1)) == 0
    with pytest.raises(ValueError, match="one sequence"):
        model.attention_weights(torch.zeros(2, 4, dtype=torch.long))


@BOTH
def test_bfloat16_autocast_keeps_the_loss_in_float32(config):
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (logits, _), (_, loss) = model(idx), model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)


# ---- the modern recipe --------------------------------------------------------------------------


def test_modern_presets_are_the_gpt2_shapes_with_the_recipe():
    base = [name for name in PRESETS if not name.startswith("modern-")]
    assert [name for name in PRESETS if name.startswith("modern-")] == [f"modern-{name}" for name in base]
    for name in base:
        assert PRESETS[f"modern-{name}"] == dataclasses.replace(PRESETS[name], **MODERN_RECIPE)
        assert PRESETS[name].architecture == "GPT-2" and PRESETS[name].uses_gpt2_recipe
    modern = PRESETS["modern-gpt2"]
    assert modern.architecture == "modern: rope, qk-norm, relu², untied, softcap 30"
    assert config_from_preset("modern-tiny", block_size=64).pos_embedding == "rope"
    # The untied head counts (50257 x 768 more), rope has no position table (1024 x 768 fewer).
    gpt2, ours = meta_model(PRESETS["gpt2"]), meta_model(modern)
    assert ours.num_params() == 124_439_808 - 1024 * 768 + 50257 * 768 == 162_250_752
    assert ours.num_params(non_embedding=True) == gpt2.num_params(non_embedding=True) == 85_056_000
    assert ours.flops_per_token() == gpt2.flops_per_token()  # the same matmuls; the head is one matmul either way
    shapes = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    assert "transformer.wpe.weight" not in shapes and shapes["lm_head.weight"] == (50304, 768)
    assert "lm_head.weight" not in gpt2.state_dict() and shapes.keys() - {"lm_head.weight"} < gpt2.state_dict().keys()


def test_a_config_dict_from_before_the_recipe_loads_as_gpt2_and_resumes():
    old = GPTConfig.from_dict(dict(OLD_GPT2_DICT))
    assert old == PRESETS["gpt2"] and old.architecture == "GPT-2"
    # A GPT-2 config writes exactly the old dict: an old checkpoint's client state equals a default config's.
    assert PRESETS["gpt2"].to_dict() == OLD_GPT2_DICT
    check_same_model({"model": dict(OLD_GPT2_DICT)}, PRESETS["gpt2"].to_dict(), "runs/old/checkpoints/step_00000100")
    with pytest.raises(UserError, match="different model config.*pos_embedding: checkpoint None vs now 'rope'"):
        check_same_model({"model": dict(OLD_GPT2_DICT)}, PRESETS["modern-gpt2"].to_dict(), "ckpt")
    # Any recipe field off GPT-2's value writes all of them, and every config round-trips.
    assert set(PRESETS["modern-gpt2"].to_dict()) == set(OLD_GPT2_DICT) | set(GPT2_RECIPE)
    for config in (PRESETS["modern-small"], dataclasses.replace(SMALL, qk_norm=True),
                   dataclasses.replace(SMALL, zero_init_proj=True), dataclasses.replace(SMALL, rope_base=500.0)):
        assert GPTConfig.from_dict(config.to_dict()) == config
        assert set(config.to_dict()) == set(OLD_GPT2_DICT) | set(GPT2_RECIPE)
    assert GPTConfig.from_dict({**OLD_GPT2_DICT, "tie_head": False}).architecture == "modern: untied"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(pos_embedding="alibi"), "pos_embedding must be one of learned, rope, got 'alibi'"),
        (dict(mlp="swiglu"), "mlp must be one of gelu, relu2, got 'swiglu'"),
        (dict(qk_norm="yes"), "qk_norm must be true or false, got 'yes'"),
        (dict(tie_head=1), "tie_head must be true or false, got 1"),
        (dict(zero_init_proj=None), "zero_init_proj must be true or false"),
        (dict(logit_softcap=0.0), "logit_softcap must be a positive number or null"),
        (dict(logit_softcap=float("inf")), "logit_softcap must be a positive number or null"),
        (dict(rope_base=-1.0), "rope_base must be a positive number"),
        (dict(pos_embedding="rope", n_embd=30), r"head size n_embd / n_head \(30 / 2 = 15\) must be even"),
    ],
)
def test_bad_recipe_fields_are_one_line_errors(change, message):
    with pytest.raises(UserError, match=message) as raised:
        dataclasses.replace(SMALL, **change)
    assert "\n" not in str(raised.value)
    with pytest.raises(UserError, match=message):
        GPTConfig.from_dict({**SMALL.to_dict(), **change})  # config.json is checked alike
    dataclasses.replace(SMALL, n_embd=30)  # an odd head size is fine with learned positions


def test_modern_init_zero_projections_and_head_first_loss_is_log_vocab():
    torch.manual_seed(0)
    model = GPT(MODERN)
    for block in model.transformer.h:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0 and torch.count_nonzero(block.mlp.c_proj.weight) == 0
        assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.005
    assert model.lm_head.weight.shape == (128, 32) and torch.count_nonzero(model.lm_head.weight) == 0
    assert model.head_weight is model.lm_head.weight and GPT(SMALL).head_weight is not None
    assert not hasattr(model.transformer, "wpe")
    idx = torch.randint(0, MODERN.vocab_size, (2, 16))
    _, loss = model(idx, idx)
    torch.testing.assert_close(loss, torch.tensor(math.log(MODERN.vocab_size)))  # uniform logits
    loss.backward()
    assert torch.count_nonzero(model.lm_head.weight.grad) > 0  # the head learns first
    # Each option alone: an untied head with GPT-2's init, zero projections with a tied head.
    untied = GPT(dataclasses.replace(SMALL, tie_head=False))
    assert torch.count_nonzero(untied.transformer.h[0].attn.c_proj.weight) > 0
    assert torch.count_nonzero(untied.lm_head.weight) == 0
    zero = GPT(dataclasses.replace(SMALL, zero_init_proj=True))
    assert torch.count_nonzero(zero.transformer.h[1].mlp.c_proj.weight) == 0 and zero.head_weight is zero.transformer.wte.weight
    assert "lm_head.weight" not in zero.state_dict()


def test_softcap_bounds_the_logits_and_the_loss_uses_the_untied_capped_head():
    torch.manual_seed(0)
    config = dataclasses.replace(MODERN, logit_softcap=3.0)
    model = randomised(GPT(config), 1.0)
    idx = torch.randint(0, config.vocab_size, (2, 16))
    logits, _ = model(idx)
    assert logits.shape == (2, 16, config.vocab_size)
    assert logits.abs().max() <= 3.0 and logits.abs().max() > 2.9  # large raw logits, capped
    raw = F.linear(model.hidden_states(idx), model.lm_head.weight)[..., : config.vocab_size]
    torch.testing.assert_close(logits, 3.0 * torch.tanh(raw / 3.0))
    _, loss = model(idx, idx)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, config.vocab_size), idx.reshape(-1)))
    # The training loss's gradient equals the plain logits path's, for the head and the embedding.
    loss.backward()
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    plain = F.cross_entropy(model(idx)[0].reshape(-1, config.vocab_size), idx.reshape(-1))
    plain.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_relu2_mlp_is_relu_squared():
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(SMALL, mlp="relu2"))
    mlp = model.transformer.h[0].mlp
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))
    torch.manual_seed(0)
    gelu = GPT(SMALL)
    idx = torch.randint(0, SMALL.vocab_size, (1, 8))
    assert not torch.allclose(model(idx)[0], gelu(idx)[0])  # the same weights (same seed), another activation


def test_rotary_positions_make_scores_depend_on_the_offset_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> torch.Tensor:
        cos_m, sin_m = rotary_cos_sin(m, 1, 16, 10000.0, "cpu", torch.float32)
        cos_n, sin_n = rotary_cos_sin(n, 1, 16, 10000.0, "cpu", torch.float32)
        return (apply_rotary(q, cos_m, sin_m) * apply_rotary(k, cos_n, sin_n)).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 4))
    cos, sin = rotary_cos_sin(5, 3, 16, 10000.0, "cpu", torch.float32)
    rotated = apply_rotary(torch.randn(2, 3, 16), cos, sin)
    assert rotated.shape == (2, 3, 16)
    torch.testing.assert_close(apply_rotary(q, *rotary_cos_sin(0, 1, 16, 10000.0, "cpu", torch.float32)), q)  # position 0
    # Order matters with rope (no wpe): in one layer, without positions, the last token would see the
    # same set {7, 4, 5} in "7 4 5" and "4 7 5"; rotated keys tell the orders apart.
    model = randomised(GPT(dataclasses.replace(MODERN, n_layer=1)).eval(), 0.3)
    with torch.no_grad():
        assert not torch.allclose(model(torch.tensor([[7, 4, 5]]))[0][0, 2], model(torch.tensor([[4, 7, 5]]))[0][0, 2])


@BOTH
def test_attention_weights_are_the_attention_that_forward_applies(config):
    """Rows of attention_weights, times the values, rebuild each block's attention output (SDPA's, in
    forward) before c_proj: they include qk-norm and the rotary rotation."""
    torch.manual_seed(0)
    model = randomised(GPT(config).eval(), 0.5)
    idx = torch.randint(0, config.vocab_size, (1, 12))
    seen = {}
    hooks = []
    for i, block in enumerate(model.transformer.h):
        hooks.append(block.attn.c_attn.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("qkv", i), out)))
        hooks.append(block.attn.c_proj.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("y", i), args[0])))
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    weights = model.attention_weights(idx)
    H, D, T = config.n_head, config.head_dim, 12
    for i in range(config.n_layer):
        v = seen[("qkv", i)][0, :, 2 * config.n_embd :].view(T, H, D).transpose(0, 1)  # (H, T, D)
        rebuilt = (weights[i] @ v).transpose(0, 1).reshape(T, config.n_embd)
        torch.testing.assert_close(rebuilt, seen[("y", i)][0], rtol=1e-4, atol=1e-5)
    if config.qk_norm:  # and the weights are not those of plain q.k: the rotation and the norm matter
        block = model.transformer.h[0]
        x = block.ln_1(model.transformer.wte(idx))
        q, k, _ = (t.view(1, T, H, D).transpose(1, 2) for t in block.attn.c_attn(x).split(config.n_embd, dim=2))
        plain = ((q @ k.transpose(-2, -1)) / math.sqrt(D)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        assert not torch.allclose(plain[0], weights[0], atol=1e-3)
