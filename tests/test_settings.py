"""gpt_ds.settings: the command line of launch/train.py, the values that need nothing but themselves, and the
DeepSpeed JSON held against what DeepSpeed knows (unknown keys, optimizer values), on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_ds.config_variant import ZERO2, write_variant
from gpt_ds.errors import UserError
from gpt_ds.plan import changed_settings
from gpt_ds.settings import DEFAULT_WARMUP, resolve_ds_config, settings_from_args

REPO = Path(__file__).resolve().parents[1]
MUON = REPO / "ds_configs" / "zero2_muon.json"
FP16 = REPO / "ds_configs" / "zero2_fp16.json"
BASE = ["--deepspeed_config", str(ZERO2), "--data", "data", "--out", "run"]


def test_defaults_and_shape_overrides():
    s = settings_from_args(BASE)
    assert s.shape_overrides == {} and s.seq_len is None and s.warmup == DEFAULT_WARMUP  # 1000 steps: 100
    s = settings_from_args([*BASE, "--n-layer", "3", "--n-head", "2", "--n-embd", "64", "--block-size", "1024",
                            "--seq-len", "256"])
    assert s.shape_overrides == {"n_layer": 3, "n_head": 2, "n_embd": 64, "block_size": 1024} and s.seq_len == 256


def test_warmup_follows_a_short_schedule_and_an_explicit_one_is_checked():
    assert settings_from_args([*BASE, "--max-steps", "30"]).warmup == 3  # 10% of the schedule
    assert settings_from_args([*BASE, "--max-steps", "5"]).warmup == 0
    assert settings_from_args([*BASE, "--max-steps", "30", "--lr-decay-steps", "5000"]).warmup == DEFAULT_WARMUP
    assert settings_from_args([*BASE, "--max-steps", "30", "--warmup-steps", "7"]).warmup == 7
    with pytest.raises(UserError, match=r"--warmup-steps \(30\) must be below the schedule length \(30"):
        settings_from_args([*BASE, "--max-steps", "30", "--warmup-steps", "30"])


@pytest.mark.parametrize("flags, words", [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--min-lr", "-1"], "--min-lr must be a finite number"),
    (["--peak-tflops", "0"], "--peak-tflops must be a positive number"),
    (["--collective-timeout", "0"], "--collective-timeout must be a positive number of seconds"),
    (["--collective-timeout", "nan"], "--collective-timeout must be a positive number of seconds"),
    (["--n-layer", "0"], "--n-layer must be a positive integer"),
    (["--seq-len", "-4"], "--seq-len must be a positive integer"),
    (["--target-loss", "0"], "--target-loss must be a positive number"),
    (["--target-loss", "nan"], "--target-loss must be a positive number"),
    (["--resume", "/no/such/tag"], "no such checkpoint folder"),
])
def test_bad_values_are_one_line_errors(flags, words):
    with pytest.raises(UserError) as err:
        settings_from_args([*BASE, *flags])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_recipe_and_schedule_defaults_and_overrides():
    s = settings_from_args(BASE)
    assert (s.recipe, s.schedule, s.decay_fraction, s.architecture_overrides) == ("gpt2", "cosine", None, {})
    s = settings_from_args([*BASE, "--schedule", "wsd"])
    assert (s.schedule, s.decay_fraction) == ("wsd", 0.2)  # recorded as resolved
    s = settings_from_args([*BASE, "--recipe", "modern"])
    assert s.schedule == "wsd" and s.architecture_overrides == dict(
        pos_embedding="rope", qk_norm=True, mlp="relu2", zero_init_proj=True, tie_head=False, logit_softcap=30.0)
    s = settings_from_args([*BASE, "--recipe", "modern", "--schedule", "cosine", "--tie-head", "--logit-softcap", "0"])
    # explicit flags win over the recipe
    assert s.schedule == "cosine" and s.architecture_overrides["tie_head"] is True
    assert s.architecture_overrides["logit_softcap"] is None and s.architecture_overrides["mlp"] == "relu2"
    s = settings_from_args([*BASE, "--qk-norm", "--pos-embedding", "rope"])  # a piece without the recipe
    assert s.recipe == "gpt2" and s.architecture_overrides == {"qk_norm": True, "pos_embedding": "rope"}


@pytest.mark.parametrize("flags, words", [
    (["--decay-fraction", "0.3"], "--decay-fraction applies to --schedule wsd only"),
    (["--schedule", "wsd", "--decay-fraction", "0"], "--decay-fraction must be in (0, 1]"),
    (["--schedule", "wsd", "--decay-fraction", "1.5"], "--decay-fraction must be in (0, 1]"),
    (["--schedule", "wsd", "--max-steps", "100", "--warmup-steps", "50", "--decay-fraction", "0.6"],
     "exceed the schedule length (100)"),
    (["--logit-softcap", "-1"], "--logit-softcap must be a positive number"),
])
def test_bad_schedule_and_recipe_values_are_one_line_errors(flags, words):
    with pytest.raises(UserError) as err:
        settings_from_args([*BASE, *flags])
    assert words in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ the command line's own errors


@pytest.mark.parametrize("flags, words", [
    (["--max-steps", "x"], "argument --max-steps: invalid int value: 'x'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--recipe", "nope"], "argument --recipe: invalid choice: 'nope'"),
])
def test_argparse_errors_are_one_line_user_errors_for_every_rank(flags, words, capsys):
    with pytest.raises(UserError) as err:
        settings_from_args([*BASE, *flags])
    message = str(err.value)
    assert message.startswith(words) and "--help" in message and "\n" not in message
    assert err.value.every_rank and capsys.readouterr().err == ""  # no usage printed: run_cli prints the one line


def test_help_still_prints_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        settings_from_args(["--help"])
    assert exit_info.value.code == 0 and "--strict-config" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the DeepSpeed JSON


def ds_config(tmp_path: Path, source: Path = ZERO2, edit=None) -> Path:
    """A copy of `source` with `edit(config)` applied."""
    return write_variant(tmp_path / "ds.json", source, edit)


@pytest.mark.parametrize("shipped", sorted((REPO / "ds_configs").glob("*.json")), ids=lambda p: p.name)
def test_the_shipped_configs_have_no_unknown_keys(shipped, capsys):
    settings_from_args(["--deepspeed_config", str(shipped), "--data", "data", "--out", "run"])
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
    argv = ["--deepspeed_config", str(ds_config(tmp_path, source, edit)), "--data", "data", "--out", "run"]
    settings_from_args(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch/train.py: warning: DeepSpeed config ")
    assert f"unknown key {words}; DeepSpeed ignores it" in err and "--strict-config" in err
    with pytest.raises(UserError) as refused:
        settings_from_args([*argv, "--strict-config"])
    assert f"unknown key {words}; DeepSpeed ignores it and --strict-config refuses it" in str(refused.value)
    monkeypatch.setenv("RANK", "1")  # the other ranks read the same file: rank 0 alone says so
    monkeypatch.setenv("WORLD_SIZE", "2")
    settings_from_args(argv)
    assert "warning:" not in capsys.readouterr().err


@pytest.mark.parametrize("source, edit, words", REFUSED, ids=[w.split()[0] for *_, w in REFUSED])
def test_a_key_deepspeed_would_fail_on_is_refused_before_any_work(source, edit, words, tmp_path):
    argv = ["--deepspeed_config", str(ds_config(tmp_path, source, edit)), "--data", "data", "--out", "run"]
    with pytest.raises(UserError) as err:
        settings_from_args(argv)
    message = str(err.value)
    assert f"unknown key {words}; DeepSpeed would fail on it when its engine starts" in message and "\n" not in message


def test_every_unknown_key_is_named_in_one_line(tmp_path, capsys):
    def edit(config):
        config["steps_per_prnt"] = 10
        config["optimizer"]["params"]["momentun"] = 0.9
    settings_from_args(["--deepspeed_config", str(ds_config(tmp_path, MUON, edit)), "--data", "d", "--out", "r"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown keys optimizer.params.momentun (did you mean momentum?), " \
        "steps_per_prnt (did you mean steps_per_print?); DeepSpeed ignores them" in err  # in the file's order


def test_an_optimizer_type_deepspeed_lacks_is_refused_with_the_nearest(tmp_path):
    path = ds_config(tmp_path, edit=_set("optimizer", "type", "AdamWW"))
    with pytest.raises(UserError, match=r"optimizer.type 'AdamWW' is neither .* \(did you mean AdamW\?\)"):
        settings_from_args(["--deepspeed_config", str(path), "--data", "d", "--out", "r"])
    resolve_ds_config(ds_config(tmp_path, edit=_set("optimizer", "type", "SGD")), 1)  # torch.optim's: fine


def test_a_folder_for_the_config_is_named_a_folder(tmp_path):
    with pytest.raises(UserError) as err:
        settings_from_args(["--deepspeed_config", str(tmp_path), "--data", "d", "--out", "r"])
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
    path = ds_config(tmp_path, source, _set_param(key, value))
    with pytest.raises(UserError) as err:
        resolve_ds_config(path, world_size=1)
    assert str(err.value) == f"DeepSpeed config {path}: {words}"


def test_strict_config_is_not_a_changed_setting_on_resume():
    saved = settings_from_args(BASE).to_dict()
    assert changed_settings(saved, settings_from_args([*BASE, "--strict-config"])) == ""


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(zero_optimization=[2]), "zero_optimization must be a JSON object (got [2])"),
    (lambda c: c.update(bf16=True), "bf16 must be a JSON object"),
    (lambda c: c["bf16"].update(enabled="yes"), "bf16.enabled must be true or false (got 'yes')"),
    (lambda c: c.update(gradient_clipping="1.0"), "gradient_clipping must be a number >= 0"),
    (lambda c: c.update(gradient_clipping=-1), "gradient_clipping must be a number >= 0, 0 for none (got -1)"),
])
def test_shapes_deepspeed_assumes_are_checked_before_any_work(edit, words, tmp_path):
    """A list or a bare boolean for a section, a string "enabled" (silently another precision), a string or
    negative gradient_clipping (a traceback in DeepSpeed, or no clipping): one line each."""
    path = ds_config(tmp_path, edit=edit)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        settings_from_args(["--deepspeed_config", str(path), "--data", "data", "--out", "run"])
    with pytest.raises(UserError, match="must be"):
        resolve_ds_config(path, 1)
