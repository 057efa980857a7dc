"""Text generation from a GPT: incremental decoding with a key/value cache, sampling, streaming.

`Sampling` holds the settings of one generation (how many tokens, temperature, top-k, top-p, seed,
stop token), checked once when it is made. `generate(model, prompts, sampling)` continues a batch of
prompts and returns the new tokens; `stream(model, prompt, sampling)` continues one prompt and yields
each token as soon as it is chosen (the app prints them as they come). Both share one decoding loop
and one sampler:

- Decoding: the prompt is run once to fill the KV cache; each new token then costs one position,
  not a pass over the whole sequence. A prompt longer than the context is cropped from the left.
  Past the context the model sees a sliding window of the last block_size tokens, and the cache is
  invalid once it slides: learned absolute positions all shift by one; rotary positions (rope) enter
  attention only as relative offsets, but the kept tokens' keys and values from layer 1 on were
  computed while they could still attend to the tokens that dropped out. So, for both, the window is
  recomputed at each such step (positions 0..block_size-1, as in training). This keeps cached greedy
  decoding token-for-token equal to recomputing the whole window at every step, also beyond the context.
- Sampling: temperature, then top-k, then top-p (nucleus), from a seeded generator; greedy (argmax)
  when temperature == 0. Only real vocabulary entries exist in the logits
  (GPT.lm_head drops the padding), so padded ids are never produced.
- A batch of prompts is decoded in groups of equal length (a batch needs one position per step for
  every row; left padding would shift the positions). Several samples of one prompt, the
  common case, therefore run as one batch. A row stops at stop_token (not returned); the group stops
  when every row has.
"""

from __future__ import annotations

import math

import codecs
import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from gpt_ds.errors import UserError
from gpt_ds.model import GPT, KVCache
from gpt_ds.tokenizer import CHAT_TOKEN_TEXT, EOT_TOKEN


@contextlib.contextmanager
def _evaluating(model: GPT):
    """Eval mode (no dropout) and no autograd for one step, restoring the caller's mode afterwards.
    Scoped per step, not around the generator, so nothing leaks into the consumer between tokens."""
    was_training = model.training
    if was_training:  # switching walks every module: skip it when the caller is already in eval mode
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def _unwrap(model: torch.nn.Module) -> GPT:
    # torch.compile returns a wrapper whose `_orig_mod` is the GPT with the methods used here.
    return getattr(model, "_orig_mod", model)


@dataclass(frozen=True)
class Sampling:
    """How to continue a prompt: up to max_new_tokens tokens, drawn from softmax(logits / temperature)
    restricted to the top_k most likely tokens and to the top_p nucleus (None: no limit), from a
    generator seeded with seed (None: a fresh random draw each time); temperature 0 is greedy (argmax,
    the seed does not matter). Generation stops before stop_token (None: never stops early).
    A setting outside its range is a UserError when the Sampling is made."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_token: int | None = EOT_TOKEN

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"temperature must be a finite number >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top_k must be >= 1 (or unset for no limit), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1] (or unset for no limit), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def _choose_args(self, device: torch.device) -> dict:
        """The keyword arguments of choose_next, with a fresh generator seeded for this generation."""
        generator = None
        if self.seed is not None and not self.greedy:
            generator = torch.Generator(device=device).manual_seed(self.seed)
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, generator=generator)


def choose_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, vocab): argmax when temperature is 0,
    else a sample from softmax(logits / temperature) restricted to the top_k most likely tokens and to
    the smallest set of most likely tokens whose probability reaches top_p."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    # Restricting to candidates first makes the softmax and the draw run over k entries, not 50k.
    candidates = None  # vocabulary ids of the columns of `logits`, once they are restricted and sorted
    if top_k is not None and top_k < logits.size(-1):
        logits, candidates = torch.topk(logits, top_k, dim=-1)  # sorted, most likely first
    if top_p is not None and top_p < 1.0:
        if candidates is None:
            logits, candidates = torch.sort(logits, dim=-1, descending=True)
        probs = logits.softmax(dim=-1)
        # Drop a token when the tokens ranked before it already hold top_p of the mass; the most
        # likely token is therefore always kept.
        mass_before = probs.cumsum(dim=-1) - probs
        logits = logits.masked_fill(mass_before >= top_p, float("-inf"))
    choice = torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)
    if candidates is not None:
        choice = candidates.gather(-1, choice)
    return choice.squeeze(-1)


def _decode(
    model: GPT, prompts: torch.Tensor, max_new_tokens: int, use_cache: bool, choose_args: dict
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row of prompts (B, T), max_new_tokens times."""
    context = model.config.block_size
    tokens = prompts[:, -context:]  # left-crop: the model can only see the last block_size tokens
    cache = None

    def last_logits(new_tokens: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        with _evaluating(model):
            # Only the last position is scored: the head is the biggest matmul of a small model.
            return model.lm_head(model.hidden_states(new_tokens, cache)[:, -1])

    for step in range(max_new_tokens):
        if step == 0 and use_cache:
            param = next(model.parameters())
            cache = KVCache(model.config, tokens.size(0), param.device, param.dtype)
            logits = last_logits(tokens, cache)
        elif cache is not None and cache.length < context:
            logits = last_logits(tokens[:, -1:], cache)  # one new position on top of the cache
        else:
            # No cache, or the window has slid: every position moved (and with rope the cached keys
            # and values still reflect the dropped tokens), so recompute the window.
            cache = None
            logits = last_logits(tokens, None)
        with torch.inference_mode():
            next_tokens = choose_next(logits, **choose_args)
        yield next_tokens
        tokens = torch.cat([tokens, next_tokens.unsqueeze(1).to(tokens.dtype)], dim=1)[:, -context:]


def _check_prompts(model: GPT, prompts: Sequence[Sequence[int]]) -> None:
    vocab = model.config.vocab_size
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise UserError(
                f"prompt {i} is empty; give at least one token (the end-of-text token {EOT_TOKEN} "
                "starts an unconditional sample)"
            )
        bad = [t for t in prompt if not 0 <= int(t) < vocab]
        if bad:
            raise UserError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab}); encode it with the model's tokenizer")


def _prompt_tensor(model: GPT, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.tensor([list(p) for p in prompts], dtype=torch.long, device=device)


def generate(model: GPT, prompts: list[list[int]], sampling: Sampling, *, use_cache: bool = True) -> list[list[int]]:
    """Continue each prompt (token ids) by up to sampling.max_new_tokens tokens; return the new tokens
    only, per prompt, without the stop token. use_cache=False recomputes the whole window at every step
    (the reference that benchmarks and tests compare the cache against)."""
    model = _unwrap(model)
    _check_prompts(model, prompts)
    choose_args = sampling._choose_args(next(model.parameters()).device)
    results: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    for rows in by_length.values():
        batch = _prompt_tensor(model, [prompts[i] for i in rows])
        finished = torch.zeros(len(rows), dtype=torch.bool, device=batch.device)
        for next_tokens in _decode(model, batch, sampling.max_new_tokens, use_cache, choose_args):
            for row, (token, done) in enumerate(zip(next_tokens.tolist(), finished.tolist())):
                if done:
                    continue
                if token == sampling.stop_token:
                    finished[row] = True
                else:
                    results[rows[row]].append(token)
            if bool(finished.all()):
                break
    return results


def stream(model: GPT, prompt: list[int], sampling: Sampling, *, use_cache: bool = True) -> Iterator[int]:
    """Yield the continuation of one prompt token by token, stopping before sampling.stop_token; the
    same tokens as generate(model, [prompt], sampling)[0]."""
    model = _unwrap(model)
    # Checked here, not inside the generator, so a bad prompt fails at the call, not at the first token.
    _check_prompts(model, [prompt])
    batch = _prompt_tensor(model, [prompt])
    return _stream_tokens(model, batch, sampling, use_cache, sampling._choose_args(batch.device))


def _stream_tokens(
    model: GPT, batch: torch.Tensor, sampling: Sampling, use_cache: bool, choose_args: dict
) -> Iterator[int]:
    for next_tokens in _decode(model, batch, sampling.max_new_tokens, use_cache, choose_args):
        token = int(next_tokens[0])
        if token == sampling.stop_token:
            return
        yield token


def detokenize_stream(encoding, tokens: Iterable[int]) -> Iterator[str]:
    """Text pieces for a stream of token ids. A BPE token can end in the middle of a multi-byte UTF-8
    character, so bytes are decoded incrementally: a piece is emitted once its characters are complete."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        # a chat model's markers lie beyond the BPE (gpt_ds.tokenizer): their text
        raw = CHAT_TOKEN_TEXT[token].encode() if token in CHAT_TOKEN_TEXT else encoding.decode_single_token_bytes(token)
        piece = decoder.decode(raw)
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
