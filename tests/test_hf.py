"""Tests of gpt_ds.hf against real transformers GPT-2 models (randomly initialised, no download):
import and export both give the same logits in fp32 (1e-5), the same greedy tokens and attention
weights; non-GPT-2 folders are refused, and so is the export of a model of the modern recipe. The
program (`python -m gpt_ds.hf`, a real process) never writes into its input and replaces an existing
--out of the other kind or with other files only with --force. The export carries its tokenizer:
transformers' AutoTokenizer on it gives tiktoken's ids over the whole stdlib and Shakespeare corpora,
and the export folder alone, offline, generates gpt-ds's greedy tokens."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gpt_ds.errors import UserError
from gpt_ds.generate import Sampling, generate
from gpt_ds.hf import import_hf
from launch.hf import run
from gpt_ds.model import GPT, MODERN_RECIPE, GPTConfig
from gpt_ds.hf_tokenizer import HF_TOKENIZER_FILES
from gpt_ds.model_io import HF_KIND, MODEL_KIND, folder_kind, load_model, read_model_info, save_model
from gpt_ds.tokenizer import EOT_TOKEN
from data_prep.stdlib_corpus import stdlib_text

transformers = pytest.importorskip("transformers")

VOCAB = 300
TOLERANCE = dict(rtol=0, atol=1e-5)


def hf_gpt2(**overrides):
    """A small random transformers GPT-2; weights 0.1 (not 0.02) so logits are far from uniform."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=VOCAB, initializer_range=0.1,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, **overrides,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "gpt2-random"
    hf_gpt2().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 32))


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def ours_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[0]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_imported_model_gives_transformers_logits_and_greedy_tokens(hf_dir, tokens, tmp_path, attn_implementation):
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation=attn_implementation).eval()
    ours, info = load_model(import_hf(hf_dir, tmp_path / "model"))
    assert info.config == GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=VOCAB)
    assert info.metadata["source"] == "huggingface"
    torch.testing.assert_close(ours_logits(ours, tokens), hf_logits(reference, tokens), **TOLERANCE)

    prompt = tokens[:1, :5]
    with torch.no_grad():
        hf_tokens = reference.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)[0, 5:]
    assert generate(ours, [prompt[0].tolist()], Sampling(20, temperature=0, stop_token=None))[0] == hf_tokens.tolist()


def test_a_pytorch_model_bin_folder_imports_through_the_weights_only_loader(hf_dir, tokens, tmp_path):
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    pickled = tmp_path / "pickled"  # as transformers 4 saved by default: config.json + torch.save(state_dict)
    pickled.mkdir()
    shutil.copy(hf_dir / "config.json", pickled / "config.json")
    torch.save(reference.state_dict(), pickled / "pytorch_model.bin")
    ours, _ = load_model(import_hf(pickled, tmp_path / "model"))
    torch.testing.assert_close(ours_logits(ours, tokens), hf_logits(reference, tokens), **TOLERANCE)


def test_attention_weights_match_transformers(hf_dir, tokens, tmp_path):
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="eager").eval()
    ours, _ = load_model(import_hf(hf_dir, tmp_path / "model"))
    with torch.no_grad():
        hf_attentions = reference(tokens[:1], output_attentions=True).attentions
    torch.testing.assert_close(ours.attention_weights(tokens[0]), torch.stack(hf_attentions)[:, 0], **TOLERANCE)


@pytest.mark.parametrize("bias", [True, False])
def test_exported_model_loads_in_transformers_with_our_logits(tmp_path, tokens, bias):
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=VOCAB, bias=bias)
    ours = GPT(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # also make LayerNorm gains and biases non-trivial
    model_dir = save_model(tmp_path / "model", ours, config)
    assert run(["export", str(model_dir), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(hf_logits(hf, tokens), ours_logits(ours, tokens), **TOLERANCE)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_positions"] == 32
    # a test vocabulary is not the GPT-2 BPE's, so no tokenizer goes with it
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]

    # And back: import of the export is the model we started from.
    assert run(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, _ = load_model(tmp_path / "back")
    torch.testing.assert_close(ours_logits(back, tokens), ours_logits(ours, tokens), **TOLERANCE)


def test_original_gpt2_checkpoint_naming_imports(hf_dir, tmp_path, tokens):
    # The GPT-2 checkpoints on the Hub name tensors without `transformer.` and carry the causal-mask
    # buffers `attn.bias` / `attn.masked_bias`.
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    state = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    for layer in range(2):
        state[f"h.{layer}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file({k: v.contiguous() for k, v in state.items()}, str(legacy / "model.safetensors"))
    (legacy / "config.json").write_text((hf_dir / "config.json").read_text())
    ours, _ = load_model(import_hf(legacy, tmp_path / "model"))
    torch.testing.assert_close(ours_logits(ours, tokens), hf_logits(reference, tokens), **TOLERANCE)


def test_non_gpt2_folders_are_refused(tmp_path, hf_dir):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UserError, match="holds a llama model.*not GPT-2; only GPT-2 models"):
        import_hf(llama, tmp_path / "out")

    variant = tmp_path / "variant"
    variant.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    (variant / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(UserError, match="GPT-2 variant.*activation_function 'relu'"):
        import_hf(variant, tmp_path / "out")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((hf_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="pytorch_model.bin is not a readable torch checkpoint file"):
        import_hf(pickled, tmp_path / "out")
    (pickled / "pytorch_model.bin").unlink()
    (pickled / "tf_model.h5").write_bytes(b"not opened")
    with pytest.raises(UserError, match="only in a TF/Flax format.*save_pretrained"):
        import_hf(pickled, tmp_path / "out")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        import_hf(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written by any of the refusals


def test_cli_reports_a_bad_folder_in_one_line(tmp_path, repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "gpt_ds.hf", "import", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=repo_root, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gpt-ds-hf: error: Hugging Face folder {tmp_path / 'missing'} does not exist; pass a folder saved by save_pretrained"
    ]
    with pytest.raises(UserError, match="does not exist"):
        read_model_info(tmp_path / "out")


@pytest.mark.parametrize(
    "recipe, named",
    [
        (MODERN_RECIPE, "pos_embedding='rope' (GPT-2: 'learned'), qk_norm=True (GPT-2: False), mlp='relu2' (GPT-2: 'gelu'), "
                        "tie_head=False (GPT-2: True), logit_softcap=30.0 (GPT-2: None)"),
        (dict(logit_softcap=15.0), "logit_softcap=15.0 (GPT-2: None)"),
        (dict(tie_head=False), "tie_head=False (GPT-2: True)"),
    ],
)
def test_export_refuses_a_non_gpt2_architecture_in_one_line(tmp_path, recipe, named):
    config = dataclasses.replace(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=VOCAB), **recipe)
    model_dir = save_model(tmp_path / "model", GPT(config), config)
    with pytest.raises(UserError, match="is not a GPT-2 architecture") as raised:
        run(["export", str(model_dir), "--out", str(tmp_path / "hf")])
    message = str(raised.value)
    assert "\n" not in message and named in message and config.architecture in message
    assert not (tmp_path / "hf").exists()


def test_zero_initialised_projections_are_only_an_init_and_export(tmp_path, tokens):
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=VOCAB, zero_init_proj=True)
    ours = GPT(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # "trained": the projections are no longer zero
    assert config.architecture == "GPT-2"
    assert run(["export", str(save_model(tmp_path / "model", ours, config)), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(hf_logits(hf, tokens), ours_logits(ours, tokens), **TOLERANCE)



# ---- what --out may be (the program, run as a process) -------------------------------------------


def hf_program(repo_root, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt_ds.hf", *map(str, args)], capture_output=True, text=True,
                          cwd=repo_root, timeout=180)


def snapshot(folder) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) with its bytes: to show a refusal touched nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def small_model_folder(folder):
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=VOCAB)
    return save_model(folder, GPT(config), config)


def one_error_line(result) -> str:
    assert result.returncode == 2 and result.stdout == "", result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt-ds-hf: error: "), result.stderr
    return lines[0].removeprefix("gpt-ds-hf: error: ")


@pytest.mark.parametrize("command", ["export", "import"])
@pytest.mark.parametrize(
    "relation, force", [("is", False), ("is", True), ("is inside", True), ("holds", True), ("is (a symlink to)", True)]
)
def test_no_command_writes_into_its_own_input_even_with_force(tmp_path, repo_root, hf_dir, command, relation, force):
    work = tmp_path / "work"
    work.mkdir()
    if command == "export":
        source = small_model_folder(work / "model")
    else:
        source = work / "hf"
        shutil.copytree(hf_dir, source)
    out = {"is": source, "is inside": source / "sub", "holds": work, "is (a symlink to)": tmp_path / "link"}[relation]
    if relation.startswith("is ("):
        os.symlink(source, out)
    before = snapshot(tmp_path)
    message = one_error_line(hf_program(repo_root, command, source, "--out", out, *(["--force"] if force else [])))
    word = "is" if relation.startswith("is (") else relation
    assert message.startswith(f"the output folder {out} {word} the input {source}")
    assert message.endswith(f"so writing it would destroy the input; choose an output folder that is neither {source}, "
                            "inside it nor above it (--force does not change this)")
    assert snapshot(tmp_path) == before  # the input untouched, nothing half-written beside it


def test_an_existing_out_of_the_other_kind_or_with_other_files_needs_force(tmp_path, repo_root, hf_dir):
    model = small_model_folder(tmp_path / "model")
    other_model = small_model_folder(tmp_path / "other-model")
    hf_copy = tmp_path / "hf"
    shutil.copytree(hf_dir, hf_copy)  # as save_pretrained wrote it (with generation_config.json)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    needs_force = "choose a new or empty folder, or pass --force to replace it and everything in it"

    # export onto a gpt-ds model folder: the bug this guards against replaced it and exited 0
    before = snapshot(other_model)
    assert one_error_line(hf_program(repo_root, "export", model, "--out", other_model)) == (
        f"{other_model} exists and is a gpt-ds model folder: writing a Hugging Face model folder there would "
        f"replace it; {needs_force}")
    assert snapshot(other_model) == before
    # import onto a Hugging Face folder, and onto a folder with other files
    before = snapshot(hf_copy)
    assert one_error_line(hf_program(repo_root, "import", hf_dir, "--out", hf_copy)) == (
        f"{hf_copy} exists and is a Hugging Face model folder: writing a gpt-ds model folder there would "
        f"replace it; {needs_force}")
    assert snapshot(hf_copy) == before
    assert one_error_line(hf_program(repo_root, "import", hf_dir, "--out", notes)) == (
        f"{notes} exists and holds other files (todo.txt): writing a gpt-ds model folder there would replace it; "
        f"{needs_force}")
    assert (notes / "todo.txt").read_text() == "keep me"

    # --force replaces each; a previous output of the same kind is replaced without it
    assert hf_program(repo_root, "export", model, "--out", other_model, "--force").returncode == 0
    assert folder_kind(other_model) == HF_KIND
    assert hf_program(repo_root, "export", model, "--out", other_model).returncode == 0
    assert transformers.GPT2LMHeadModel.from_pretrained(other_model).config.n_layer == 1
    assert hf_program(repo_root, "import", hf_dir, "--out", hf_copy, "--force").returncode == 0
    assert folder_kind(hf_copy) == MODEL_KIND and sorted(p.name for p in hf_copy.iterdir()) == [
        "config.json", "model.safetensors"]
    assert hf_program(repo_root, "import", hf_dir, "--out", hf_copy).returncode == 0
    assert read_model_info(hf_copy).metadata["source"] == "huggingface"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model", "notes", "other-model"]  # no leftovers


def test_a_file_given_as_a_folder_is_named_a_file_with_the_folder_to_pass(tmp_path, repo_root, hf_dir):
    model = small_model_folder(tmp_path / "model")
    assert one_error_line(hf_program(repo_root, "export", model / "model.safetensors", "--out", tmp_path / "out")) == (
        f"{model / 'model.safetensors'} is a file, not a model folder; pass the folder that holds it, {model}")
    assert one_error_line(hf_program(repo_root, "import", hf_dir / "config.json", "--out", tmp_path / "out")) == (
        f"{hf_dir / 'config.json'} is a file, not a Hugging Face folder; pass the folder that holds it, {hf_dir}")
    assert not (tmp_path / "out").exists()


def test_importing_a_gpt_ds_model_folder_says_it_is_one_already(tmp_path):
    model = small_model_folder(tmp_path / "model")
    with pytest.raises(UserError) as raised:
        import_hf(model, tmp_path / "out")
    assert str(raised.value) == (f"{model} is a gpt-ds model folder already, not a Hugging Face one; use it as it is "
                                 f"(python -m gpt_ds.hf export {model} --out HF_DIR makes a Hugging Face folder of it)")
    assert not (tmp_path / "out").exists()


# ---- the export's tokenizer ----------------------------------------------------------------------

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "shakespeare"
EXPORT_FILES = sorted(["config.json", "model.safetensors", *HF_TOKENIZER_FILES])


def gpt2_vocabulary_model(folder):
    """A small model with the GPT-2 vocabulary, weights perturbed by 0.1 so its greedy choices are clear."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=EOT_TOKEN + 1)
    ours = GPT(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ours, save_model(folder, ours, config)


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory, encoding):
    """(gpt-ds model, its model folder, its export) for a model with the GPT-2 vocabulary."""
    work = tmp_path_factory.mktemp("gpt2-export")
    ours, model_dir = gpt2_vocabulary_model(work / "model")
    assert run(["export", str(model_dir), "--out", str(work / "hf")]) == 0
    return ours, model_dir, work / "hf"


@pytest.fixture(scope="module")
def export_tokenizers(gpt2_export):
    """Each distinct tokenizer class AutoTokenizer loads from the export, fast and slow (transformers 5 has
    only one GPT-2 tokenizer, and ignores use_fast)."""
    loaded = [transformers.AutoTokenizer.from_pretrained(gpt2_export[2], use_fast=fast) for fast in (True, False)]
    return list({type(tokenizer): tokenizer for tokenizer in loaded}.values())


def test_export_writes_gpt2_tokenizer_files(gpt2_export, export_tokenizers):
    _, model_dir, hf_dir = gpt2_export
    assert sorted(p.name for p in hf_dir.iterdir()) == EXPORT_FILES
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == EOT_TOKEN + 1 and sorted(vocab.values()) == list(range(EOT_TOKEN + 1))
    assert (vocab["Hello"], vocab["\u0120world"], vocab["<|endoftext|>"]) == (15496, 995, EOT_TOKEN)  # GPT-2's ids
    merges = (hf_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[:3] == ["#version: 0.2", "\u0120 t", "\u0120 a"] and len(merges) == 1 + 50_000  # GPT-2's merges
    for tokenizer in export_tokenizers:
        assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.unk_token == "<|endoftext|>"
        assert tokenizer.eos_token_id == EOT_TOKEN and tokenizer.model_max_length == 64
        assert "<|endoftext|>" in tokenizer.all_special_tokens
        # the end-of-text token in text is the special token, as tiktoken's encode(allowed_special="all")
        assert tokenizer("one<|endoftext|>two")["input_ids"] == [505, EOT_TOKEN, 11545]
    # a base model: GPT-2's tokenizer, no chat markers or template (a chat model's export: tests/test_hf_chat.py)
    assert "chat_template" not in json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert json.loads((hf_dir / "config.json").read_text())["eos_token_id"] == EOT_TOKEN
    for tokenizer in export_tokenizers:
        assert tokenizer.chat_template is None and len(tokenizer) == EOT_TOKEN + 1
    # a previous export, tokenizer and all, is replaced without --force
    assert run(["export", str(model_dir), "--out", str(hf_dir)]) == 0
    assert sorted(p.name for p in hf_dir.iterdir()) == EXPORT_FILES


def test_importing_a_base_export_gives_a_base_model(gpt2_export, tmp_path):
    assert run(["import", str(gpt2_export[2]), "--out", str(tmp_path / "back")]) == 0
    info = read_model_info(tmp_path / "back")
    assert info.chat_template is None and info.config.vocab_size == EOT_TOKEN + 1


def assert_tiktoken_ids(tokenizers, encoding, texts: dict[str, str]) -> None:
    """Each text, encoded whole, gives tiktoken's ids with every tokenizer, and decodes back to itself."""
    for tokenizer in tokenizers:
        differ = []
        for name, text in texts.items():
            ids = tokenizer(text)["input_ids"]
            if ids != encoding.encode(text, allowed_special="all") or tokenizer.decode(ids) != text:
                differ.append(name)
        assert not differ, f"{type(tokenizer).__name__} tokenizes differently from tiktoken: {differ}"


def test_export_tokenizer_gives_tiktoken_ids_over_the_corpora(export_tokenizers, encoding):
    """The whole stdlib corpus (every machine has it), and each of Shakespeare's 77 files where ../shared beside
    the checkout holds them (a user's clone has no ../shared: the stdlib corpus alone then)."""
    text = stdlib_text().decode()
    assert len(text) > 1_000_000
    texts = {"stdlib": text}
    if SHAKESPEARE.is_dir():
        shakespeare = {path.name: path.read_text(encoding="utf-8") for path in sorted(SHAKESPEARE.glob("*.txt"))}
        assert len(shakespeare) == 77
        texts.update(shakespeare)
    assert_tiktoken_ids(export_tokenizers, encoding, texts)


# Run where nothing of gpt-ds is importable and the Hub cannot be reached: the export folder alone.
OFFLINE_GENERATE = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
folder, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = tokenizer(prompt, return_tensors="pt").input_ids
new = model.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1]:]
text = pipeline("text-generation", model=folder)(prompt, max_new_tokens=n, do_sample=False)[0]["generated_text"]
print(json.dumps({"prompt": ids[0].tolist(), "new": new.tolist(), "text": text}))
"""


def test_the_export_alone_generates_our_greedy_tokens_offline(gpt2_export, encoding, tmp_path):
    ours, _, hf_dir = gpt2_export
    prompt, n = "ROMEO:\nBut soft, what light through yonder window breaks?", 20
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", OFFLINE_GENERATE, str(hf_dir), prompt, str(n)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    prompt_ids = encoding.encode_ordinary(prompt)
    expected = generate(ours, [prompt_ids], Sampling(n, temperature=0))[0]
    assert len(expected) == n
    assert result["prompt"] == prompt_ids
    assert result["new"] == expected
    assert result["text"] == encoding.decode(prompt_ids + expected)


def test_export_without_the_tiktoken_cache_is_one_line(tmp_path, repo_root):
    # An empty cache and a proxy that refuses every connection: the BPE cannot be had; nothing is written.
    _, model_dir = gpt2_vocabulary_model(tmp_path / "model")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9"}
    (tmp_path / "empty-cache").mkdir()
    proc = subprocess.run([sys.executable, "-m", "gpt_ds.hf", "export", str(model_dir), "--out", str(tmp_path / "hf")],
                          env=env, cwd=repo_root, capture_output=True, text=True, timeout=180)
    message = one_error_line(proc)
    assert message.startswith("could not load the tiktoken encoding 'r50k_base'") and "TIKTOKEN_CACHE_DIR" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-cache", "model"]  # nothing half-written
