"""bench/gpu_check.py --smoke on the CPU, through bench/gpu_run.sh as the lent machine runs it: the prepared GPU
check runs end to end (the real entry points: launch/train.py, python -m gpt_ds.export, launch/sample.py,
python -m gpt_ds.hf, the app's loading path) and leaves what comes back in $OUT, so neither can rot before a GPU is
lent. About 1-3 minutes on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

PARTS = ("env", "data", "bf16", "bf16_compile", "fp16", "overflow_driver", "oom", "modern", "export", "generate",
         "eval", "app")
NEEDS_CUDA = ("fp16", "oom")


@pytest.mark.slow
def test_gpu_check_smoke_on_the_cpu(repo_root, tmp_path, encoding):
    out, back = tmp_path / "gpu_check", tmp_path / "back"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OUT": str(back),
           "GPU_CHECK_DIR": str(out)}
    proc = subprocess.run(["bash", "bench/gpu_run.sh", "--smoke", "--device", "cpu"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # what comes back from a lent machine: the figures, the console with the table, nvidia-smi's view, the logs
    assert sorted(p.name for p in back.iterdir()) == ["gpu_check.json", "gpu_check.log", "logs.tar.gz",
                                                       "nvidia-smi.txt"]
    assert (back / "gpu_check.json").read_text() == (out / "gpu_check.json").read_text()
    assert (back / "gpu_check.log").read_text() == proc.stdout
    with tarfile.open(back / "logs.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"logs/bf16.log", "logs/data_prep.log", "gpu_check.json", "bf16_driver_record.json"} <= names, sorted(names)

    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert tuple(parts) == PARTS
    assert report["ok"] is True and report["failed"] == [] and report["device"] == "cpu" and report["smoke"] is True
    for name in PARTS:
        assert parts[name]["status"] == ("skipped: needs CUDA" if name in NEEDS_CUDA else "ok"), (name, parts[name])

    assert parts["env"]["sdpa_backend"] == "cpu" and parts["env"]["torch"] and parts["env"]["deepspeed"][0].isdigit()
    for name in ("bf16", "bf16_compile", "modern"):
        figures = parts[name]
        assert figures["tokens_per_sec"] > 0 and figures["mfu"] > 0, (name, figures)
        assert figures["steps"] == report["shape"]["steps"]
    assert parts["overflow_driver"]["skipped_steps"] == 1
    assert parts["generate"]["gpt_ds_tokens_per_sec"] > 0 and parts["generate"]["transformers_tokens_per_sec"] > 0
    assert parts["generate"]["greedy_tokens_equal"] == f"{parts['generate']['new_tokens']}/{parts['generate']['new_tokens']}"
    assert parts["app"]["model_device"] == "cpu" and parts["app"]["stream_tokens"] > 0
    assert 0 <= parts["eval"]["acc_norm"] <= 1 and parts["eval"]["bpb"] > 0 and parts["eval"]["dtype"] == "torch.float32"
    assert (out / "hf" / "config.json").is_file() and (out / "runs" / "bf16" / "model" / "model.safetensors").is_file()

    # the one-screen table: a header, a row per part, the verdict
    table = proc.stdout[proc.stdout.index("gpu_check (smoke, device cpu"):]
    for name in PARTS:
        assert any(line.startswith(name + " ") for line in table.splitlines()), name
    assert "fp16            skipped" in table and "needs CUDA" in table
    assert "result: ok" in table
    assert len(table.splitlines()) <= 24


def test_the_fp16_parts_expected_loss_scale_follows_deepspeeds_hysteresis(repo_root, monkeypatch):
    """The rule the fp16 part holds the engine to (it runs on a GPU only): ds_configs/zero2_fp16.json's
    hysteresis 2 spends one overflow, the second halves; a spent hysteresis halves at once; the floor holds.
    DeepSpeed's own DynamicLossScaler, driven the same way, agrees."""
    sys.path.insert(0, str(repo_root / "bench"))
    from gpu_check import expected_loss_scale
    from deepspeed.runtime.fp16 import loss_scaler
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    monkeypatch.setattr(loss_scaler.dist, "get_rank", lambda: 1)  # its log line asks; no process group here

    assert expected_loss_scale(65536.0, 2, 2) == 32768.0
    assert expected_loss_scale(65536.0, 1, 2) == 16384.0
    assert expected_loss_scale(65536.0, 3, 2) == 65536.0
    assert expected_loss_scale(2.0, 1, 3, min_scale=1.0) == 1.0
    for hysteresis, overflows in ((2, 2), (1, 2), (3, 2), (2, 5)):
        scaler = DynamicLossScaler(init_scale=2.0**16, scale_window=1000, min_scale=1, delayed_shift=2,
                                   consecutive_hysteresis=False)
        scaler.cur_hysteresis = hysteresis
        for _ in range(overflows):
            scaler.update_scale(True)
        assert scaler.cur_scale == expected_loss_scale(2.0**16, hysteresis, overflows), (hysteresis, overflows)


def test_parts_runs_the_named_parts_and_what_they_need(repo_root, tmp_path):
    """--parts eval runs data, bf16 and eval (a rerun of what failed); the others are reported as not asked for.
    A part that does not exist is one line and exit 2."""
    sys.path.insert(0, str(repo_root / "bench"))
    from gpu_check import with_needs

    assert with_needs(["eval"]) == ["data", "bf16", "eval"]
    assert with_needs(["generate", "bf16_compile"]) == ["data", "bf16", "bf16_compile", "export", "generate"]
    assert with_needs(["env"]) == ["env"]
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--parts", "bf16,warp", "--out", str(tmp_path)],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--parts: no part warp; choose from env, data" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "gpu_check.json").exists()
