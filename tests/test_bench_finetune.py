"""bench/finetune.py: the smallest run (a small parent folder, two steps, one rank, one lr) prints its table of
validation losses against scratch's and writes them to OUT/finetune.json; a bad flag is one line, exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_ds.model import GPT, MODERN_RECIPE, GPTConfig
from gpt_ds.model_io import save_model

REPO = Path(__file__).resolve().parents[1]
BENCH = str(REPO / "bench" / "finetune.py")
PARENT = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, **MODERN_RECIPE)


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_the_smallest_run_prints_the_table_against_scratch(tmp_path, python_corpus, encoding):
    torch.manual_seed(3)
    parent = save_model(tmp_path / "parent", GPT(PARENT), PARENT, metadata={"step": 10, "tokens": 5120})
    domain = python_corpus(240_000, files=24)  # enough documents for a val split
    proc = bench("--out", str(tmp_path / "out"), "--parent", str(parent), "--domain", str(domain), "--steps", "2",
                 "--ranks", "1", "--lr-scales", "1/3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("run "))
    header, parent_row, scratch_row, init_row = lines[top : top + 4]
    assert header.split() == ["run", "peak", "lr", "val@1", "val@2", "-", "scratch", "/", "scratch"]
    assert parent_row.startswith("parent (step 0)")
    assert scratch_row.split()[0] == "scratch" and scratch_row.split()[-2:] == ["+0.0000", "1.000"]
    assert init_row.startswith("init lr x1/3")
    result = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert (result["steps"], result["ranks"]) == (2, 1)
    assert [run["name"] for run in result["runs"]] == ["scratch", "init lr x1/3"]
    assert [run["lr"] for run in result["runs"]] == pytest.approx([result["config_lr"], result["config_lr"] / 3],
                                                                  rel=1e-5)
    for run in result["runs"]:
        assert set(run["val_loss"]) == {"1", "2"} and all(math.isfinite(v) for v in run["val_loss"].values())
    assert math.isfinite(result["parent_val_loss"])


@pytest.mark.parametrize("args, message", [
    (["--steps", "1"], "--steps must be at least 2 (got 1)"),
    (["--ranks", "0"], "--ranks must be at least 1 (got 0)"),
    (["--lr-scales", "1", "zero"], "--lr-scales 'zero' is not a positive number; write e.g. 1, 0.3 or 1/3"),
    (["--lr-scales", "0"], "--lr-scales '0' is not a positive number"),
    (["--parent", "nowhere"], "--parent folder nowhere does not exist; pass a model folder"),
    (["--parent", "."], "--parent . is not a model folder (no gpt-ds or Hugging Face config.json)"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_a_bad_flag_is_one_line(tmp_path, args, message):
    proc = bench("--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("bench/finetune.py: error: ")
    assert message in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "out").exists()
