"""gpt_ds.safe_load and the checkpoint's file record: no code runs from a checkpoint file, and a
damaged one is one line naming it.

A real run writes the checkpoints; each of its `.pt` files in turn is replaced by a pickle that
would create a marker file when unpickled (and its sha256 re-recorded, as an attacker who can write
the folder would). Resume (launch/train.py), export (python -m gpt_ds.export) and the Slurm task
(launch/submit.py --cluster local, submitit's real task) must refuse it and the marker never
appears. Then a truncated file (the record kept): the same consumers say which file and which
earlier checkpoint to resume from; under 2 ranks both stop promptly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_ds import checkpoint, distributed, safe_load
from gpt_ds.data import write_shard
from gpt_ds.errors import UserError
from gpt_ds.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


class WritesAFile:
    """Unpickled by a plain pickle, this calls open(marker, "w"): the file appearing is code having run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--deepspeed_config", str(REPO / "ds_configs" / "zero2.json"), "--data", str(data), "--out", str(out),
            "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--save-interval", "2",
            "--sample-tokens", "0", "--target-loss", "0.5", *extra]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, RunDir]:
    """(data folder, a 4-step single-rank run checkpointed at steps 2 and 4)."""
    folder = tmp_path_factory.mktemp("trust")
    data = folder / "data"
    data.mkdir()
    write_shard(data / "train_000000.bin", np.random.default_rng(0).integers(0, 50257, 20_000))
    run_dir = RunDir(folder / "run")
    proc = run([sys.executable, str(REPO / "launch" / "train.py"), *train_args(data, run_dir.root, "--max-steps", "4")],
               folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data, run_dir


def copy_run(run_dir: RunDir, to: Path) -> RunDir:
    shutil.copytree(run_dir.root, to, ignore=shutil.ignore_patterns(".lock"))
    return RunDir(to)


def rerecord(tag_dir: Path) -> None:
    """Record the tag folder's files as they are now: what a user who edits the folder can also do."""
    state = json.loads((tag_dir / checkpoint.CLIENT_STATE).read_text())
    state[checkpoint.FILES] = checkpoint.file_records(tag_dir)
    (tag_dir / checkpoint.CLIENT_STATE).write_text(json.dumps(state))


def poison(tag_dir: Path, name: str, marker: Path) -> None:
    """Replace `name` with a torch file whose pickle holds WritesAFile beside the real content."""
    original = torch.load(tag_dir / name, map_location="cpu", weights_only=False)
    torch.save({**original, "payload": WritesAFile(marker)}, tag_dir / name)
    rerecord(tag_dir)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------------ fast

def test_every_file_of_a_real_checkpoint_loads_and_a_code_pickle_is_refused(trained, tmp_path):
    _, run_dir = trained
    tag_dir = checkpoint.latest_tag_dir(run_dir.checkpoints)
    files = sorted(tag_dir.glob("*.pt"))
    assert {p.name for p in files} >= {"mp_rank_00_model_states.pt"} and len(files) == 2
    for path in files:
        safe_load.check(path)
        assert isinstance(safe_load.load(path, map_location="cpu"), dict)
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"module": {}, "payload": WritesAFile(marker)}, evil)
    with pytest.raises(UserError, match=r"refusing to load .*evil\.pt: its pickle calls (io|builtins)\.open"):
        safe_load.check(evil)
    with safe_load.enforced():  # DeepSpeed's own torch.load(..., weights_only=False) inside the scope
        with pytest.raises(UserError, match="refusing to load"):
            torch.load(evil, weights_only=False)
    assert torch.load is safe_load._torch_load  # the scope restores torch.load, also after an error
    assert not marker.exists()


def test_the_record_catches_truncation_and_edits_and_names_the_previous_checkpoint(trained, tmp_path):
    _, original = trained
    run_dir = copy_run(original, tmp_path / "run")
    tag_dir = checkpoint.latest_tag_dir(run_dir.checkpoints)
    state = checkpoint.read_client_state(tag_dir)
    assert set(state[checkpoint.FILES]) == {p.name for p in tag_dir.glob("*.pt")}
    checkpoint.verify(tag_dir)
    optim = next(tag_dir.glob("*optim_states.pt"))
    data = optim.read_bytes()
    optim.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"{optim.name} has [\d,]+ bytes, [\d,]+ when saved .* --resume "
                                        rf"\S*step_00000002, export it with --tag step_00000002\)$"):
        checkpoint.verify(tag_dir)
    optim.write_bytes(data[:-8] + bytes(8))  # same size, other bytes
    with pytest.raises(UserError, match="sha256 mismatch"):
        checkpoint.verify(tag_dir)
    older = run_dir.checkpoints / checkpoint.tag_for(2)
    (older / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(UserError, match="is missing; no earlier complete checkpoint exists"):
        checkpoint.verify(older)


# ------------------------------------------------------------------------------------------ real processes

@pytest.mark.parametrize("which", ["mp_rank_00_model_states.pt", "optim_states.pt"])
def test_resume_and_export_refuse_a_pickle_that_runs_code(trained, tmp_path, which):
    data, original = trained
    run_dir = copy_run(original, tmp_path / "run")
    tag_dir = checkpoint.latest_tag_dir(run_dir.checkpoints)
    name = next(p.name for p in tag_dir.glob("*.pt") if p.name.endswith(which))
    marker = tmp_path / "code-ran"
    poison(tag_dir, name, marker)
    torch.load(tag_dir / name, map_location="cpu", weights_only=False)  # a plain load does run it
    assert marker.exists()
    marker.unlink()

    resume = run([sys.executable, str(REPO / "launch" / "train.py"),
                  *train_args(data, run_dir.root, "--max-steps", "6")], tmp_path)
    assert "refusing to load" in one_line_error(resume) and name in resume.stderr
    export = run([sys.executable, "-m", "gpt_ds.export", str(run_dir.root), "--out", str(tmp_path / "m")], REPO)
    assert "refusing to load" in one_line_error(export)
    assert not marker.exists() and not (tmp_path / "m").exists()
    assert checkpoint.read_client_state(tag_dir)["step"] == 4  # the run dir is as it was


def test_the_slurm_task_refuses_a_pickle_that_runs_code(trained, tmp_path):
    data, original = trained
    run_dir = copy_run(original, tmp_path / "run")
    tag_dir = checkpoint.latest_tag_dir(run_dir.checkpoints)
    marker = tmp_path / "code-ran"
    poison(tag_dir, next(p.name for p in tag_dir.glob("*optim_states.pt")), marker)
    proc = run([sys.executable, str(REPO / "launch" / "submit.py"), "--cluster", "local", "--tasks-per-node", "1",
                "--time", "5", "--wait", "--", *train_args(data, run_dir.root, "--max-steps", "6")], REPO)
    assert proc.returncode != 0
    assert "refusing to load" in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not marker.exists()


def test_two_ranks_stop_together_on_a_truncated_checkpoint(trained, tmp_path):
    """Rank 0 verifies, both ranks learn it: one message, both exit, none hangs in a collective."""
    data, _ = trained
    out = tmp_path / "run2"
    launch = distributed.launcher_command(2, str(REPO / "launch" / "train.py"), [])
    first = run([*launch, *train_args(data, out, "--max-steps", "4")], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    tag_dir = checkpoint.latest_tag_dir(out / "checkpoints")
    rank1 = next(tag_dir.glob("*zero_pp_rank_1_*optim_states.pt"))
    rank1.write_bytes(rank1.read_bytes()[:1000])
    second = run([*launch, *train_args(data, out, "--max-steps", "6")], tmp_path)
    errors = [line for line in (second.stdout + second.stderr).splitlines() if "launch/train.py: error:" in line]
    assert second.returncode != 0 and len(errors) == 1, second.stdout[-3000:] + second.stderr[-3000:]
    assert rank1.name in errors[0] and "--resume" in errors[0] and "step_00000002" in errors[0]


def test_a_file_from_another_checkpoint_is_found_even_with_its_sha256_re_recorded(trained, tmp_path):
    _, original = trained
    run_dir = copy_run(original, tmp_path / "run")
    older, newer = (run_dir.checkpoints / checkpoint.tag_for(step) for step in (2, 4))
    for pattern in ("*optim_states.pt", "mp_rank_00_model_states.pt"):
        name = next(newer.glob(pattern)).name
        saved = (newer / name).read_bytes()
        shutil.copy(older / name, newer / name)
        rerecord(newer)
        with pytest.raises(UserError, match=rf"{name} (holds optimizer states after 2 steps|is of step 2), .*mixes"):
            checkpoint.verify(newer)
        (newer / name).write_bytes(saved)
        rerecord(newer)
    checkpoint.verify(newer)
