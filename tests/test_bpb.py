"""gpt_ds.bpb (bits per byte) by hand; the Validator's val loss and bpb on a real engine are in test_validate."""

from __future__ import annotations

import math

import pytest
import torch

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
