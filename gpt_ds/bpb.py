"""Bits per byte: the loss in a unit that compares across tokenizers.

bpb = (cross-entropy summed over the target tokens, in nats) / ln 2 / (UTF-8 bytes those tokens decode to).
A tokenizer with longer tokens has a higher loss per token but the same text to predict, so bits per byte
compare runs with different vocabularies (nanochat ranks its runs by it).

Tokens that decode to no bytes count in neither sum: the special tokens, i.e. GPT-2's <|endoftext|>
(id 50256) between documents. It is not text of any document, and a byte count of 0 would make its loss
free. This is nanochat's convention (its token_bytes table holds 0 for special tokens).

Defines `token_byte_lengths` (each token id's byte count, a tensor), `bpb_sums` (what a batch adds to
the two sums) and `bits_per_byte` (the figure from the sums).
"""

from __future__ import annotations

import functools
import math

import torch

from gpt_ds.tokenizer import DEFAULT_ENCODING, get_encoding


@functools.lru_cache(maxsize=None)
def token_byte_lengths(vocab_size: int, encoding: str = DEFAULT_ENCODING) -> torch.Tensor:
    """(vocab_size,) int64: the UTF-8 bytes each token id decodes to; 0 for special tokens and for ids
    beyond the encoding (a padded vocabulary). Raises UserError without the tokenizer's files."""
    enc = get_encoding(encoding)
    specials = {enc.encode_single_token(token) for token in enc.special_tokens_set}
    lengths = [0 if i in specials else len(enc.decode_single_token_bytes(i)) for i in range(min(vocab_size, enc.n_vocab))]
    return torch.tensor(lengths + [0] * (vocab_size - len(lengths)), dtype=torch.int64)


def bpb_sums(token_losses: torch.Tensor, targets: torch.Tensor, byte_lengths: torch.Tensor) -> torch.Tensor:
    """(2,) float64 on the losses' device: the losses (nats) summed over the targets that decode to
    bytes, and those bytes. `byte_lengths` is token_byte_lengths on the same device. Ignored targets
    (negative: a chat folder's untrained ones) count in neither."""
    nbytes = torch.where(targets >= 0, byte_lengths[targets.clamp(min=0)], 0)
    counted = torch.where(nbytes > 0, token_losses.double(), 0.0).sum()
    return torch.stack([counted, nbytes.sum().double()])


def bits_per_byte(loss_nats: float, n_bytes: float) -> float | None:
    """Bits per byte from the two sums; None without bytes."""
    return loss_nats / math.log(2) / n_bytes if n_bytes > 0 else None
