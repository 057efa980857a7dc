"""gpt_ds.ds_config: the DeepSpeed JSON read once and resolved for a world size into one DeepSpeedConfig, every
value checked first (a clear line rather than a traceback deep in DeepSpeed), on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_ds import ds_config
from gpt_ds.config_variant import ZERO2, write_variant
from gpt_ds.errors import UserError
from gpt_ds.plan import plan_run
from gpt_ds.settings import settings_from_args

REPO = Path(__file__).resolve().parents[1]
MUON = REPO / "ds_configs" / "zero2_muon.json"


def edited(tmp_path: Path, source: Path = ZERO2, edit=None) -> Path:
    """A copy of `source` with `edit(config)` applied."""
    return write_variant(tmp_path / "ds.json", source, edit)


def _set_param(key: str, value):
    def edit(config):
        config["optimizer"]["params"][key] = value
    return edit


def resolve(path: Path, world_size: int = 1) -> ds_config.DeepSpeedConfig:
    return ds_config.resolve(ds_config.load(path), path, world_size)


def test_the_json_resolves_into_one_typed_config_and_stays_as_read():
    loaded = ds_config.load(ZERO2)
    ds = ds_config.resolve(loaded, ZERO2, world_size=2)
    assert (ds.path, ds.micro_batch, ds.accumulation, ds.train_batch_size, ds.zero_stage) == (str(ZERO2), 8, 1, 16, 2)
    assert (ds.precision, ds.is_muon, ds.weight_decay, ds.lr, ds.muon_lr_ratio) == ("bf16", False, 0.1, 1e-3, None)
    assert ds.config["train_batch_size"] == 16 and "train_batch_size" not in loaded  # the loaded dict is untouched
    pinned = ds_config.resolve(loaded, ZERO2, world_size=1, global_batch=16)  # a resume's global batch
    assert (pinned.micro_batch, pinned.accumulation, pinned.train_batch_size) == (8, 2, 16)
    muon = resolve(MUON)
    assert (muon.is_muon, muon.lr, muon.muon_lr_ratio) == (True, 0.008, pytest.approx(0.05 / 0.008))


def test_the_schedules_learning_rates_come_from_the_flags_or_the_json(tmp_path):
    ds = resolve(ZERO2)
    assert ds.learning_rates(None, None) == (1e-3, pytest.approx(1e-4))
    assert ds.learning_rates(2e-3, 0.0) == (2e-3, 0.0)
    assert ds.learning_rates(None, None, fine_tune=True) == (pytest.approx(1e-3 / 3), pytest.approx(1e-4 / 3))
    assert ds.learning_rates(2e-3, None, fine_tune=True) == (2e-3, pytest.approx(2e-4))  # --lr wins
    with pytest.raises(UserError, match=r"--min-lr 0\.01 is above the peak learning rate 0\.001"):
        ds.learning_rates(None, 1e-2)
    ds = resolve(edited(tmp_path, edit=lambda c: c["optimizer"]["params"].pop("lr")))
    with pytest.raises(UserError, match=r"no learning rate: pass --lr or set optimizer.params.lr in the DeepSpeed"):
        ds.learning_rates(None, None)


def test_a_folder_for_the_config_is_named_a_folder(tmp_path):
    with pytest.raises(UserError) as err:
        plan_run(settings_from_args(["--deepspeed_config", str(tmp_path), "--data", "d", "--out", "r"]), 1)
    assert str(err.value) == (f"DeepSpeed config {tmp_path} is a folder; pass a JSON file to --deepspeed_config, "
                              "e.g. ds_configs/zero2.json")


@pytest.mark.parametrize("source, key, value, words", [
    (ZERO2, "lr", "fast", "optimizer.params.lr must be a number >= 0 (got 'fast')"),
    (ZERO2, "lr", True, "optimizer.params.lr must be a number >= 0 (got True)"),
    (ZERO2, "weight_decay", "0.1", "optimizer.params.weight_decay must be a number >= 0 (got '0.1')"),
    (ZERO2, "eps", -1e-8, "optimizer.params.eps must be a number >= 0 (got -1e-08)"),
    (ZERO2, "betas", [0.9, 1.5], "optimizer.params.betas must be two numbers in [0, 1), e.g. [0.9, 0.95] "
                                 "(got [0.9, 1.5])"),
    (MUON, "muon_lr", "high", "optimizer.params.muon_lr must be a number >= 0 (got 'high')"),
    (MUON, "adam_lr", None, "optimizer.params.adam_lr must be a number >= 0 (got None)"),
])
def test_optimizer_numbers_that_are_not_show_their_value(source, key, value, words, tmp_path):
    path = edited(tmp_path, source, _set_param(key, value))
    with pytest.raises(UserError) as err:
        resolve(path, world_size=1)
    assert str(err.value) == f"DeepSpeed config {path}: {words}"


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(zero_optimization=[2]), "zero_optimization must be a JSON object (got [2])"),
    (lambda c: c.update(bf16=True), "bf16 must be a JSON object"),
    (lambda c: c["bf16"].update(enabled="yes"), "bf16.enabled must be true or false (got 'yes')"),
    (lambda c: c.update(gradient_clipping="1.0"), "gradient_clipping must be a number >= 0"),
    (lambda c: c.update(gradient_clipping=-1), "gradient_clipping must be a number >= 0, 0 for none (got -1)"),
])
def test_shapes_deepspeed_assumes_are_checked_before_any_work(edit, words, tmp_path):
    """A list or a bare boolean for a section, a string "enabled" (silently another precision), a string or
    negative gradient_clipping (a traceback in DeepSpeed, or no clipping): one line each, from the plan (its key
    check comes first) and from the resolver alone."""
    path = edited(tmp_path, edit=edit)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        plan_run(settings_from_args(["--deepspeed_config", str(path), "--data", "data", "--out", "run"]), 1)
    with pytest.raises(UserError, match="must be"):
        resolve(path, 1)
