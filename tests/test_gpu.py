"""The CUDA paths, on a GPU: fp16 dynamic loss scaling skipping an injected overflow, bf16 training to a
small target, a device OOM turned into one line, and greedy generation on the GPU equal to the CPU's.
Marked `gpu` and skipped with the reason where torch sees no CUDA device (bench/gpu_check.py --smoke
keeps the same code paths running on the CPU in the normal suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")]


def train(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def gpu_check_part(out: Path, name: str) -> dict:
    """bench/gpu_check.py's part `name` in smoke shapes on the GPU (after its data part): its figures, the
    part having succeeded. The check's parts are this file's GPU paths."""
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    check = gpu_check.Check(gpu_check.parse_args(["--smoke", "--device", "cuda", "--out", str(out)]))
    check.part("data", check.part_data)
    check.part(name, getattr(check, f"part_{name}"))
    result = check.results[name]
    assert result["status"] == "ok", result
    return result


def test_fp16_dynamic_loss_scaling_skips_an_injected_overflow_and_halves_the_scale(tmp_path):
    fp16 = gpu_check_part(tmp_path, "fp16")
    assert fp16["loss_scale_after"] <= fp16["loss_scale_before"] / 2 and fp16["skipped_steps"] >= 2


def test_bf16_trains_to_a_small_target_on_the_gpu(tmp_path, python_corpus, encoding):
    import data_prep

    data = tmp_path / "data"
    data_prep.prepare([str(python_corpus(400_000, files=8))], data, val_fraction=0.25, workers=1, verbose=False)
    proc = train(tmp_path, "--deepspeed_config", str(REPO / "ds_configs" / "zero2.json"), "--data", str(data),
                 "--out", str(tmp_path / "run"), "--block-size", "64", "--max-steps", "300", "--lr", "3e-3",
                 "--eval-interval", "10", "--target-loss", "4.5", "--sample-tokens", "8")
    assert proc.returncode == 0 and "target reached at step" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    assert "peak memory" in proc.stdout


def test_a_device_oom_is_one_line_naming_the_knobs(tmp_path):
    """The GPU check's oom part: 1024 sequences a micro-batch, far past any GPU's memory at the first step."""
    oom = gpu_check_part(tmp_path, "oom")
    assert "ran out of memory at step 1" in oom["message"] and "lower train_micro_batch_size_per_gpu" in oom["message"]


def test_greedy_generation_on_the_gpu_equals_the_cpus():
    from gpt_ds.generate import Sampling, generate
    from gpt_ds.model import GPT, config_from_preset

    torch.manual_seed(0)
    model = GPT(config_from_preset("tiny")).eval()
    with torch.no_grad():  # decisive logits: a fresh model's are nearly tied, and ties may break either way
        model.transformer.wte.weight.mul_(20)
    prompts = [[464, 2068, 7586, 21831], [50256]]
    greedy = Sampling(max_new_tokens=32, temperature=0.0, stop_token=None)
    on_cpu = generate(model, prompts, greedy)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides, no TF32 rounding
    try:
        on_gpu = generate(model.to("cuda"), prompts, greedy)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert on_gpu == on_cpu and all(len(t) == 32 for t in on_gpu)
