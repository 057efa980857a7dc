"""Tests of gpt_ds.host_memory: after keep_freed_memory, a large block freed and allocated again is served from
malloc's heap, without the kernel mapping (and faulting in) its pages anew each time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Rounds of what a training step does with ZeRO's float32 gradient copies: a 64 MB block, written, freed;
# prints the page faults of the last 8 rounds (malloc settles on its heap's size in the first few).
ROUNDS = """
import resource, sys, torch
from gpt_ds.host_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(12):
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.empty(16 * 2**20).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_BLOCK = 64 * 2**20 // 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and Linux's page-fault counts")
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again(repo_root):
    faults = {}
    for mode in ("keep", "default"):
        done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(repo_root)})
        assert done.returncode == 0, done.stderr[-2000:]
        kept, count = done.stdout.split()
        faults[mode] = int(count)
        if mode == "keep":
            assert kept == "True"
    assert faults["default"] > 4 * PAGES_PER_BLOCK  # torch's default: every round maps the block anew
    assert faults["keep"] < PAGES_PER_BLOCK // 4, faults  # kept: no round maps it again
