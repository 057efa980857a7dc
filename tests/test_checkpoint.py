"""gpt_ds.checkpoint: which tag is the latest complete one, keep-last-K, resume resolution, model check.

The DeepSpeed side (save/load through a real engine, kill -9 while saving) is exercised by the
multi-rank runs in test_train.py; these are the file-level rules, fast.
"""

from __future__ import annotations

import json

import pytest

from gpt_ds import atomic, checkpoint
from gpt_ds.errors import UserError

MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 8, "block_size": 16, "vocab_size": 50257, "dropout": 0.0, "bias": True}


def make_tag(checkpoints, step, complete=True):
    tag_dir = checkpoints / checkpoint.tag_for(step)
    tag_dir.mkdir(parents=True)
    (tag_dir / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    if complete:
        (tag_dir / checkpoint.CLIENT_STATE).write_text(json.dumps({"step": step, "model": MODEL, "world_size": 1}))
    return tag_dir


def test_latest_is_only_a_complete_checkpoint(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    assert checkpoint.latest_tag_dir(checkpoints) is None
    assert checkpoint.resolve_resume("auto", tmp_path) is None
    done = make_tag(checkpoints, 10)
    atomic.write_text(checkpoints / checkpoint.LATEST, done.name)
    make_tag(checkpoints, 12, complete=False)  # cut off while written: no client_state.json, not latest
    assert checkpoint.latest_tag_dir(checkpoints) == done
    assert checkpoint.resolve_resume("auto", tmp_path) == done
    assert checkpoint.resolve_resume(str(checkpoints), tmp_path) == done
    assert checkpoint.resolve_resume(str(done), tmp_path) == done
    assert checkpoint.resolve_resume("never", tmp_path) is None
    with pytest.raises(UserError, match="not a complete checkpoint"):
        checkpoint.resolve_resume(str(checkpoints / checkpoint.tag_for(12)), tmp_path)
    # a `latest` pointing at an incomplete folder is reported, not trusted
    atomic.write_text(checkpoints / checkpoint.LATEST, checkpoint.tag_for(12))
    with pytest.raises(UserError, match="incomplete"):
        checkpoint.latest_tag_dir(checkpoints)


def test_prune_keeps_the_newest_k_and_drops_partial_ones(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        make_tag(checkpoints, step)
    make_tag(checkpoints, 9, complete=False)
    (checkpoints / "zero_to_fp32.py").write_text("# DeepSpeed's script, not a tag")
    atomic.write_text(checkpoints / checkpoint.LATEST, checkpoint.tag_for(8))
    checkpoint.prune(checkpoints, keep=2)
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "latest", checkpoint.tag_for(6), checkpoint.tag_for(8), "zero_to_fp32.py"]
    checkpoint.prune(checkpoints, keep=1)
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == [checkpoint.tag_for(8)]


def test_a_different_model_config_is_refused_with_the_difference(tmp_path):
    checkpoint.check_same_model({"model": MODEL}, dict(MODEL), tmp_path)
    with pytest.raises(UserError, match=r"n_embd: checkpoint 8 vs now 16"):
        checkpoint.check_same_model({"model": MODEL}, {**MODEL, "n_embd": 16}, tmp_path)


def test_resume_never_refuses_a_run_dir_with_checkpoints(tmp_path):
    checkpoint.check_fresh_run_dir(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    make_tag(checkpoints, 2)
    atomic.write_text(checkpoints / checkpoint.LATEST, checkpoint.tag_for(2))
    with pytest.raises(UserError, match="--resume never"):
        checkpoint.check_fresh_run_dir(tmp_path)


# ---- a full disk: real runs into a small tmpfs --------------------------------------------------------

@pytest.mark.parametrize("ranks", [1, 2])
def test_a_full_disk_stops_every_rank_with_one_line_and_keeps_the_previous_checkpoint(small_disk, tmp_path, ranks):
    """A 1-layer, 32-wide model's checkpoint takes ~23 MB (the 50k-row embedding's bf16 weights, fp32
    master copy and two Adam moments): on a 32 MB file system the one at step 2 fits, the one at step 4
    does not. The run stops before writing it: one error line, exit 2, step 2 still `latest` and whole."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    from gpt_ds import distributed
    from gpt_ds.data import write_shard

    repo = Path(__file__).resolve().parents[1]
    data = tmp_path / "data"
    data.mkdir()
    write_shard(data / "train_000000.bin", np.random.default_rng(0).integers(0, 50257, 20_000))
    out = small_disk(32) / "run"
    args = ["--deepspeed_config", str(repo / "ds_configs" / "zero2.json"), "--data", str(data), "--out", str(out),
            "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--max-steps", "6",
            "--save-interval", "2", "--sample-tokens", "0"]
    script = str(repo / "launch" / "train.py")
    command = distributed.launcher_command(ranks, script, args) if ranks > 1 else [sys.executable, script, *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if "launch/train.py: error:" in line]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert "no space left on the device for the checkpoint" in errors[0] and "step_00000004" in errors[0]
    assert "MB is free" in errors[0] and "needs about" in errors[0]
    checkpoints = out / "checkpoints"
    assert checkpoint.read_latest(checkpoints) == checkpoint.tag_for(2)
    checkpoint.verify(checkpoints / checkpoint.tag_for(2))  # whole: sizes and sha256 as recorded
    assert not (checkpoints / checkpoint.tag_for(4)).exists()


def test_a_latest_that_is_a_folder_and_a_client_state_that_is_not_an_object_are_refused(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    done = make_tag(checkpoints, 2)
    (checkpoints / checkpoint.LATEST).mkdir()
    with pytest.raises(UserError, match="latest is not a file"):
        checkpoint.resolve_resume("auto", tmp_path)  # not "no checkpoint": that would train over step 2
    (done / checkpoint.CLIENT_STATE).write_text("[1, 2]")
    with pytest.raises(UserError, match="not a gpt-ds client state"):
        checkpoint.read_client_state(done)
