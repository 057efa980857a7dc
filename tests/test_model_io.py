"""Tests of gpt_ds.model_io: the model folder round trip (GPT-2 and the modern recipe), what it
stores, and every bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_ds.errors import UserError
from gpt_ds.model import GPT, MODERN_RECIPE, GPTConfig
from gpt_ds.model_io import expected_shapes, load_model, read_model_info, save_model

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=100)
MODERN = dataclasses.replace(CONFIG, **MODERN_RECIPE)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG)


@pytest.fixture
def saved(tmp_path, model):
    return save_model(tmp_path / "model", model, CONFIG, metadata={"steps": 7, "val_loss": 3.5})


def logits(model: GPT) -> torch.Tensor:
    idx = torch.arange(12).view(1, 12) * 7 % CONFIG.vocab_size
    with torch.no_grad():
        return model(idx)[0].float()


def test_round_trip_gives_the_same_model_config_and_metadata(saved, model, tmp_path):
    loaded, info = load_model(saved)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    assert info.config == CONFIG and info.tokenizer == "r50k_base" and info.folder == saved
    assert info.metadata == {"steps": 7, "val_loss": 3.5}
    assert read_model_info(saved) == info
    assert not loaded.training
    # Exactly the two files, nothing left over beside them, and the embedding at its real size.
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    tensors = load_file(saved / "model.safetensors")
    assert tensors["transformer.wte.weight"].shape == (CONFIG.vocab_size, CONFIG.n_embd)
    assert "lm_head.weight" not in tensors
    document = json.loads((saved / "config.json").read_text())
    assert document["model"] == CONFIG.to_dict()


def test_load_in_bfloat16(saved, model):
    loaded, _ = load_model(saved, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0.05, atol=0.05)


def test_state_dicts_of_wrapped_models_are_accepted(tmp_path, model):
    # DeepSpeed/DDP add `module.`, torch.compile `_orig_mod.`; some exporters add a tied lm_head.weight.
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    wrapped["lm_head.weight"] = model.transformer.wte.weight
    loaded, _ = load_model(save_model(tmp_path / "m", wrapped, CONFIG))
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


def test_saving_again_replaces_a_model_folder_but_never_other_files(tmp_path, saved, model):
    save_model(saved, model, CONFIG, metadata={"steps": 8})
    assert read_model_info(saved).metadata == {"steps": 8}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "settings.json").write_text("{}")
    with pytest.raises(UserError, match="holds other files \\(settings.json\\).*new or empty folder"):
        save_model(run_dir, model, CONFIG)
    assert (run_dir / "settings.json").read_text() == "{}"


def test_a_failed_save_leaves_nothing_behind(tmp_path, model):
    with pytest.raises(UserError, match="JSON-serialisable"):
        save_model(tmp_path / "m", model, CONFIG, metadata={"bad": object()})
    wrong = GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=100)
    with pytest.raises(UserError, match="tensor transformer.h.2.ln_1.weight is missing"):
        save_model(tmp_path / "m", model, wrong)
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_config_or_weights(tmp_path, saved):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="has no config.json, so it is not a model folder.*RUN_DIR/model"):
        load_model(empty)
    (saved / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_model(saved)


@pytest.mark.parametrize(
    "document, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"tokenizer": "r50k_base"}', 'no "model" object'),
        ('{"model": {"n_layer": 2}}', "missing field"),
        ('{"model": {"n_layer": 2, "n_head": 3, "n_embd": 32, "block_size": 16}}', "must be divisible by n_head"),
        ('{"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "layers": 1}}', "unknown field"),
    ],
)
def test_malformed_config_json(saved, document, message):
    (saved / "config.json").write_text(document)
    with pytest.raises(UserError, match=message):
        read_model_info(saved)


@pytest.mark.parametrize(
    "change, first_mismatch",
    [
        ({"n_embd": 64}, r"tensor transformer.wte.weight has shape \[100, 32\] but the config needs \[100, 64\]"),
        ({"n_layer": 3}, "tensor transformer.h.2.ln_1.weight is missing"),
        ({"n_layer": 1}, "unexpected tensor transformer.h.1.attn.c_attn.bias"),
        ({"bias": False}, "unexpected tensor transformer.h.0.attn.c_attn.bias"),
    ],
)
def test_weights_that_do_not_match_the_config_name_the_first_tensor(saved, change, first_mismatch):
    document = json.loads((saved / "config.json").read_text())
    document["model"].update(change)
    (saved / "config.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match=first_mismatch):
        load_model(saved)


def test_corrupt_or_foreign_weights_file(saved):
    (saved / "model.safetensors").write_bytes(b"\x80\x04 this is a pickle, not safetensors")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_model(saved)
    save_file({"weight": torch.zeros(3)}, str(saved / "model.safetensors"))
    with pytest.raises(UserError, match="tensor transformer.wte.weight is missing"):
        load_model(saved)


@pytest.fixture
def modern_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(MODERN)
    with torch.no_grad():
        for p in model.parameters():  # fresh, the head and projections are zero: make every tensor count
            p.normal_(0.0, 0.3)
    return model


def test_modern_round_trip_stores_the_untied_head_and_no_position_table(tmp_path, modern_model):
    folder = save_model(tmp_path / "modern", modern_model, MODERN, metadata={"preset": "modern-tiny"})
    loaded, info = load_model(folder)
    assert info.config == MODERN and info.config.architecture == "modern: rope, qk-norm, relu², untied, softcap 30"
    torch.testing.assert_close(logits(loaded), logits(modern_model), rtol=0, atol=0)
    tensors = load_file(folder / "model.safetensors")
    assert "transformer.wpe.weight" not in tensors
    assert tensors["lm_head.weight"].shape == tensors["transformer.wte.weight"].shape == (CONFIG.vocab_size, CONFIG.n_embd)
    torch.testing.assert_close(tensors["lm_head.weight"], modern_model.lm_head.weight[: CONFIG.vocab_size])
    assert set(tensors) == set(expected_shapes(MODERN))
    assert torch.count_nonzero(loaded.lm_head.weight[CONFIG.vocab_size :]) == 0  # padding rows re-added as zeros
    document = json.loads((folder / "config.json").read_text())
    assert document["model"] == MODERN.to_dict() and document["model"]["pos_embedding"] == "rope"
    # Wrapped state dicts (DeepSpeed, torch.compile) of an untied model keep their head.
    wrapped = {f"module._orig_mod.{k}": v for k, v in modern_model.state_dict().items()}
    again, _ = load_model(save_model(tmp_path / "wrapped", wrapped, MODERN))
    torch.testing.assert_close(logits(again), logits(modern_model), rtol=0, atol=0)
    loaded_bf16, _ = load_model(folder, dtype="bfloat16")
    torch.testing.assert_close(logits(loaded_bf16), logits(modern_model), rtol=0.05, atol=0.1)


def test_an_old_gpt2_folder_still_loads(saved, model):
    # config.json as gpt-ds wrote it before the recipe fields existed: the 7 GPT-2 fields.
    document = json.loads((saved / "config.json").read_text())
    assert sorted(document["model"]) == sorted(["n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias"])
    loaded, info = load_model(saved)
    assert info.config == CONFIG and info.config.tie_head and info.config.pos_embedding == "learned"
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, first_mismatch",
    [
        ({"tie_head": True}, "unexpected tensor lm_head.weight"),
        ({"pos_embedding": "learned"}, "tensor transformer.wpe.weight is missing"),
        ({"qk_norm": "no"}, "qk_norm must be true or false"),
    ],
)
def test_a_modern_folder_whose_config_was_changed_is_refused(tmp_path, modern_model, change, first_mismatch):
    folder = save_model(tmp_path / "modern", modern_model, MODERN)
    document = json.loads((folder / "config.json").read_text())
    document["model"].update(change)
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match=first_mismatch):
        load_model(folder)


def test_a_tied_model_drops_a_tied_head_but_an_untied_config_needs_its_own(tmp_path, model):
    untied = dataclasses.replace(CONFIG, tie_head=False)
    with pytest.raises(UserError, match="tensor lm_head.weight is missing"):
        save_model(tmp_path / "m", model, untied)  # a tied model's weights lack the head
    state = {**model.state_dict(), "lm_head.weight": model.transformer.wte.weight}
    loaded, _ = load_model(save_model(tmp_path / "tied", state, CONFIG))  # dropped: wte's second name
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
