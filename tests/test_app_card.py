"""Tests of app/card.py: the model card from a model folder's config, training record and benchmark results."""

from __future__ import annotations

import shutil

import pytest
from app_fixtures import (
    MODERN_ARCHITECTURE,
    MODERN_TINY_CONFIG,
    STEPS,
    TARGET_LOSS,
    TARGET_STEP,
    TINY_CONFIG,
    TRAIN_TOKENS,
    VAL_BPB,
    make_run,
    train_loss_at,
)

from card import format_accuracy, format_count, format_loss, model_card
from gpt_ds.eval_results import read_results, write_result
from gpt_ds.inference import load_for_inference
from gpt_ds.model import GPT
from gpt_ds.model_io import read_model_info, save_model
from gpt_ds.record import RunRecord


def test_model_card_reports_config_and_training_metadata(tmp_path):
    model, info = load_for_inference(make_run(tmp_path / "demo", with_tb=False))
    card = model_card(model, info)
    assert (card.preset, card.context, card.n_layer, card.n_head, card.n_embd) == ("tiny", 64, 2, 2, 32)
    assert card.parameters == model.num_params() > 0
    assert (card.steps, card.tokens, card.target_loss, card.target_reached, card.target_step) == (
        STEPS, TRAIN_TOKENS, TARGET_LOSS, True, TARGET_STEP)
    assert card.train_loss == pytest.approx(train_loss_at(STEPS))
    assert card.val_bpb == VAL_BPB and format_loss(card.val_bpb) == "1.250"
    assert card.architecture == "GPT-2"


def test_a_record_from_before_bits_per_byte_loads_without_them(tmp_path):
    record = RunRecord(step=STEPS, tokens=TRAIN_TOKENS, val_loss=3.5, preset="tiny").to_dict()
    del record["val_bpb"]  # as folders written before val_bpb existed hold it
    folder = save_model(tmp_path / "old", GPT(TINY_CONFIG), TINY_CONFIG, metadata=record)
    card = model_card(*load_for_inference(folder))
    assert (card.steps, card.val_loss, card.val_bpb) == (STEPS, 3.5, None)
    assert card.eval_tasks is None  # nor --eval-tasks' scores
    assert format_count(124_439_808) == "124M" and format_count(None) == "—"


def test_the_card_shows_the_eval_tasks_scores(tmp_path):
    scores = {"stdlib_mc": {"acc": 0.3114, "acc_norm": 0.2966, "n": 500}}
    record = RunRecord(step=STEPS, tokens=TRAIN_TOKENS, val_loss=3.5, preset="tiny", eval_tasks=scores).to_dict()
    folder = save_model(tmp_path / "mc", GPT(TINY_CONFIG), TINY_CONFIG, metadata=record)
    card = model_card(*load_for_inference(folder))
    assert card.eval_tasks == scores
    assert format_accuracy(card.eval_tasks["stdlib_mc"]["acc_norm"]) == "29.7%" and format_accuracy(None) == "—"


def test_a_model_without_a_training_record_has_its_shape_and_unknown_figures(tmp_path):
    # As gpt_ds.hf import writes it: metadata, but no record of a run.
    folder = save_model(tmp_path / "imported", GPT(TINY_CONFIG), TINY_CONFIG, metadata={"source": "huggingface"})
    model, info = load_for_inference(folder)
    card = model_card(model, info)
    assert (card.context, card.n_layer, card.n_head, card.n_embd) == (64, 2, 2, 32)
    assert (card.preset, card.steps, card.tokens, card.train_loss, card.val_loss) == (None,) * 5
    assert (card.target_loss, card.target_reached, card.target_step) == (None,) * 3
    assert format_count(card.steps) == format_loss(card.val_loss) == "—"


def test_format_loss():
    assert format_loss(3.14159) == "3.142"
    assert format_loss(float("nan")) == format_loss(None) == "—"


def test_a_modern_model_card_names_its_architecture_and_counts_its_head(tmp_path):
    model, info = load_for_inference(make_run(tmp_path / "modern", with_tb=False, config=MODERN_TINY_CONFIG))
    card = model_card(model, info)
    assert card.architecture == MODERN_ARCHITECTURE and card.preset == "modern-tiny"
    gpt2 = GPT(TINY_CONFIG)
    # No position table (64 x 32), an untied head (50257 x 32) of its own.
    assert card.parameters == model.num_params() == gpt2.num_params() - 64 * 32 + 50257 * 32


def test_the_card_shows_results_of_these_weights_only(tmp_path):
    folder = save_model(tmp_path / "m", GPT(TINY_CONFIG), TINY_CONFIG)
    info = read_model_info(folder)
    write_result(folder, "hellaswag", {"acc,none": 0.31, "acc_norm,none": 0.3114, "acc_stderr,none": 0.01,
                                       "alias": "hellaswag"}, {"weights_sha256": info.weights_sha256})
    write_result(folder, "old", {"acc,none": 0.9}, {"weights_sha256": "0" * 64})  # other weights
    (folder / "evals" / "torn.json").write_text("{")  # unreadable: left out, never an error
    results = read_results(folder, info.weights_sha256)
    assert [(r.task, r.metrics) for r in results] == [("hellaswag", {"acc": 0.31, "acc_norm": 0.3114})]
    card = model_card(*load_for_inference(folder))
    assert card.benchmarks == (("hellaswag", "acc_norm", 0.3114),)
    shutil.rmtree(folder / "evals")
    assert model_card(*load_for_inference(folder)).benchmarks == ()


def test_the_card_names_the_parent_of_a_fine_tune(tmp_path):
    lineage = {"folder": "/runs/base/model", "kind": "gpt-ds", "weights_sha256": "ab" * 32, "tokens": 1_228_800,
               "steps": 300}
    record = RunRecord(step=STEPS, tokens=TRAIN_TOKENS, val_loss=3.5, preset="tiny", init_from=lineage).to_dict()
    folder = save_model(tmp_path / "tuned", GPT(TINY_CONFIG), TINY_CONFIG, metadata=record)
    assert model_card(*load_for_inference(folder)).parent == "/runs/base/model, 1.23M tokens, 300 steps of its own"
    hf = {"folder": "/hub/gpt2", "kind": "huggingface", "weights_sha256": "cd" * 32, "tokens": None, "steps": None}
    record = RunRecord(step=STEPS, tokens=TRAIN_TOKENS, preset="tiny", init_from=hf).to_dict()
    folder = save_model(tmp_path / "tuned-hf", GPT(TINY_CONFIG), TINY_CONFIG, metadata=record)
    assert model_card(*load_for_inference(folder)).parent == "/hub/gpt2 (Hugging Face)"
    assert model_card(*load_for_inference(save_model(tmp_path / "scratch", GPT(TINY_CONFIG), TINY_CONFIG,
                                                     metadata=RunRecord(step=1).to_dict()))).parent is None
