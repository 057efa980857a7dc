"""gpt_ds.settings: the command line of launch/train.py and the values that need nothing but themselves; parsing
reads no DeepSpeed JSON and imports no DeepSpeed (tests/test_ds_config.py and test_ds_keys.py hold the JSON)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_ds.config_variant import ZERO2
from gpt_ds.errors import UserError
from gpt_ds.plan import changed_settings
from gpt_ds.settings import DEFAULT_WARMUP, settings_from_args

REPO = Path(__file__).resolve().parents[1]
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
    assert (s.recipe, s.schedule_kind, s.decay_fraction, s.architecture_overrides) == ("gpt2", "cosine", None, {})
    assert (s.to_dict()["schedule"], s.to_dict()["decay_fraction"]) == ("cosine", None)
    s = settings_from_args([*BASE, "--schedule", "wsd"])
    assert (s.to_dict()["schedule"], s.to_dict()["decay_fraction"]) == ("wsd", 0.2)  # recorded as resolved
    s = settings_from_args([*BASE, "--recipe", "modern"])
    assert s.schedule is None and s.decay_fraction is None  # the flags as given: nothing resolved is written back
    assert s.to_dict()["schedule"] == "wsd" and s.architecture_overrides == dict(
        pos_embedding="rope", qk_norm=True, mlp="relu2", zero_init_proj=True, tie_head=False, logit_softcap=30.0)
    s = settings_from_args([*BASE, "--recipe", "modern", "--schedule", "cosine", "--tie-head", "--logit-softcap", "0"])
    # explicit flags win over the recipe
    assert s.schedule_kind == "cosine" and s.architecture_overrides["tie_head"] is True
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


def test_strict_config_is_not_a_changed_setting_on_resume():
    saved = settings_from_args(BASE).to_dict()
    assert changed_settings(saved, settings_from_args([*BASE, "--strict-config"])) == ""


def test_parsing_reads_no_json_and_imports_no_deepspeed(tmp_path):
    """The command line alone: a fresh interpreter parses valid flags without DeepSpeed, and without opening the
    JSON (it is not there yet; gpt_ds.plan.plan_run reads it)."""
    argv = ["--deepspeed_config", str(tmp_path / "later.json"), "--data", "data", "--out", "run"]
    code = ("import sys; from gpt_ds.settings import settings_from_args; "
            f"settings_from_args({argv!r}); print('deepspeed' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
