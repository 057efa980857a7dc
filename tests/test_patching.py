"""gpt_ds.patching.swapped: the replacement holds inside the block only, the original is back after an
error too, and the reason is recorded under the attribute's name."""

from __future__ import annotations

import types

import pytest

from gpt_ds import patching


def test_the_original_is_back_after_the_block_and_after_an_error():
    lib = types.ModuleType("somelib")
    lib.tag = lambda: "theirs"
    with patching.swapped(lib, "tag", lambda: "ours", why="theirs tags the embeddings") as original:
        assert lib.tag() == "ours" and original() == "theirs"
    assert lib.tag() == "theirs"
    with pytest.raises(ValueError), patching.swapped(lib, "tag", lambda: "ours", why="theirs tags the embeddings"):
        raise ValueError("inside")
    assert lib.tag() == "theirs"
    assert patching.SWAPS["somelib.tag"] == "theirs tags the embeddings"


def test_gpt_ds_says_why_it_swaps_torch_load():
    import torch

    from gpt_ds import safe_load

    real = torch.load
    with safe_load.enforced():
        assert torch.load is not real
    assert torch.load is real and patching.SWAPS["torch.load"] == safe_load.TORCH_LOAD_WHY


def test_replace_holds_for_the_process_and_says_why():
    lib = types.ModuleType("otherlib")
    lib.reduce = lambda: "gloo"
    original = patching.replace(lib, "reduce", lambda: "shm", why="a faster kernel")
    assert lib.reduce() == "shm" and original() == "gloo"
    assert patching.SWAPS["otherlib.reduce"] == "a faster kernel"
