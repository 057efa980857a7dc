"""The lm-evaluation-harness backend: a gpt-ds model folder as an lm-eval `LM`, registered as "gpt-ds".

`GPTDSLM(path=MODEL_DIR, device=None, dtype=None, batch_size=16)` serves both architectures (GPT-2 and
modern) with the model's own tokenizer (tiktoken's encode_ordinary: "<|endoftext|>" in a text is text).
lm-eval's `--model gpt-ds --model_args path=MODEL_DIR` reaches it once this module is imported
(`@register_model`); pyproject.toml also declares it in the `lm_eval.models` entry-point group, which
lm-eval releases after 0.4.13 read.

It scores what lm-eval's `hf` backend scores, the same way:
- loglikelihood: context and continuation split as TemplateLM does (trailing whitespace of the context
  moves to the continuation; an empty context becomes the end-of-text token); context + continuation
  cut on the left to max_length + 1 tokens; the continuation's log-probabilities summed, and whether
  each of its tokens is the argmax (is_greedy). The log-softmax runs in float32.
- loglikelihood_rolling: lm-eval's disjoint rolling windows of max_length tokens, each scored as above.
- generate_until: the context cut on the left to max_length - max_gen_toks tokens, greedy unless
  do_sample, stopped at the first stop sequence (the text returned ends before it) or end-of-text.

What it does faster: requests that share a context are scored together. One row packs the context once
and then each continuation (the endings of a multiple-choice question: the context's tokens once instead
of four times); each continuation takes up the positions after the context and sees only the context
and itself (GPT.hidden_states' positions and mask), so it scores exactly as its own row would. The head
runs on the continuations' positions alone. A batch of such rows, of any lengths, is one forward.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import torch
import torch.nn.functional as F
import lm_eval.models  # noqa: F401  (lm-eval's own backends register first: lm-eval loads them only into an
                       # empty registry, so registering ours alone would hide `hf` and the others)
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from gpt_ds.generate import Sampling, detokenize_stream, stream
from gpt_ds.inference import inference_device, load_for_inference
from gpt_ds.mc_eval import fit_left
from gpt_ds.tokenizer import get_encoding

DEFAULT_BATCH_SIZE = 16  # continuations per forward
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until
HEAD_CHUNK = 2048  # positions whose float32 logits exist at once

Request = tuple[Any, list[int], list[int]]  # (strings, context tokens, continuation tokens)


def _batch_size(value: int | str | None) -> int:
    """lm-eval passes batch_size as given on its command line: a number, or "auto" (the default here)."""
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    return max(1, int(value))


@register_model("gpt-ds")
class GPTDSLM(TemplateLM):
    """A gpt-ds model folder for lm-evaluation-harness (loglikelihood, rolling, generate_until)."""

    def __init__(self, path: str, device: str | None = None, dtype: str | None = None,
                 batch_size: int | str | None = DEFAULT_BATCH_SIZE, max_batch_size: int | None = None) -> None:
        super().__init__()
        device, torch_dtype = inference_device(device, dtype)
        self.model, self.info = load_for_inference(path, device, torch_dtype)
        self.encoding = get_encoding(self.info.tokenizer)
        self.batch_size = _batch_size(batch_size)
        self._device = torch.device(device)

    # ---- what TemplateLM asks of a backend ----------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.encoding.eot_token

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.encoding.encode_ordinary(string)

    def tok_decode(self, tokens: Iterable[int], **kwargs: Any) -> str:
        return self.encoding.decode(list(tokens))

    # ---- scoring --------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, all greedy) of each request's continuation given its context."""
        return score_continuations(self.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood, over lm-eval's disjoint windows of max_length tokens."""
        windows, owner = [], []
        for i, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, score_continuations(self.model, windows, self.batch_size)):
            totals[i] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each context continued until a stop sequence, end-of-text or max_gen_toks tokens."""
        out = []
        for context, gen_kwargs in (request.args for request in requests):
            text = self.generate_one(context, dict(gen_kwargs))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    def generate_one(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
        if not gen_kwargs.pop("do_sample", False):
            temperature = 0.0
        sampling = Sampling(max_new_tokens=max_new, temperature=temperature, top_k=gen_kwargs.pop("top_k", None),
                            top_p=gen_kwargs.pop("top_p", None), seed=gen_kwargs.pop("seed", None),
                            stop_token=self.eot_token_id)
        prompt = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.prefix_token_id]
        text = ""
        for piece in detokenize_stream(self.encoding, stream(self.model, prompt, sampling)):
            text += piece
            # A stop sequence can end inside a piece, or span two: look at the text as a whole.
            if any(stop in text for stop in until):
                break
        return cut_at_stops(text, until)


def cut_at_stops(text: str, until: list[str]) -> str:
    """The text before the first occurrence of any stop sequence (lm-eval splits on each in turn)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


@torch.no_grad()
def score_continuations(model: Any, pairs: list[tuple[list[int], list[int]]],
                        batch_size: int) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, all greedy) of each continuation given its context, the model in eval
    mode. Pairs with the same (fitted) context share its tokens; up to batch_size continuations, whatever
    their contexts' lengths, share one forward."""
    block = model.config.block_size
    fitted = [fit_left(list(ctx), list(cont), block) for ctx, cont in pairs]
    by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(fitted):
        if cont:  # a continuation of no tokens (text that merged into the context's last token) scores 0
            by_context[tuple(ctx)].append(i)
    # Longest first (lm-eval's order: an out-of-memory shows at once); neighbours have similar lengths, so
    # little padding.
    batches: list[list[tuple[int, ...]]] = []
    rows = 0
    for context in sorted(by_context, key=lambda c: (-len(c), c)):
        if not batches or rows + len(by_context[context]) > batch_size:
            batches.append([])
            rows = 0
        batches[-1].append(context)
        rows += len(by_context[context])
    results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    for batch in batches:
        order = [i for context in batch for i in by_context[context]]
        scores = _score_batch(model, [(context, len(by_context[context])) for context in batch],
                              [fitted[i][1] for i in order])
        for i, score in zip(order, scores):
            results[i] = score
    return results


def _score_batch(model: Any, members: list[tuple[tuple[int, ...], int]],
                 continuations: list[list[int]]) -> list[tuple[float, bool]]:
    """One forward for the whole batch: row k packs context k and its continuations' tokens but their last,
    one after the other. Each continuation's tokens take up the positions after the context and see the
    context and themselves, never another continuation (the mask), so each scores as its own full row."""
    device = next(model.parameters()).device
    rows, segments, positions, picks = [], [], [], []  # picks: (row, the positions predicting each token)
    continuation = iter(continuations)
    for k, (context, n) in enumerate(members):
        tokens, segment, position = list(context), [-1] * len(context), list(range(len(context)))
        for i in range(n):
            cont = next(continuation)
            picks.append((k, [len(context) - 1] + list(range(len(tokens), len(tokens) + len(cont) - 1))))
            tokens += cont[:-1]
            segment += [i] * (len(cont) - 1)
            position += range(len(context), len(context) + len(cont) - 1)
        rows.append(tokens)
        segments.append(segment)
        positions.append(position)
    width = max(len(row) for row in rows)
    pad = [width - len(row) for row in rows]
    idx = torch.tensor([row + [0] * n for row, n in zip(rows, pad)], device=device)
    pos = torch.tensor([position + [0] * n for position, n in zip(positions, pad)], device=device)
    seg = torch.tensor([segment + [-2] * n for segment, n in zip(segments, pad)], device=device)
    earlier = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    mask = earlier & ((seg[:, None, :] == -1) | (seg[:, None, :] == seg[:, :, None]))  # (rows, query, key)
    hidden = model.hidden_states(idx, positions=pos, mask=mask[:, None])
    row_index = torch.tensor([k for k, where in picks for _ in where], device=device)
    at = torch.tensor([i for _, where in picks for i in where], device=device)
    targets = torch.tensor([token for cont in continuations for token in cont], device=device)
    logprobs, greedy = _head_scores(model, hidden[row_index, at], targets)
    lengths = [len(cont) for cont in continuations]  # one read of the device for the whole batch
    return [(float(lp.sum()), bool(g.all()))
            for lp, g in zip(logprobs.double().cpu().split(lengths), greedy.cpu().split(lengths))]


def _head_scores(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's log-probability of its target (float32 log-softmax) and whether the target is the
    argmax, HEAD_CHUNK positions at a time (the logits of every position at once could be gigabytes)."""
    logprobs, greedy = [], []
    for h, t in zip(hidden.split(HEAD_CHUNK), targets.split(HEAD_CHUNK)):
        logits = F.log_softmax(model.lm_head(h).float(), dim=-1)
        logprobs.append(logits.gather(-1, t.unsqueeze(-1)).squeeze(-1))
        greedy.append(logits.argmax(dim=-1) == t)
    return torch.cat(logprobs), torch.cat(greedy)
