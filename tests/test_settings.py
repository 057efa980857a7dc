"""gpt_ds.settings: the command line of launch/train.py and the values that need nothing but themselves."""

from __future__ import annotations

import pytest

from gpt_ds.errors import UserError
from gpt_ds.settings import DEFAULT_WARMUP, settings_from_args

BASE = ["--deepspeed_config", "ds.json", "--data", "data", "--out", "run"]


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
    (["--n-layer", "0"], "--n-layer must be a positive integer"),
    (["--seq-len", "-4"], "--seq-len must be a positive integer"),
    (["--target-loss", "0"], "--target-loss must be positive"),
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
