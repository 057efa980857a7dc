"""Tests of a chat model's Hugging Face export (gpt_ds.hf, gpt_ds.hf_tokenizer.chat_jinja) against real
transformers, offline: the export's tokenizer has the chat markers at their ids and a chat template whose
tokens are gpt_ds.tokenizer.render_chat's; GPT2LMHeadModel.generate and transformers' chat pipeline write
the greedy reply gpt-ds writes; importing the export gives a chat model again (from the template in
tokenizer_config.json or in save_pretrained's chat_template.jinja); another template imports as a base model;
a chat model whose vocabulary lacks the markers is refused, by export and by import."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gpt_ds.chat import REPLY_STOPS, fit_prompt, stream_reply
from gpt_ds.errors import UserError
from gpt_ds.generate import Sampling, generate
from gpt_ds.hf import read_hf_chat_template
from gpt_ds.model import GPT, GPTConfig
from gpt_ds.model_io import load_model, read_model_info, save_model
from gpt_ds.tokenizer import (CHAT_TEMPLATE, CHAT_TOKEN_TEXT, CHAT_VOCAB_SIZE, END_OF_TURN, EOT_TOKEN, decode_chat,
                              render_chat)
from launch.hf import run

transformers = pytest.importorskip("transformers")

BLOCK = 96
REPLY_TOKENS = 16
CONVERSATIONS = [
    [{"role": "user", "content": "Hello there, how are you?"}],
    [{"role": "system", "content": "Answer in one line."},
     {"role": "user", "content": "What does len() return?"},
     {"role": "assistant", "content": " The number of items\n in a container."},
     {"role": "user", "content": "def f(x):\n    return x  # and café, naïve, 日本"}],
]


@pytest.fixture(scope="module")
def chat_export(tmp_path_factory, encoding):
    """(gpt-ds chat model, its model folder, its export): random weights perturbed by 0.1 (clear greedy choices),
    the markers' rows of wte zero so a greedy reply does not hit a marker at once."""
    work = tmp_path_factory.mktemp("chat-export")
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=BLOCK, vocab_size=CHAT_VOCAB_SIZE)
    ours = GPT(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        ours.transformer.wte.weight[list(CHAT_TOKEN_TEXT)] = 0
    model_dir = save_model(work / "model", ours, config, chat_template=CHAT_TEMPLATE)
    assert run(["export", str(model_dir), "--out", str(work / "hf")]) == 0
    return ours, model_dir, work / "hf"


def test_the_export_has_the_chat_vocabulary_markers_and_template(chat_export):
    hf_dir = chat_export[2]
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["vocab_size"] == CHAT_VOCAB_SIZE == 50261
    assert config["bos_token_id"] == EOT_TOKEN
    assert config["eos_token_id"][0] == END_OF_TURN and set(config["eos_token_id"]) == REPLY_STOPS
    assert transformers.GPT2LMHeadModel.from_pretrained(hf_dir).generation_config.eos_token_id == config["eos_token_id"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert len(tokenizer) == CHAT_VOCAB_SIZE
    assert {text: tokenizer.convert_tokens_to_ids(text) for text in CHAT_TOKEN_TEXT.values()} == {
        text: token for token, text in CHAT_TOKEN_TEXT.items()}
    assert tokenizer.eos_token == "<|end|>" and tokenizer.eos_token_id == END_OF_TURN
    assert tokenizer.bos_token == "<|endoftext|>" and tokenizer.pad_token is None
    assert tokenizer("a<|user|>b<|end|>")["input_ids"] == [64, 50258, 65, END_OF_TURN]  # markers are special tokens


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one-turn", "system-and-two-turns"])
def test_apply_chat_template_gives_render_chats_tokens(chat_export, encoding, messages):
    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_export[2])
    expected = render_chat(messages, encoding.encode_ordinary, for_reply=True)[0]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == expected
    assert ids == fit_prompt(messages, "r50k_base", BLOCK, REPLY_TOKENS).tokens  # what gpt-ds's chat replies to
    assert tokenizer.decode(ids) == decode_chat(ids, encoding.decode)
    # a finished conversation (no generation prompt): the tokens gpt-ds fine-tunes on
    finished = [*messages, {"role": "assistant", "content": " Fine."}]
    ids = tokenizer.apply_chat_template(finished, return_dict=True)["input_ids"]
    assert ids == render_chat(finished, encoding.encode_ordinary)[0]
    with pytest.raises(Exception, match="unknown role tool; use system, user or assistant"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])


def test_transformers_writes_gpt_ds_greedy_reply(chat_export, encoding):
    ours, model_dir, hf_dir = chat_export
    messages = CONVERSATIONS[1]
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        new = model.generate(**prompt, max_new_tokens=REPLY_TOKENS, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    expected = generate(ours, [prompt["input_ids"][0].tolist()], Sampling(REPLY_TOKENS, temperature=0, stop_token=None))[0]
    assert len(expected) == REPLY_TOKENS and not REPLY_STOPS & set(expected)  # a whole reply, no stop in it
    assert new.tolist() == expected

    # transformers' chat pipeline on the export folder: the reply gpt-ds's chat streams
    pipe = transformers.pipeline("text-generation", model=str(hf_dir))
    reply = pipe(messages, max_new_tokens=REPLY_TOKENS, do_sample=False)[0]["generated_text"][-1]
    model, info = load_model(model_dir)
    *_, ours_reply = stream_reply(model, info, fit_prompt(messages, info.tokenizer, BLOCK, REPLY_TOKENS),
                                  Sampling(REPLY_TOKENS, temperature=0))
    assert reply == {"role": "assistant", "content": ours_reply.text} and ours_reply.text == encoding.decode(expected)


def test_importing_the_chat_export_gives_a_chat_model(chat_export, tmp_path):
    ours, _, hf_dir = chat_export
    assert run(["import", str(hf_dir), "--out", str(tmp_path / "back")]) == 0
    back, info = load_model(tmp_path / "back")
    assert info.chat_template == CHAT_TEMPLATE and info.config.vocab_size == CHAT_VOCAB_SIZE
    tokens = torch.tensor([[EOT_TOKEN, 50258, 15496, END_OF_TURN, 50259]])
    with torch.no_grad():
        torch.testing.assert_close(back(tokens)[0], ours(tokens)[0], rtol=0, atol=1e-5)

    # a tokenizer re-saved by transformers keeps the template in chat_template.jinja: still a chat model
    resaved = tmp_path / "resaved"
    shutil.copytree(hf_dir, resaved)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (resaved / name).unlink()
    transformers.AutoTokenizer.from_pretrained(hf_dir).save_pretrained(resaved)
    assert (resaved / "chat_template.jinja").is_file()
    config = read_model_info(tmp_path / "back").config
    assert read_hf_chat_template(resaved, config) == CHAT_TEMPLATE

    # another chat template is not gpt-ds's format: the import is a base model
    other = tmp_path / "other"
    shutil.copytree(hf_dir, other)
    tokenizer_config = json.loads((other / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (other / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert run(["import", str(other), "--out", str(tmp_path / "other-back")]) == 0
    assert read_model_info(tmp_path / "other-back").chat_template is None


def test_a_chat_model_without_the_markers_rows_is_refused(tmp_path):
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=EOT_TOKEN + 1)
    model_dir = save_model(tmp_path / "model", GPT(config), config, chat_template=CHAT_TEMPLATE)
    with pytest.raises(UserError) as raised:
        run(["export", str(model_dir), "--out", str(tmp_path / "hf")])
    assert str(raised.value) == (f"{model_dir} is a chat model with a 50257-token vocabulary, which lacks the chat "
                                 "markers (a chat model has 50261); fine-tune it again on a chat folder")
    assert not (tmp_path / "hf").exists()


def test_gpt_ds_template_on_a_vocabulary_without_the_markers_is_refused_on_import(chat_export, tmp_path):
    small = tmp_path / "small"
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16, vocab_size=300)
    transformers.GPT2LMHeadModel(config).save_pretrained(small)
    shutil.copy(chat_export[2] / "tokenizer_config.json", small)
    with pytest.raises(UserError) as raised:
        run(["import", str(small), "--out", str(tmp_path / "out")])
    assert str(raised.value) == (f"{small} has gpt-ds's chat template but a 300-token vocabulary, which lacks the chat "
                                 "markers (50261 tokens); export the chat model again")
    assert not (tmp_path / "out").exists()
