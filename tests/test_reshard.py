"""gpt_ds.reshard: the universal copy of a real checkpoint (one rank, a 1-layer model) and what is
refused on the way. Restoring it into engines of another world size or ZeRO stage is checked against
straight runs in test_train.py (elastic, fp32 to 1e-4 and bf16 within its tolerance)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_ds import checkpoint, reshard
from gpt_ds.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHAPE = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32"]


@pytest.fixture(scope="module")
def tag_dir(tmp_path_factory) -> Path:
    """The step-2 checkpoint of a 2-step run on one rank (ZeRO-2, bf16)."""
    from gpt_ds.data import write_shard

    root = tmp_path_factory.mktemp("reshard")
    (root / "data").mkdir()
    write_shard(root / "data" / "train_000000.bin", np.random.default_rng(0).integers(0, 50257, 20_000))
    args = ["--deepspeed_config", str(REPO / "ds_configs" / "zero2.json"), "--data", str(root / "data"),
            "--out", str(root / "run"), *SHAPE, "--max-steps", "2", "--save-interval", "2", "--sample-tokens", "0"]
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *args], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return root / "run" / "checkpoints" / checkpoint.tag_for(2)


def copy_of(tag_dir: Path, into: Path) -> Path:
    (into / "checkpoints").mkdir(parents=True)
    return Path(shutil.copytree(tag_dir, into / "checkpoints" / tag_dir.name))


def test_the_universal_copy_lies_beside_the_untouched_original(tag_dir, tmp_path):
    original = copy_of(tag_dir, tmp_path)
    files = checkpoint.file_records(original)
    universal = reshard.convert(original)
    assert universal == reshard.universal_dir(original) == original.with_name(original.name + ".universal")
    assert checkpoint.file_records(original) == files and not reshard.staging_dirs(original.parent)
    assert not (original.parent / "latest_universal").exists()
    assert reshard.optimizer_step(universal) == 2.0
    states = reshard.load_parameter(universal, "transformer.wte.weight", (50304, 32))
    assert sorted(states) == ["exp_avg", "exp_avg_sq", "fp32", "step"]
    assert all(t.dtype == torch.float32 for t in states.values()) and states["exp_avg_sq"].min() >= 0
    marker = universal / "zero" / "transformer.wte.weight" / "fp32.pt"
    stamp = marker.stat().st_mtime_ns
    assert reshard.convert(original) == universal and marker.stat().st_mtime_ns == stamp  # made once


def test_a_conversion_deepspeed_cannot_make_is_one_line_and_leaves_nothing(tag_dir, tmp_path):
    original = copy_of(tag_dir, tmp_path)
    optimizer_file = next(original.glob("*optim_states.pt"))
    torch.save({}, optimizer_file)  # loadable, but not a ZeRO optimizer state
    files = checkpoint.file_records(original)
    with pytest.raises(UserError, match=r"converting .*step_00000002 to a universal checkpoint failed \(.+\); the "
                                        r"checkpoint is untouched: resume it with its own number of ranks"):
        reshard.convert(original)
    assert checkpoint.file_records(original) == files
    assert not reshard.universal_dir(original).exists() and not reshard.staging_dirs(original.parent)


def test_a_disk_without_room_for_the_copy_refuses_before_writing(tag_dir, tmp_path, small_disk):
    size = sum(p.stat().st_size for p in tag_dir.iterdir())
    original = copy_of(tag_dir, small_disk(size * 1.2 / 2**20))
    with pytest.raises(UserError, match=r"no space left on the device for the universal copy .*step_00000002.universal"):
        reshard.convert(original)
    assert not reshard.universal_dir(original).exists() and not reshard.staging_dirs(original.parent)


def test_a_damaged_universal_copy_is_refused_with_the_fix(tag_dir, tmp_path):
    universal = reshard.convert(copy_of(tag_dir, tmp_path))
    with pytest.raises(UserError, match="shape .* the model's transformer.wte.weight is .*delete the universal folder"):
        reshard.load_parameter(universal, "transformer.wte.weight", (50304, 64))
    (universal / "zero" / "transformer.ln_f.bias" / "fp32.pt").unlink()
    with pytest.raises(UserError, match="no weights for the parameter transformer.ln_f.bias.*convert the checkpoint anew"):
        reshard.load_parameter(universal, "transformer.ln_f.bias", (32,))
    torch.save(torch.tensor(7.0), universal / "zero" / "transformer.ln_f.weight" / "step.pt")
    with pytest.raises(UserError, match=r"optimizer states at 2 step counts \(\[2.0, 7.0\]\)"):
        reshard.optimizer_step(universal)


def test_prune_takes_the_universal_copies_with_their_checkpoints_and_cut_off_conversions(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        tag = checkpoints / checkpoint.tag_for(step)
        tag.mkdir(parents=True)
        (tag / checkpoint.CLIENT_STATE).write_text("{}")
        reshard.universal_dir(tag).mkdir()
    (checkpoints / checkpoint.LATEST).write_text(checkpoint.tag_for(6))
    cut_off = checkpoints / f".{checkpoint.tag_for(6)}.universal.tmp-123"
    cut_off.mkdir()
    assert reshard.staging_dirs(checkpoints) == [cut_off]
    checkpoint.prune(checkpoints, keep=2)
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == [
        "step_00000004", "step_00000004.universal", "step_00000006", "step_00000006.universal"]
