"""Tests of launch/sample.py: run as a program on a saved tiny model (GPT-2 and the modern recipe),
and its bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gpt_ds.generate import Sampling, generate
from gpt_ds.model import GPT, config_from_preset
from gpt_ds.model_io import load_model, save_model
from launch.sample import run

PROMPT = "ROMEO: wherefore"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, encoding):
    torch.manual_seed(0)
    config = config_from_preset("tiny")
    return save_model(tmp_path_factory.mktemp("sample") / "model", GPT(config), config)


def sample_program(repo_root, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "launch/sample.py", *args], capture_output=True, text=True, cwd=repo_root, env=env, timeout=120
    )


def test_prints_each_sample_as_prompt_plus_its_continuation(model_dir, encoding, repo_root):
    result = sample_program(
        repo_root, "--model", str(model_dir), "--prompt", PROMPT, "--greedy", "--max-new-tokens", "12", "--num-samples", "2"
    )
    assert result.returncode == 0, result.stderr
    model, _ = load_model(model_dir)
    continuation = generate(model, [encoding.encode(PROMPT)], Sampling(12, temperature=0))[0]
    expected_sample = PROMPT + encoding.decode(continuation)
    assert result.stdout == (
        f"===== sample 1/2 =====\n{expected_sample}\n===== sample 2/2 =====\n{expected_sample}\n"
    )
    assert "cpu float32" in result.stderr  # the default dtype on the CPU


def test_seeded_samples_are_reproducible_and_differ_from_each_other(model_dir, capsys):
    args = ["--model", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", "15", "--seed", "3", "--num-samples", "2"]
    assert run(args) == 0
    first = capsys.readouterr().out
    assert run(args) == 0
    assert capsys.readouterr().out == first
    samples = first.split("===== sample 2/2 =====\n")
    assert len(samples) == 2 and samples[0].removeprefix("===== sample 1/2 =====\n") != samples[1]
    assert run(["--model", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", "3", "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.startswith(PROMPT)


def test_bad_model_folder_is_one_line_and_a_nonzero_exit(tmp_path, repo_root):
    result = sample_program(repo_root, "--model", str(tmp_path / "missing"), "--prompt", "hi")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"gpt-ds-sample: error: model folder {tmp_path / 'missing'} does not exist; "
        "pass a folder made by training's export or gpt_ds.hf import"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-samples", "0"], "--num-samples must be >= 1"),
        (["--top-p", "1.5"], r"top_p must be in \(0, 1\]"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--dtype", "float16"], "float16 is not supported on the CPU"),
    ],
)
def test_bad_settings_are_refused_before_loading(tmp_path, args, message):
    from gpt_ds.errors import UserError

    # The model folder does not exist: the setting must be reported first, without loading anything.
    with pytest.raises(UserError, match=message):
        run(["--model", str(tmp_path / "missing"), *args])


@pytest.fixture(scope="module")
def modern_model_dir(tmp_path_factory, encoding):
    torch.manual_seed(0)
    config = config_from_preset("modern-tiny")
    model = GPT(config)
    with torch.no_grad():  # fresh, the head and projections are zero: give them weights
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight") or name == "lm_head.weight":
                p.normal_(0.0, 0.02)
    return save_model(tmp_path_factory.mktemp("sample") / "modern", model, config)


def test_a_modern_model_samples_greedy_and_seeded(modern_model_dir, encoding, capsys):
    args = ["--model", str(modern_model_dir), "--prompt", PROMPT, "--max-new-tokens", "10"]
    assert run([*args, "--greedy"]) == 0
    out = capsys.readouterr()
    model, _ = load_model(modern_model_dir)
    continuation = generate(model, [encoding.encode(PROMPT)], Sampling(10, temperature=0))[0]
    assert out.out == PROMPT + encoding.decode(continuation) + "\n"
    assert "2 layers" in out.err
    assert run([*args, "--seed", "5"]) == 0
    first = capsys.readouterr().out
    assert run([*args, "--seed", "5"]) == 0
    assert capsys.readouterr().out == first and first.startswith(PROMPT)
