"""Tests of gpt_ds.generate: KV-cache decoding equals recomputation (also past the context, for GPT-2's
learned positions and the modern recipe's rotary ones), sampling sets, seeds, stop tokens, batches of
prompts, streaming, and bad settings."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest
import torch

from gpt_ds.errors import UserError
from gpt_ds.generate import Sampling, choose_next, detokenize_stream, generate, stream
from gpt_ds.model import GPT, MODERN_RECIPE, GPTConfig

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=100)
MODERN = dataclasses.replace(CONFIG, **MODERN_RECIPE)  # rope, qk-norm, relu², untied head, softcap 30


def greedy(n: int, stop_token: int | None = None) -> Sampling:
    return Sampling(n, temperature=0, stop_token=stop_token)


@pytest.fixture(scope="module")
def model() -> GPT:
    """A model with large random weights: a fresh N(0, 0.02) GPT with tied embeddings mostly repeats
    its input token, which would let a wrong cache pass unnoticed; this one wanders over the vocabulary."""
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 1.0 if "wte" in name or "wpe" in name else 0.1)
    return model


@pytest.fixture(scope="module")
def modern_model() -> GPT:
    """The modern recipe with large random weights (fresh, its projections and head are zero: flat logits)."""
    torch.manual_seed(0)
    model = GPT(MODERN).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 1.0 if "wte" in name or "lm_head" in name else 0.3)
    return model


def decode_by_recomputation(model: GPT, prompt: list[int], steps: int, pick) -> list[int]:
    """The reference: run the whole (last block_size tokens of the) sequence at every step."""
    tokens = torch.tensor([prompt])
    out = []
    for _ in range(steps):
        with torch.no_grad():
            logits, _ = model(tokens[:, -model.config.block_size :])
        next_token = int(pick(logits[:, -1]))
        out.append(next_token)
        tokens = torch.cat([tokens, torch.tensor([[next_token]])], dim=1)
    return out


@pytest.mark.parametrize("prompt_len", [1, 7, 16, 23])  # short, mid, exactly the context, cropped
def test_cached_decoding_equals_recomputation_also_past_the_context(model, prompt_len):
    torch.manual_seed(prompt_len)
    prompt = torch.randint(0, CONFIG.vocab_size, (prompt_len,)).tolist()
    steps = 2 * CONFIG.block_size + 8  # well past the context: the window slides for many steps
    greedy_tokens = generate(model, [prompt], greedy(steps))[0]
    assert greedy_tokens == decode_by_recomputation(model, prompt, steps, pick=lambda logits: logits.argmax())
    assert len(set(greedy_tokens)) >= 2  # greedy settles into a cycle, but not into one repeated token
    assert generate(model, [prompt], greedy(steps), use_cache=False)[0] == greedy_tokens
    # Sampling visits many more windows than greedy (which settles into a cycle): with one seeded
    # generator, cache and recomputation must draw the same tokens, so their logits must agree.
    sampled = generate(model, [prompt], Sampling(steps, seed=prompt_len, stop_token=None))[0]
    generator = torch.Generator().manual_seed(prompt_len)
    reference = decode_by_recomputation(model, prompt, steps, pick=lambda l: choose_next(l, generator=generator))
    assert sampled == reference
    assert len(set(sampled[CONFIG.block_size :])) >= 10


def test_batch_of_prompts_of_different_lengths_equals_one_by_one(model):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9] * 20]
    batch = generate(model, prompts, greedy(30))
    assert batch == [generate(model, [p], greedy(30))[0] for p in prompts]
    sampled = generate(model, prompts, Sampling(30, seed=1, stop_token=None))
    assert sampled == generate(model, prompts, Sampling(30, seed=1, stop_token=None))
    assert sampled[0] != sampled[2]  # rows of one batch draw their own samples


def test_temperature_zero_and_top_k_one_are_greedy(model):
    argmax = [decode_by_recomputation(model, [5, 6], 20, pick=lambda logits: logits.argmax())]
    assert generate(model, [[5, 6]], Sampling(20, temperature=0, stop_token=None)) == argmax
    assert generate(model, [[5, 6]], Sampling(20, temperature=0, seed=4, stop_token=None)) == argmax
    assert generate(model, [[5, 6]], Sampling(20, top_k=1, seed=3, stop_token=None)) == argmax
    assert Sampling(20, temperature=0).greedy and not Sampling(20).greedy


def test_seed_makes_sampling_reproducible_and_stream_matches_generate(model):
    sampling = Sampling(40, seed=7, top_k=20, top_p=0.9, stop_token=None)
    a = generate(model, [[1, 2]], sampling)[0]
    assert a == generate(model, [[1, 2]], sampling)[0]
    assert a != generate(model, [[1, 2]], replace(sampling, seed=8))[0]
    assert list(stream(model, [1, 2], sampling)) == a


def test_generation_stops_before_the_stop_token(model):
    full = generate(model, [[3, 1, 4]], greedy(40))[0]
    stop = full[10]
    first = full.index(stop)
    assert generate(model, [[3, 1, 4]], greedy(40, stop_token=stop))[0] == full[:first]
    assert list(stream(model, [3, 1, 4], greedy(40, stop_token=stop))) == full[:first]
    assert generate(model, [[3, 1, 4]], Sampling(0)) == [[]]


def test_stream_yields_tokens_lazily(model):
    tokens = stream(model, [1], greedy(1000))
    assert next(tokens) == generate(model, [[1]], greedy(1))[0][0]


def test_generation_runs_in_eval_mode_and_restores_the_callers_mode():
    torch.manual_seed(0)
    dropout_model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50, dropout=0.5))
    dropout_model.train()
    a = generate(dropout_model, [[1, 2]], greedy(10))
    assert a == generate(dropout_model, [[1, 2]], greedy(10))  # no dropout noise
    assert dropout_model.training
    assert not torch.is_inference_mode_enabled()


def test_top_k_never_samples_outside_the_k_most_likely():
    torch.manual_seed(0)
    logits = torch.randn(1, 100) * 3
    top5 = set(logits[0].topk(5).indices.tolist())
    samples = choose_next(logits.expand(5000, -1), top_k=5, generator=torch.Generator().manual_seed(0))
    assert set(samples.tolist()) == top5  # all inside, and the whole set is reachable


def test_top_p_never_samples_outside_the_nucleus():
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = probs.log().unsqueeze(0)
    generator = torch.Generator().manual_seed(0)
    # The nucleus is the smallest most-likely set whose mass reaches p: {0, 1} for 0.7, {0, 1, 2} for 0.71.
    for top_p, nucleus in ((0.7, {0, 1}), (0.71, {0, 1, 2}), (0.3, {0})):
        samples = choose_next(logits.expand(4000, -1), top_p=top_p, generator=generator)
        assert set(samples.tolist()) == nucleus
    # Combined with top-k, both limits hold.
    samples = choose_next(logits.expand(4000, -1), top_k=2, top_p=0.95, generator=generator)
    assert set(samples.tolist()) == {0, 1}


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(20000, -1)
    generator = torch.Generator().manual_seed(0)
    cold = choose_next(logits, temperature=0.25, generator=generator).eq(0).float().mean()
    hot = choose_next(logits, temperature=4.0, generator=generator).eq(0).float().mean()
    expected_cold = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 0.25, 0)[0]
    expected_hot = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 4.0, 0)[0]
    assert abs(cold - expected_cold) < 0.02 and abs(hot - expected_hot) < 0.02


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        Sampling(5, **kwargs)  # when the settings are made, before any model or prompt is touched
    with pytest.raises(UserError, match=message):
        replace(Sampling(5), **kwargs)  # a changed copy is checked too


def test_bad_prompts_are_user_errors(model):
    with pytest.raises(UserError, match="prompt 1 is empty"):
        generate(model, [[1], []], Sampling(5))
    with pytest.raises(UserError, match="token id 100 outside the vocabulary"):
        generate(model, [[1, 100]], Sampling(5))
    with pytest.raises(UserError, match="token id 100 outside the vocabulary"):
        stream(model, [1, 100], Sampling(5))  # at the call, not at the first token
    with pytest.raises(UserError, match="max_new_tokens must be >= 0"):
        Sampling(-1)


def test_detokenize_stream_never_splits_a_character(encoding):
    text = "héllo wörld 日本語 🎉"
    tokens = encoding.encode(text)
    pieces = list(detokenize_stream(encoding, tokens))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.parametrize("prompt_len", [1, 7, 16, 23])
def test_rope_cached_decoding_equals_recomputation_also_past_the_context(modern_model, prompt_len):
    # Cached queries and keys are rotated at their absolute positions; once the window slides it is
    # recomputed at positions 0..block_size-1, as the reference (and training) sees it.
    torch.manual_seed(prompt_len)
    prompt = torch.randint(0, MODERN.vocab_size, (prompt_len,)).tolist()
    steps = 2 * MODERN.block_size + 8
    greedy_tokens = generate(modern_model, [prompt], greedy(steps))[0]
    assert greedy_tokens == decode_by_recomputation(modern_model, prompt, steps, pick=lambda logits: logits.argmax())
    assert len(set(greedy_tokens)) >= 2
    assert generate(modern_model, [prompt], greedy(steps), use_cache=False)[0] == greedy_tokens
    sampled = generate(modern_model, [prompt], Sampling(steps, seed=prompt_len, stop_token=None))[0]
    generator = torch.Generator().manual_seed(prompt_len)
    reference = decode_by_recomputation(modern_model, prompt, steps, pick=lambda l: choose_next(l, generator=generator))
    assert sampled == reference
    assert len(set(sampled[MODERN.block_size :])) >= 10


def test_modern_model_samples_deterministically_with_a_seed(modern_model):
    sampling = Sampling(40, seed=7, top_k=20, top_p=0.9, stop_token=None)
    a = generate(modern_model, [[1, 2], [1, 2]], sampling)
    assert a == generate(modern_model, [[1, 2], [1, 2]], sampling)
    assert a[0] != a[1]  # rows of one batch draw their own samples
    assert a[0] != generate(modern_model, [[1, 2]], replace(sampling, seed=8))[0]
    assert list(stream(modern_model, [1, 2], sampling)) == generate(modern_model, [[1, 2]], sampling)[0]
    assert all(0 <= t < MODERN.vocab_size for t in a[0])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_a_temperature_that_is_not_a_finite_number_at_least_0_is_refused(value):
    with pytest.raises(UserError, match="temperature must be a finite number >= 0"):
        Sampling(8, temperature=value)
