"""The run contract: RunDir names every path of a run, RunRecord is the one record of its outcome,
and gpt_ds.tags spells each TensorBoard tag once."""

from __future__ import annotations

from pathlib import Path

from gpt_ds import tags
from gpt_ds.record import RunRecord
from gpt_ds.run_dir import RunDir


def test_run_dir_names_the_paths(tmp_path):
    run = RunDir(tmp_path / "run")
    assert (run.tb, run.checkpoints, run.model, run.slurm, run.settings) == (
        tmp_path / "run" / "tb", tmp_path / "run" / "checkpoints", tmp_path / "run" / "model",
        tmp_path / "run" / "slurm", tmp_path / "run" / "settings.json")
    assert RunDir(run) == run and Path(run) == tmp_path / "run" and str(run) == str(tmp_path / "run")


def test_a_model_folder_knows_its_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.model.mkdir(parents=True)
    assert RunDir.of_model(run.model) is None  # no TensorBoard logs: not (yet) a run
    run.tb.mkdir()
    assert RunDir.of_model(run.model) == RunDir(run.root.resolve())
    assert RunDir.of_model(tmp_path / "run" / "elsewhere") is None  # a model folder not named model/


def test_record_round_trip_and_target():
    record = RunRecord(step=7, tokens=700, train_seconds=1.5, train_loss=3.2, val_loss=3.4, val_bpb=1.1, target_loss=3.5,
                       preset="tiny", world_size=2, precision="bf16", seed=1, data="d")
    assert not record.target_reached
    record.reach_target()
    assert (record.target_step, record.target_tokens, record.target_seconds) == (7, 700, 1.5)
    record.advance(tokens=100, seconds=0.5)
    assert (record.step, record.tokens, record.train_seconds) == (8, 800, 2.0)
    saved = record.to_dict()
    assert saved["target_reached"] is True
    assert RunRecord.from_dict({**saved, "model": {"n_layer": 2}, "rng": "x"}) == record  # other keys ignored


def test_record_from_foreign_metadata_reads_unknown_as_unknown():
    record = RunRecord.from_dict({"step": "many", "val_loss": "2.5", "preset": 3, "target_step": True})
    assert record.step == 0 and record.val_loss == 2.5 and record.preset is None and record.target_step is None
    assert RunRecord.from_dict(None) == RunRecord() and not RunRecord.from_dict({}).target_reached
    assert RunRecord.from_dict({"val_loss": 2.5}).val_bpb is None  # a record from before val_bpb existed


def test_tags_are_unique_and_contract_tags_present():
    values = [v for k, v in vars(tags).items() if k.isupper()]
    assert len(values) == len(set(values))
    for tag in ("train/loss", "val/loss", "val/bpb", "train/lr", "train/grad_norm", "train/loss_scale",
                "train/tokens_per_sec", "train/mfu"):  # docs/design.md: the TensorBoard contract
        assert tag in values
