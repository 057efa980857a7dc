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
from gpt_ds.config_variant import write_variant, zero_stage
from gpt_ds.errors import UserError
from gpt_ds.model_config import GPTConfig

REPO = Path(__file__).resolve().parents[1]
SHAPE = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32"]
MUON = REPO / "ds_configs" / "zero2_muon.json"
MUON_FLAGS = ["--recipe", "modern", "--save-interval", "2", "--sample-tokens", "0"]


def random_data(root: Path) -> Path:
    """`root`, with 20,000 random tokens in `root`/data."""
    from gpt_ds.data import write_shard

    (root / "data").mkdir()
    write_shard(root / "data" / "train_000000.bin", np.random.default_rng(0).integers(0, 50257, 20_000))
    return root


def train(root: Path, out: Path, config: Path, *flags: str) -> subprocess.CompletedProcess:
    """launch/train.py on one rank, in `root` (a tmp folder), on the random tokens of `root`/data."""
    args = ["--deepspeed_config", str(config), "--data", str(root / "data"), "--out", str(out), *SHAPE, *flags]
    return subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *args], cwd=root, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def tag_dir(tmp_path_factory) -> Path:
    """The step-2 checkpoint of a 2-step run on one rank (ZeRO-2, bf16)."""
    root = random_data(tmp_path_factory.mktemp("reshard"))
    proc = train(root, root / "run", REPO / "ds_configs" / "zero2.json", "--max-steps", "2", "--save-interval", "2",
                 "--sample-tokens", "0")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return root / "run" / "checkpoints" / checkpoint.tag_for(2)


@pytest.fixture(scope="module")
def muon_run(tmp_path_factory) -> Path:
    """A 2-step run of the modern recipe (Muon on the hidden matrices, Adam on the rest) on one rank
    (ZeRO-2, bf16): its run folder, the checkpoint of step 2 in it."""
    root = random_data(tmp_path_factory.mktemp("reshard_muon"))
    proc = train(root, root / "run", MUON, *MUON_FLAGS, "--max-steps", "2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return root / "run"


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


def test_a_muon_checkpoint_converts_with_each_matrixs_momentum(muon_run, tmp_path):
    """ds_to_universal stops at Muon's momentum (KeyError 'exp_avg'): convert gets it past, with every
    weight and the Adam half's moments, and writes the hidden matrices' momentum beside them."""
    from gpt_ds.engine import hidden_matrices
    from gpt_ds.model import GPT

    original = copy_of(muon_run / "checkpoints" / checkpoint.tag_for(2), tmp_path)
    universal = reshard.convert(original)
    model = GPT(GPTConfig.from_dict(checkpoint.read_client_state(original)["model"]))
    hidden, shapes = hidden_matrices(model), {name: tuple(p.shape) for name, p in model.named_parameters()}
    momenta = reshard.momenta(original)
    assert set(momenta) == hidden and reshard.optimizer_step(universal) == 2.0
    for name, shape in shapes.items():
        states = reshard.load_parameter(universal, name, shape)
        if name in hidden:  # its momentum alone: no Adam stand-ins, no step count
            assert sorted(states) == ["fp32", "momentum_buffer"], name
            assert torch.equal(states["momentum_buffer"], momenta[name])
        else:
            assert sorted(states) == ["exp_avg", "exp_avg_sq", "fp32", "step"], name
    # a real momentum in the projections (c_fc's and c_attn's stay zero while the zero-initialised projections
    # block their gradients)
    assert all(momenta[name].abs().sum() > 0 for name in hidden if name.endswith("c_proj.weight"))


def test_a_damaged_muon_checkpoint_or_universal_copy_is_one_line_with_the_fix(muon_run, tmp_path):
    original = copy_of(muon_run / "checkpoints" / checkpoint.tag_for(2), tmp_path / "damaged")
    optimizer_file = next(original.glob("*optim_states.pt"))
    saved = torch.load(optimizer_file, weights_only=False)
    state = saved["optimizer_state_dict"]["base_optimizer_state"]["state"][0]
    state["momentum_buffer"] = state["momentum_buffer"][:-1]  # one element short
    torch.save(saved, optimizer_file)
    with pytest.raises(UserError, match=r"holds a Muon momentum of \d+ elements, its matrices have \d+: the "
                                        "checkpoint is damaged; resume from another checkpoint"):
        reshard.convert(original)
    assert not reshard.universal_dir(original).exists() and not reshard.staging_dirs(original.parent)

    # a universal copy without one matrix's momentum: the resume (at ZeRO-1: a reshard) stops in one line
    run = Path(shutil.copytree(muon_run, tmp_path / "run"))
    universal = reshard.convert(run / "checkpoints" / checkpoint.tag_for(2))
    (universal / "zero" / "transformer.h.0.attn.c_proj.weight" / "momentum_buffer.pt").unlink()
    zero1 = write_variant(tmp_path / "muon_zero1.json", MUON, edit=zero_stage(1))
    proc = train(muon_run.parent, run, zero1, *MUON_FLAGS, "--max-steps", "4")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ("c_proj.weight holds the optimizer states [], its group's parameters ['momentum_buffer']: the universal "
            "copy is damaged; delete it and resume again to convert the checkpoint anew") in proc.stderr


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
