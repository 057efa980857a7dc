"""Tests of gpt_ds.cache: torch.compile's on-disk caches under GPT_DS_CACHE_DIR, so that a second process
compiling the same loss loads it instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gpt_ds.cache import INDUCTOR_ENV, cache_dir, use_compile_cache

# One process of what a run's first step compiles: the chunked loss's forward and backward; it prints
# inductor's cache counters.
COMPILE_THE_LOSS = """
import json, torch
from torch._dynamo.utils import counters
from gpt_ds.loss import chunked_cross_entropy
h = torch.randn(64, 32, requires_grad=True)
w = torch.randn(128, 32, requires_grad=True)
chunked_cross_entropy(h, w, torch.randint(0, 100, (64,)), vocab_size=100).backward()
print(json.dumps(dict(counters["inductor"])))
"""


def test_use_compile_cache_points_inductor_under_gpt_ds_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_DS_CACHE_DIR", str(tmp_path / "gpt-ds"))
    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    assert cache_dir() == tmp_path / "gpt-ds"
    assert use_compile_cache() == str(tmp_path / "gpt-ds" / "inductor") == os.environ[INDUCTOR_ENV]


def test_a_torchinductor_cache_dir_the_process_starts_with_is_left_alone(tmp_path):
    """The user's choice stays, and only it: importing torch._dynamo (DeepSpeed does) writes torch's default into
    os.environ, which gpt-ds replaces."""
    probe = "import torch._dynamo; from gpt_ds.cache import use_compile_cache; print(use_compile_cache())"
    env = {k: v for k, v in os.environ.items() if k != INDUCTOR_ENV}
    env["GPT_DS_CACHE_DIR"] = str(tmp_path / "gpt-ds")
    for extra, expected in (({}, tmp_path / "gpt-ds" / "inductor"), ({INDUCTOR_ENV: str(tmp_path / "mine")}, tmp_path / "mine")):
        done = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert done.stdout.strip() == str(expected), (extra, done.stdout, done.stderr[-1000:])


def test_a_second_process_loads_the_compiled_loss_from_gpt_ds_cache_dir(tmp_path, repo_root):
    env = {k: v for k, v in os.environ.items() if k != INDUCTOR_ENV}
    env.update(GPT_DS_CACHE_DIR=str(tmp_path / "gpt-ds"), PYTHONPATH=str(repo_root))

    def compile_once() -> dict:
        done = subprocess.run([sys.executable, "-c", COMPILE_THE_LOSS], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = compile_once()
    assert first.get("fxgraph_cache_miss", 0) > 0 and first.get("fxgraph_cache_hit", 0) == 0, first
    assert any((tmp_path / "gpt-ds" / "inductor").rglob("*")), "nothing cached under GPT_DS_CACHE_DIR/inductor"
    second = compile_once()
    assert second.get("fxgraph_cache_hit", 0) > 0 and second.get("fxgraph_cache_miss", 0) == 0, second
