"""gpt_ds.export: a run's ZeRO checkpoint consolidated into a model folder whose metadata is the
checkpoint's RunRecord; one-line errors for a folder that is not a run or a tag that is not complete;
the program (`python -m gpt_ds.export`, a real process) never writes --out into or over the run's
checkpoints and replaces an --out that is not a model folder only with --force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_ds import checkpoint
from gpt_ds.data import write_shard
from gpt_ds.errors import UserError
from gpt_ds.export import export_run
from gpt_ds.model_io import load_model
from gpt_ds.record import RunRecord
from gpt_ds.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> RunDir:
    """A 3-step single-rank run of a 1-layer model, checkpointed at steps 2 and 3."""
    folder = tmp_path_factory.mktemp("export")
    data = folder / "data"
    data.mkdir()
    write_shard(data / "train_000000.bin", np.random.default_rng(0).integers(0, 50257, 20_000))
    run = RunDir(folder / "run")
    args = ["--deepspeed_config", str(REPO / "ds_configs" / "zero2.json"), "--data", str(data), "--out", str(run),
            "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--max-steps", "3",
            "--save-interval", "2", "--sample-tokens", "0", "--target-loss", "1.0"]
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *args], cwd=folder,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_the_model_folder_carries_the_checkpoints_record(trained_run, tmp_path):
    tag_dir = trained_run.checkpoints / checkpoint.tag_for(2)
    folder = export_run(trained_run, tag=tag_dir.name, dtype="bfloat16", out=tmp_path / "m")
    model, info = load_model(folder)
    saved = checkpoint.read_client_state(tag_dir)
    assert info.metadata == {**RunRecord.from_dict(saved).to_dict(), "checkpoint": tag_dir.name, "dtype": "bfloat16"}
    assert info.metadata["step"] == 2 and info.metadata["world_size"] == 1 and not info.metadata["target_reached"]
    assert (info.config.n_layer, info.config.n_embd, info.config.block_size) == (1, 32, 32)
    final, _ = load_model(trained_run.model)  # the run exported its last step itself
    assert RunRecord.from_dict(load_model(trained_run.model)[1].metadata).step == 3
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), final.state_dict().values()))


def test_not_a_run_and_incomplete_tags_are_one_line_errors(trained_run, tmp_path):
    with pytest.raises(UserError, match="has no checkpoints/ folder"):
        export_run(tmp_path)
    with pytest.raises(UserError, match=r"step_00000009 not found or incomplete .* complete tags: step_00000002, "
                                        r"step_00000003"):
        export_run(trained_run, tag=checkpoint.tag_for(9), out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_settings_json_is_the_run_written_at_its_start(trained_run):
    settings = json.loads(trained_run.settings.read_text())
    assert settings["settings"]["n_layer"] == 1 and settings["model"]["n_embd"] == 32 and settings["step"] == 0
    assert settings["ds_config"]["train_batch_size"] == settings["world_size"] * 8



def export_program(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt_ds.export", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) with its bytes: to show a refusal touched nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and result.stdout == "", result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt-ds-export: error: "), result.stderr
    return lines[0].removeprefix("gpt-ds-export: error: ")


@pytest.mark.parametrize("where, relation", [("checkpoints", "is"), ("a tag", "is inside"), ("RUN_DIR", "holds"),
                                             ("a link to checkpoints", "is")])
def test_out_never_goes_into_or_over_the_checkpoints_even_with_force(trained_run, tmp_path, where, relation):
    out = {"checkpoints": trained_run.checkpoints, "a tag": trained_run.checkpoints / checkpoint.tag_for(3),
           "RUN_DIR": trained_run.root, "a link to checkpoints": tmp_path / "link"}[where]
    if where.startswith("a link"):
        os.symlink(trained_run.checkpoints, out)
    before = snapshot(trained_run.root)
    message = one_error_line(export_program(trained_run, "--out", out, "--force"))
    assert message.startswith(f"the output folder {out} {relation} the input {trained_run.checkpoints}")
    assert message.endswith("(--force does not change this)")
    assert snapshot(trained_run.root) == before


def test_an_out_holding_other_files_is_replaced_only_with_force(trained_run, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    assert one_error_line(export_program(trained_run, "--out", out)) == (
        f"{out} exists and holds other files (todo.txt): writing a gpt-ds model folder there would replace it; "
        "choose a new or empty folder, or pass --force to replace it and everything in it")
    assert snapshot(out) == {"todo.txt": b"keep me"}
    forced = export_program(trained_run, "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    again = export_program(trained_run, "--tag", checkpoint.tag_for(2), "--out", out)  # a model folder: replaced
    assert again.returncode == 0, again.stderr
    assert load_model(out)[1].metadata["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no staging folder left beside it


def test_a_full_disk_during_the_export_is_one_line_and_leaves_no_folder(trained_run, small_disk):
    out = small_disk(1) / "model"  # 1 MB: the 1-layer model's fp32 weights (6.5 MB) do not fit
    proc = subprocess.run([sys.executable, "-m", "gpt_ds.export", str(trained_run.root), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no space left on the device writing" in errors[0] and "needs about 6.5 MB" in errors[0]
    assert not out.exists() and not list(out.parent.iterdir())  # no model folder, no staging left behind
