"""Shared test set-up: the offline tiktoken cache, and paths to ../shared material.

Tests that need something from ../shared (the Shakespeare corpus, the tiktoken cache, the Slurm
scripts) skip with the reason when it is absent, so the suite still runs on other machines.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shakespeare_dir() -> Path:
    path = SHARED / "corpora" / "shakespeare"
    if not path.is_dir():
        pytest.skip(f"the Shakespeare corpus is not at {path}")
    return path


@pytest.fixture(scope="session")
def encoding():
    """The GPT-2 BPE; skips when neither a cache nor the network can provide it."""
    from gpt_ds.errors import UserError
    from gpt_ds.tokenizer import get_encoding

    try:
        return get_encoding()
    except UserError as err:
        pytest.skip(str(err))
