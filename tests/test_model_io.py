"""Tests of gpt_ds.model_io: the model folder round trip (GPT-2 and the modern recipe), what it
stores, and every bad input; the records that let a load trust what is on disk (the architecture in
the weights' header, their sha256 in config.json), and what an existing output folder may be."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gpt_ds.errors import UserError
from gpt_ds.model import GPT, MODERN_RECIPE, GPTConfig
from gpt_ds.model_io import CONFIG_RECORD, expected_shapes, load_model, read_model_info, save_model

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



# ---- trusting what is on disk ----------------------------------------------------------------


def snapshot(folder) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) with its bytes: to show a refusal touched nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_config(folder, **change) -> None:
    document = json.loads((folder / "config.json").read_text())
    document["model"].update(change)
    (folder / "config.json").write_text(json.dumps(document))


def as_saved_before_the_records(folder) -> None:
    """Rewrite `folder` as gpt-ds wrote it before it recorded the architecture and the sha256."""
    save_file(load_file(folder / "model.safetensors"), str(folder / "model.safetensors"), metadata={"format": "pt"})
    document = json.loads((folder / "config.json").read_text())
    del document["weights_sha256"]
    (folder / "config.json").write_text(json.dumps(document))


def test_save_records_the_architecture_in_the_weights_and_their_sha256_in_config_json(saved):
    with safe_open(str(saved / "model.safetensors"), framework="pt") as weights:
        assert json.loads(weights.metadata()[CONFIG_RECORD]) == CONFIG.to_dict()
    document = json.loads((saved / "config.json").read_text())
    assert document["weights_sha256"] == hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
    assert read_model_info(saved).weights_sha256 == document["weights_sha256"]


def test_changed_weights_warn_in_one_line_on_stderr_and_still_load(saved, capsys):
    load_model(saved)
    assert capsys.readouterr().err == ""  # an intact folder: no warning
    weights = saved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 0x01  # one flipped bit in the last tensor's data (a damaged disk, a bad copy)
    weights.write_bytes(bytes(data))
    model, info = load_model(saved)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpt-ds: warning: {weights} has sha256 ")
    assert "changed or damaged" in lines[0] and info.config == CONFIG and not model.training


@pytest.mark.parametrize(
    "config, change, field, said, was",
    [
        (CONFIG, {"n_head": 4}, "n_head", "4", "2"),  # 32 wide either way: every shape agrees
        (CONFIG, {"n_head": 1}, "n_head", "1", "2"),
        (MODERN, {"qk_norm": False}, "qk_norm", "false", "true"),  # the norm has no gain: no tensor
        (MODERN, {"mlp": "gelu"}, "mlp", '"gelu"', '"relu2"'),
        (MODERN, {"rope_base": 500000.0}, "rope_base", "500000.0", "10000.0"),
        (MODERN, {"logit_softcap": None}, "logit_softcap", "null", "30.0"),
        (MODERN, {"block_size": 64}, "block_size", "64", "16"),  # rope: no position table to disagree
    ],
)
def test_a_config_json_edited_to_another_architecture_with_the_same_shapes_names_the_field(
    tmp_path, config, change, field, said, was
):
    folder = save_model(tmp_path / "m", GPT(config), config)
    edit_config(folder, **change)
    with pytest.raises(UserError) as raised:
        load_model(folder)
    assert str(raised.value) == (
        f"{folder / 'config.json'} says {field} {said} but model.safetensors was saved with {field} {was}; "
        f"set \"{field}\": {was} back in config.json (the weights are of that model), or re-export the model"
    )


def test_training_only_fields_may_differ_and_folders_from_before_the_records_load(saved, model, capsys):
    edit_config(saved, dropout=0.1, zero_init_proj=True)  # what a fine-tuning run would change: allowed
    loaded, info = load_model(saved)
    assert info.config.dropout == 0.1
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    as_saved_before_the_records(saved)
    loaded, info = load_model(saved)
    assert info.weights_sha256 is None and capsys.readouterr().err == ""
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


def test_a_file_given_as_the_model_folder_is_named_a_file_with_the_folder_to_pass(saved, tmp_path):
    with pytest.raises(UserError) as raised:
        load_model(saved / "model.safetensors")
    assert str(raised.value) == (
        f"{saved / 'model.safetensors'} is a file, not a model folder; pass the folder that holds it, {saved}"
    )
    other = tmp_path / "weights.bin"
    other.write_bytes(b"")
    with pytest.raises(UserError, match=r"is a file, not a model folder; pass the folder that holds config.json "
                                        r"and model.safetensors \(e.g. RUN_DIR/model\)"):
        read_model_info(other)


def test_a_hugging_face_folder_given_as_a_model_folder_says_to_import_it(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(UserError) as raised:
        read_model_info(hf)
    assert str(raised.value) == (f"{hf} is a Hugging Face model folder, not a gpt-ds one; convert it first: "
                                 f"python -m gpt_ds.hf import {hf} --out MODEL_DIR")


def hf_folder(folder):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    save_file({"x": torch.zeros(2)}, str(folder / "model.safetensors"))
    return folder


def test_an_existing_folder_of_another_kind_is_replaced_only_with_force(tmp_path, model):
    hf = hf_folder(tmp_path / "hf")
    before = snapshot(hf)
    with pytest.raises(UserError) as raised:
        save_model(hf, model, CONFIG)
    assert str(raised.value) == (
        f"{hf} exists and is a Hugging Face model folder: writing a gpt-ds model folder there would replace it; "
        "choose a new or empty folder, or pass --force to replace it and everything in it"
    )
    assert snapshot(hf) == before and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    unknown = tmp_path / "unknown"  # the two file names, but a config.json of neither kind
    unknown.mkdir()
    (unknown / "config.json").write_text("[]")
    with pytest.raises(UserError, match=r"holds a config.json of no model folder \(neither gpt-ds's nor Hugging Face's\)"):
        save_model(unknown, model, CONFIG)
    save_model(hf, model, CONFIG, force=True)
    assert read_model_info(hf).config == CONFIG and sorted(p.name for p in hf.iterdir()) == [
        "config.json", "model.safetensors"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        save_model(tmp_path / "file", model, CONFIG, force=True)


@pytest.mark.parametrize("relation", ["is", "is inside", "holds", "is (a symlink to)"])
def test_a_save_into_its_own_input_is_refused_even_with_force(tmp_path, model, relation):
    source = hf_folder(tmp_path / "input")
    out = {"is": source, "is inside": source / "out", "holds": tmp_path, "is (a symlink to)": tmp_path / "link"}[relation]
    if relation.startswith("is ("):
        os.symlink(source, out)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as raised:
        save_model(out, model, CONFIG, force=True, inputs=(source,))
    message = str(raised.value)
    word = "is" if relation.startswith("is (") else relation
    assert message.startswith(f"the output folder {out} {word} the input {source}")
    assert message.endswith("so writing it would destroy the input; choose an output folder that is neither "
                            f"{source}, inside it nor above it (--force does not change this)")
    assert ("once links are resolved" in message) == relation.startswith("is (") and "\n" not in message
    assert snapshot(tmp_path) == before


def sample_program(repo_root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/sample.py", *args], capture_output=True, text=True, cwd=repo_root,
                          timeout=180, env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def test_sampling_reports_a_file_an_edited_architecture_and_changed_weights(tmp_path, repo_root, encoding):
    # The real program on real folders: what a user meets when a model folder was tampered with.
    config = dataclasses.replace(CONFIG, vocab_size=50257)
    folder = save_model(tmp_path / "model", GPT(config), config)
    args = ("--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu")

    result = sample_program(repo_root, "--model", str(folder / "config.json"), *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"gpt-ds-sample: error: {folder / 'config.json'} is a file, not a model folder; pass the folder that holds "
        f"it, {folder}"
    ]

    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 0x01  # the lowest bit of the last number: the model still samples
    weights.write_bytes(bytes(data))
    result = sample_program(repo_root, "--model", str(folder), *args)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"gpt-ds: warning: {weights} has sha256")

    edit_config(folder, n_head=4)
    result = sample_program(repo_root, "--model", str(folder), *args)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"gpt-ds-sample: error: {folder / 'config.json'} says n_head 4 but model.safetensors was saved with n_head 2;")


def test_the_same_weights_give_the_same_file_bytes_in_every_process(tmp_path):
    """The file is a function of the weights and the config alone: bit-identical resumes compare files.
    (safetensors writes its metadata in hash-map order, which differs between processes.)"""
    import subprocess
    import sys

    code = ("import sys, torch; from gpt_ds.model import GPT, GPTConfig; from gpt_ds.model_io import save_model; "
            "torch.manual_seed(0); c = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16); "
            "save_model(sys.argv[1], GPT(c), c)")
    digests = set()
    for i in range(4):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"m{i}")], check=True, capture_output=True)
        digests.add(hashlib.sha256((tmp_path / f"m{i}" / "model.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
