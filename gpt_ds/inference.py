"""Using a trained model folder: what the sampling program (launch/sample.py) and the app share.

Defines: the device and dtype to run in (`inference_device`), loading a model folder where every
failure is one `UserError` naming the fix (`load_for_inference`), prompt checks (`encode_prompt`),
a continuation streamed as growing text with its speed (`StreamUpdate`, `stream_continuation`), and
one attention head's weights over a text (`AttentionMap`, `attention_map`, `token_label`).

Nothing here imports Streamlit, Altair or pandas: pages and programs add their own layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from gpt_ds.errors import UserError
from gpt_ds.generate import Sampling, detokenize_stream, stream
from gpt_ds.hardware import gpu_native_bf16
from gpt_ds.model import GPT
from gpt_ds.model_io import ModelInfo, load_model, parse_dtype
from gpt_ds.tokenizer import get_encoding

# Beyond this many tokens an attention map's labels become unreadable; we keep the last ones.
ATTENTION_MAX_SHOWN = 48


def inference_device(device: str | None = None, dtype: str | None = None) -> tuple[str, torch.dtype]:
    """The device and dtype to run a model in. device None: the GPU when there is one, else the CPU;
    dtype None: bfloat16 on a GPU that supports it (half the memory, what GPUs are fast at), else
    float32 (on the CPU it keeps sampling exact). UserError for a combination that cannot run here."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device == "cuda" or device.startswith("cuda:")
    if not on_gpu and device != "cpu":
        raise UserError(f"unknown device {device!r}; choose cpu or cuda")
    if on_gpu and not torch.cuda.is_available():
        raise UserError(f"device {device}: CUDA is not available on this machine; use the CPU (--device cpu)")
    if dtype is None:
        return device, torch.bfloat16 if on_gpu and gpu_native_bf16(device) else torch.float32
    if not on_gpu and dtype == "float16":
        raise UserError("dtype float16 is not supported on the CPU; use bfloat16 or float32 (or --device cuda)")
    return device, parse_dtype(dtype)


def load_for_inference(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[GPT, ModelInfo]:
    """Load a model folder in eval mode for generation; any failure becomes a UserError that names the fix."""
    try:
        return load_model(folder, device=device, dtype=dtype)
    except UserError:
        raise
    except Exception as err:  # a safety net: a page must show a message, never a traceback
        raise UserError(
            f"could not load the model in {folder} ({type(err).__name__}: {err}); "
            "export it again (python -m gpt_ds.export RUN_DIR) or choose another folder"
        ) from err


def encode_prompt(text: str, tokenizer: str, block_size: int | None = None) -> list[int]:
    """The prompt's token ids; UserError when it is empty or longer than `block_size` (if given)."""
    if not text or not text.strip():
        raise UserError("the prompt is empty: type some text in the Prompt box, then press Generate")
    # The document delimiter may be typed as text: it is how documents start in training.
    ids = get_encoding(tokenizer).encode(text, allowed_special={"<|endoftext|>"})
    if block_size is not None and len(ids) > block_size:
        raise UserError(
            f"the prompt is {len(ids)} tokens long but this model's context is {block_size} tokens: "
            f"shorten it by at least {len(ids) - block_size} tokens"
        )
    return ids


@dataclass(frozen=True)
class StreamUpdate:
    """The continuation so far, as text, with its speed."""

    text: str
    tokens: int
    seconds: float

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def stream_continuation(model: GPT, tokenizer: str, prompt_ids: list[int], sampling: Sampling,
                        stop_tokens: frozenset[int] = frozenset()) -> Iterator[StreamUpdate]:
    """Yield the growing continuation as its text grows (the timing includes the prompt pass); it ends
    before sampling.stop_token or any of `stop_tokens`."""
    produced = 0

    def counted_tokens() -> Iterator[int]:
        nonlocal produced
        for token in stream(model, prompt_ids, sampling):
            if token in stop_tokens:
                return
            produced += 1
            yield token

    text, shown = "", None
    start = time.perf_counter()
    for piece in detokenize_stream(get_encoding(tokenizer), counted_tokens()):
        text += piece
        shown = produced
        yield StreamUpdate(text, produced, time.perf_counter() - start)
    if produced != shown:  # the last tokens completed no character, or there were none: still report the count
        yield StreamUpdate(text, produced, time.perf_counter() - start)


@dataclass(frozen=True)
class AttentionMap:
    """One head's causal attention over the last shown tokens: weights[q][k] for labels[q], labels[k]."""

    labels: list[str]
    weights: list[list[float]]
    layer: int
    head: int
    first_position: int  # position in the full sequence of the first shown token
    total_tokens: int


def token_label(tokenizer: str, token: int, position: int) -> str:
    """A token made visible on an axis: spaces and newlines shown, its position making it unique."""
    text = get_encoding(tokenizer).decode_single_token_bytes(token).decode("utf-8", errors="replace")
    text = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"
    return f"{position}·{text}"


def attention_map(
    model: GPT, tokenizer: str, token_ids: list[int], layer: int, head: int, max_shown: int = ATTENTION_MAX_SHOWN
) -> AttentionMap:
    """The attention weights of `layer`/`head` for the whole sequence, cut to its last `max_shown` tokens."""
    config = model.config
    if not 0 <= layer < config.n_layer or not 0 <= head < config.n_head:
        raise UserError(f"layer {layer} / head {head} do not exist: this model has {config.n_layer} layers of {config.n_head} heads")
    if not token_ids:
        raise UserError("the prompt is empty: type some text to see what the heads attend to")
    device = next(model.parameters()).device
    idx = torch.tensor([token_ids[-config.block_size :]], dtype=torch.long, device=device)
    weights = model.attention_weights(idx)[layer, head].cpu()  # float32, computed without autograd
    first = max(0, idx.shape[1] - max_shown)
    shown = weights[first:, first:]
    offset = len(token_ids) - idx.shape[1]
    ids = idx[0, first:].tolist()
    return AttentionMap(
        labels=[token_label(tokenizer, tok, offset + first + i) for i, tok in enumerate(ids)],
        weights=shown.tolist(),
        layer=layer,
        head=head,
        first_position=offset + first,
        total_tokens=len(token_ids),
    )
