"""gpt_ds.ds_keys: the DeepSpeed JSON's keys held against those DeepSpeed knows (its config reader, its pydantic
models, its optimizers' constructors): unknown keys and optimizer types, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_ds import ds_config
from gpt_ds.ds_keys import check_ds_config_keys
from gpt_ds.config_variant import ZERO2, write_variant
from gpt_ds.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MUON = REPO / "ds_configs" / "zero2_muon.json"
FP16 = REPO / "ds_configs" / "zero2_fp16.json"


def ds_json(tmp_path: Path, source: Path = ZERO2, edit=None) -> Path:
    """A copy of `source` with `edit(config)` applied."""
    return write_variant(tmp_path / "ds.json", source, edit)


def check(path: Path, strict: bool = False) -> None:
    """The check as gpt_ds.plan.plan_run makes it, on the JSON it read."""
    check_ds_config_keys(ds_config.load(path), str(path), strict=strict)


@pytest.mark.parametrize("shipped", sorted((REPO / "ds_configs").glob("*.json")), ids=lambda p: p.name)
def test_the_shipped_configs_have_no_unknown_keys(shipped, capsys):
    check(shipped)
    assert "warning:" not in capsys.readouterr().err


def _set(section: str, key: str, value):
    def edit(config):
        (config.setdefault(section, {}) if section else config)[key] = value
    return edit


def _set_param(key: str, value):
    def edit(config):
        config["optimizer"]["params"][key] = value
    return edit


# Keys DeepSpeed ignores without a word: a warning, or an error under --strict-config.
IGNORED = [
    (ZERO2, _set("", "wall_clock_breakdwn", False), "wall_clock_breakdwn (did you mean wall_clock_breakdown?)"),
    (ZERO2, _set("", "gradient_clipin", 1.0), "gradient_clipin (did you mean gradient_clipping?)"),
    (ZERO2, _set("checkpoint", "tag_validaton", "Warn"), "checkpoint.tag_validaton (did you mean tag_validation?)"),
    (ZERO2, _set("optimizer", "parms", {}), "optimizer.parms (did you mean params?)"),
    (MUON, _set_param("momentun", 0.9), "optimizer.params.momentun (did you mean momentum?)"),
]
# Keys DeepSpeed would fail on once the engine starts (a traceback on every rank): refused before any work.
REFUSED = [
    (ZERO2, _set("zero_optimization", "stgae", 2), "zero_optimization.stgae (did you mean stage?)"),
    (ZERO2, _set("zero_optimization", "offload_optimizer", {"devcie": "cpu"}),
     "zero_optimization.offload_optimizer.devcie (did you mean device?)"),
    (ZERO2, _set("bf16", "enabeld", True), "bf16.enabeld (did you mean enabled?)"),
    (FP16, _set("fp16", "loss_scale_windw", 500), "fp16.loss_scale_windw (did you mean loss_scale_window?)"),
    (ZERO2, _set_param("weigth_decay", 0.1), "optimizer.params.weigth_decay (did you mean weight_decay?)"),
]


@pytest.mark.parametrize("source, edit, words", IGNORED, ids=[w.split()[0] for *_, w in IGNORED])
def test_a_key_deepspeed_ignores_is_one_warning_line_or_an_error_when_strict(source, edit, words, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    path = ds_json(tmp_path, source, edit)
    check(path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch/train.py: warning: DeepSpeed config ")
    assert f"unknown key {words}; DeepSpeed ignores it" in err and "--strict-config" in err
    with pytest.raises(UserError) as refused:
        check(path, strict=True)
    assert f"unknown key {words}; DeepSpeed ignores it and --strict-config refuses it" in str(refused.value)
    monkeypatch.setenv("RANK", "1")  # the other ranks read the same file: rank 0 alone says so
    monkeypatch.setenv("WORLD_SIZE", "2")
    check(path)
    assert "warning:" not in capsys.readouterr().err


@pytest.mark.parametrize("source, edit, words", REFUSED, ids=[w.split()[0] for *_, w in REFUSED])
def test_a_key_deepspeed_would_fail_on_is_refused_before_any_work(source, edit, words, tmp_path):
    with pytest.raises(UserError) as err:
        check(ds_json(tmp_path, source, edit))
    message = str(err.value)
    assert f"unknown key {words}; DeepSpeed would fail on it when its engine starts" in message and "\n" not in message


def test_every_unknown_key_is_named_in_one_line(tmp_path, capsys):
    def edit(config):
        config["steps_per_prnt"] = 10
        config["optimizer"]["params"]["momentun"] = 0.9
    check(ds_json(tmp_path, MUON, edit))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown keys optimizer.params.momentun (did you mean momentum?), " \
        "steps_per_prnt (did you mean steps_per_print?); DeepSpeed ignores them" in err  # in the file's order


def test_an_optimizer_type_deepspeed_lacks_is_refused_with_the_nearest(tmp_path):
    path = ds_json(tmp_path, edit=_set("optimizer", "type", "AdamWW"))
    with pytest.raises(UserError, match=r"optimizer.type 'AdamWW' is neither .* \(did you mean AdamW\?\)"):
        check(path)
    sgd = ds_json(tmp_path, edit=_set("optimizer", "type", "SGD"))
    ds_config.resolve(ds_config.load(sgd), sgd, 1)  # torch.optim's: fine
