"""Tests of gpt_ds.app_support: discovery, safe loading, the model card, prompt checks, streaming,
TensorBoard curves (real event files) and attention data, without a page."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from app_fixtures import STEPS, TARGET_LOSS, TARGET_STEP, TRAIN_TOKENS, lr_at, make_run, train_loss_at

from gpt_ds import app_support as support
from gpt_ds.errors import UserError
from gpt_ds.generate import generate
from gpt_ds.tokenizer import get_encoding


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "demo"
    make_run(run)
    return run


@pytest.fixture(scope="module")
def loaded(run_dir):
    return support.load_model_for_app(run_dir / "model", "cpu")


def test_parse_app_args_takes_model_and_ignores_others():
    assert support.parse_app_args(["--model", "~/m", "--other", "x"]).model == Path("~/m").expanduser()
    assert support.parse_app_args([]).model is None


def test_discover_finds_model_folders_newest_first(tmp_path, run_dir):
    older = make_run(tmp_path / "runs" / "group" / "older", with_tb=False)
    newer = make_run(tmp_path / "runs" / "newer", with_tb=False)
    os.utime(older / "model.safetensors", (1, 1))
    (tmp_path / "runs" / "not-a-model").mkdir()
    (tmp_path / "runs" / "half").mkdir()
    (tmp_path / "runs" / "half" / "config.json").write_text("{}")  # no weights: not offered
    too_deep = tmp_path / "runs" / "a" / "b" / "c" / "d" / "e"
    make_run(too_deep, with_tb=False)

    found = support.discover_model_folders([tmp_path / "runs", tmp_path / "missing"])
    assert found == [newer.resolve(), older.resolve()]


def test_resolve_model_folder_explains_bad_paths(tmp_path):
    with pytest.raises(UserError, match="no model folder given"):
        support.resolve_model_folder("  ")
    with pytest.raises(UserError, match="does not exist"):
        support.resolve_model_folder(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        support.resolve_model_folder(tmp_path / "file")


def test_model_card_reports_config_and_training_metadata(run_dir, loaded):
    model, info = loaded
    card = support.model_card(model, info)
    assert (card.preset, card.context, card.n_layer, card.n_head, card.n_embd) == ("tiny", 64, 2, 2, 32)
    assert card.parameters == model.num_params() > 0
    assert (card.steps, card.tokens, card.target_loss, card.target_reached, card.target_step) == (
        STEPS, TRAIN_TOKENS, TARGET_LOSS, True, TARGET_STEP)
    assert card.train_loss == pytest.approx(train_loss_at(STEPS))
    assert support.format_count(124_439_808) == "124M" and support.format_count(None) == "—"


def _copy_model(run_dir: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("model.safetensors", "config.json"):
        (to / name).write_bytes((run_dir / "model" / name).read_bytes())
    return to


def test_truncated_weights_give_a_user_error(tmp_path, run_dir):
    folder = _copy_model(run_dir, tmp_path / "cut")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="model.safetensors"):
        support.load_model_for_app(folder, "cpu")


def test_config_not_matching_weights_gives_a_user_error(tmp_path, run_dir):
    folder = _copy_model(run_dir, tmp_path / "mismatch")
    document = json.loads((folder / "config.json").read_text())
    document["model"]["n_embd"] = 64
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match="shape"):
        support.load_model_for_app(folder, "cpu")


def test_encode_prompt_rejects_empty_and_too_long():
    with pytest.raises(UserError, match="prompt is empty"):
        support.encode_prompt(" \n ", "r50k_base", 64)
    with pytest.raises(UserError, match="context is 64 tokens"):
        support.encode_prompt("word " * 100, "r50k_base", 64)
    assert support.encode_prompt("Hello world", "r50k_base", 64) == [15496, 995]


def test_stream_is_reproducible_with_a_seed_and_matches_generate(loaded):
    model, info = loaded
    prompt = support.encode_prompt("ROMEO:", info.tokenizer, info.config.block_size)
    controls = support.GenerationControls(12, 1.0, 0, 1.0, 7)

    def final(seed):
        updates = list(support.stream_continuation(model, info.tokenizer, prompt, replace(controls, seed=seed)))
        counts = [u.tokens for u in updates]
        assert counts == sorted(counts) and updates[-1].tokens_per_sec > 0
        return updates[-1]

    first, again, other = final(7), final(7), final(8)
    expected = generate(model, [prompt], 12, **controls.sampling_kwargs())[0]
    assert (first.text, first.tokens) == (get_encoding().decode(expected), len(expected))
    assert (again.text, again.tokens) == (first.text, first.tokens)
    assert other.text != first.text  # a random 50k-way model: two seeds agree with odds ~0


def test_controls_map_to_generate_arguments():
    greedy = support.GenerationControls(temperature=0.0, top_k=0, top_p=1.0, seed=None).sampling_kwargs()
    assert (greedy["temperature"], greedy["top_k"], greedy["top_p"], greedy["seed"]) == (0.0, None, None, None)
    sampled = support.GenerationControls(temperature=0.7, top_k=40, top_p=0.9, seed=3).sampling_kwargs()
    assert (sampled["temperature"], sampled["top_k"], sampled["top_p"], sampled["seed"]) == (0.7, 40, 0.9, 3)


def test_run_curves_come_from_the_tensorboard_files(run_dir, loaded):
    curves = support.read_run_curves(run_dir / "tb")
    train = curves.series[support.TRAIN_LOSS_TAG]
    assert [s for s, _ in train] == list(range(0, STEPS + 1, 10))
    assert train[3][1] == pytest.approx(train_loss_at(30), rel=1e-6)
    assert [s for s, _ in curves.series[support.VAL_LOSS_TAG]] == [0, 50, 100, 150, 200]
    assert curves.series[support.LR_TAG][-1][1] == pytest.approx(lr_at(STEPS), rel=1e-6)
    assert support.run_dir_of(run_dir / "model") == run_dir.resolve()

    spec = json.dumps(support.loss_chart(curves, TARGET_LOSS).to_dict())
    assert "val loss" in spec and '"target"' in spec and str(TARGET_LOSS) in spec


def test_resumed_run_curve_has_each_step_once(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    tb = tmp_path / "tb"
    first = SummaryWriter(str(tb))
    for step in range(0, 100, 10):
        first.add_scalar("train/loss", 10.0, step)
    first.close()
    resumed = SummaryWriter(str(tb), purge_step=50)  # as training does on resume
    for step in range(50, 150, 10):
        resumed.add_scalar("train/loss", 5.0, step)
    resumed.close()
    series = support.read_run_curves(tb).series["train/loss"]
    assert [s for s, _ in series] == list(range(0, 150, 10))
    assert [v for s, v in series if s >= 50] == [5.0] * 10


def test_missing_tb_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no TensorBoard logs"):
        support.read_run_curves(tmp_path / "tb")


def test_attention_map_is_causal_and_rows_sum_to_one(loaded):
    model, info = loaded
    ids = support.encode_prompt("To be, or not to be, that is the question", info.tokenizer)
    attention = support.attention_map(model, info.tokenizer, ids, layer=1, head=1)
    n = len(ids)
    assert len(attention.labels) == len(set(attention.labels)) == n
    assert attention.labels[1] == "1·␣be"
    weights = torch.tensor(attention.weights)
    assert torch.allclose(weights.sum(-1), torch.ones(n), atol=1e-5)
    assert torch.count_nonzero(torch.triu(weights, diagonal=1)) == 0
    with pytest.raises(UserError, match="do not exist"):
        support.attention_map(model, info.tokenizer, ids, layer=2, head=0)


def test_attention_map_keeps_the_last_tokens_of_long_text(loaded):
    model, info = loaded
    ids = list(range(100, 200))  # longer than the context (64): the last block is used
    attention = support.attention_map(model, info.tokenizer, ids, layer=0, head=0, max_shown=16)
    assert len(attention.labels) == 16 and attention.first_position == 84 and attention.total_tokens == 100
    assert attention.labels[-1].startswith("99·")
    spec = support.attention_chart(attention).to_dict()
    assert len(spec["datasets"][next(iter(spec["datasets"]))]) == 16 * 17 // 2  # the causal half


def test_streamlit_config_binds_to_localhost(repo_root):
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    config = tomllib.loads((repo_root / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] == "none"
