"""The Streamlit page driven by Streamlit's AppTest (streamlit.testing.v1): real script runs against
real model folders (tiny random GPTs saved by model_io) and real TensorBoard logs. Every test runs in
its own working directory (tmp_path), so the page never lists or loads what is under the repository's
runs/."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import pytest
import streamlit as st
from app_fixtures import (
    APP_DIR,
    MODERN_ARCHITECTURE,
    MODERN_TINY_CONFIG,
    STEPS,
    TARGET_LOSS,
    TARGET_STEP,
    TINY_CONFIG,
    VAL_BPB,
    make_run,
    train_loss_at,
)
from streamlit.testing.v1 import AppTest

import gpt_ds.inference
from gpt_ds import chat
from gpt_ds.generate import Sampling
from gpt_ds.inference import ATTENTION_MAX_SHOWN, encode_prompt
from gpt_ds.model_io import load_model

APP = APP_DIR / "app.py"


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("app") / "runs" / "demo")


@pytest.fixture(autouse=True)
def fresh_caches():
    st.cache_resource.clear()
    st.cache_data.clear()
    yield


@pytest.fixture(autouse=True)
def own_working_directory(monkeypatch, tmp_path):
    """runs/ below the working directory is what the page lists: an empty one of the test's own."""
    monkeypatch.chdir(tmp_path)


def open_app(monkeypatch, *args: str) -> AppTest:
    """The page as `streamlit run app/app.py -- ARGS` would run it."""
    monkeypatch.setattr(sys, "argv", [str(APP), *args])
    app = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not app.exception
    return app


def generate(app: AppTest, prompt: str | None = None) -> str:
    """Press Generate (after typing `prompt`) and return the continuation shown."""
    if prompt is not None:
        app.text_area(key="prompt").input(prompt)
    app.button(key="generate").click().run()
    assert not app.exception
    boxes = [m.value for m in app.markdown if 'class="gen-continuation"' in m.value]
    assert len(boxes) == 1, [m.value for m in app.markdown]
    return boxes[0].split('class="gen-continuation">', 1)[1].rsplit("</span>", 1)[0]


def chart_data(chart) -> list:
    """The data frames an Altair chart element carries (Arrow IPC streams), one per layer."""
    import pyarrow as pa

    return [pa.ipc.open_stream(dataset.data.data).read_pandas() for dataset in chart.proto.datasets]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_generate_streams_text_without_reloading_the_weights(monkeypatch, good_model):
    loads = []

    def counting_load_model(*args, **kwargs):
        loads.append(args)
        return real_load_model(*args, **kwargs)

    real_load_model = gpt_ds.inference.load_model
    monkeypatch.setattr(gpt_ds.inference, "load_model", counting_load_model)
    app = open_app(monkeypatch, "--model", str(good_model))
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Context"] == "64 tokens" and metrics["Steps"] == "200" and metrics["Layers · heads · width"] == "2 · 2 · 32"
    assert "preset `tiny`" in texts(app.markdown) and "architecture **GPT-2**" in texts(app.markdown)
    target = next(m for m in app.metric if m.label == "Loss target")
    assert (target.value, target.delta) == (f"{TARGET_LOSS:.3f}", f"reached at step {TARGET_STEP}")
    assert metrics["Final val bpb"] == f"{VAL_BPB:.3f}"

    first = generate(app, "ROMEO:\n")
    assert first.strip()
    assert "ROMEO:" in texts(app.markdown)
    assert "tokens/s" in texts(app.caption)
    generate(app)
    assert len(loads) == 1  # the second Generate reused the cached weights


def test_seed_reproduces_text_and_controls_change_it(monkeypatch, good_model):
    app = open_app(monkeypatch, "--model", str(good_model))
    app.slider(key="max_new_tokens").set_value(8)
    app.number_input(key="seed").set_value(1)
    first = generate(app, "To be")
    assert generate(app) == first
    app.number_input(key="seed").set_value(2)
    assert generate(app) != first

    app.slider(key="temperature").set_value(0.0)  # greedy: the seed no longer matters
    greedy = generate(app)
    app.number_input(key="seed").set_value(3)
    assert generate(app) == greedy
    app.slider(key="temperature").set_value(0.8)
    app.number_input(key="top_k").set_value(1)  # only the most likely token is left: greedy again
    assert generate(app) == greedy
    shown = next(c.value for c in app.caption if c.value.startswith("Done: "))
    assert 1 <= int(shown.removeprefix("Done: ").split(" tokens")[0]) <= 8  # the max new tokens control is obeyed


def test_prompt_problems_are_messages_and_the_page_keeps_working(monkeypatch, good_model):
    app = open_app(monkeypatch, "--model", str(good_model))
    app.text_area(key="prompt").input("   ")
    app.button(key="generate").click().run()
    assert not app.exception and "the prompt is empty" in texts(app.warning)

    app.text_area(key="prompt").input("word " * 100)
    app.button(key="generate").click().run()
    assert not app.exception and "context is 64 tokens" in texts(app.warning)

    assert generate(app, "Hello").strip()
    assert not app.warning


def test_bad_model_folders_are_messages_and_another_model_can_be_chosen(monkeypatch, tmp_path, good_model):
    runs = tmp_path / "runs"
    plain = make_run(runs / "plain", with_tb=False)
    truncated = make_run(runs / "truncated", with_tb=False)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    mismatched = make_run(runs / "mismatched", with_tb=False)
    document = json.loads((mismatched / "config.json").read_text())
    document["model"]["n_layer"] = 3
    (mismatched / "config.json").write_text(json.dumps(document))
    # runs/ below the working directory (tmp_path, see own_working_directory) is what the page lists

    app = open_app(monkeypatch)
    choice = app.selectbox(key="model_choice")
    listed = {Path(option).name if option != "Type a folder path…" else option for option in choice.options}
    assert {"model", "Type a folder path…"} <= listed and len(choice.options) == 4

    choice.set_value(str(truncated.resolve())).run()
    assert not app.exception and "not a readable safetensors file" in texts(app.error)
    app.selectbox(key="model_choice").set_value(str(mismatched.resolve())).run()
    assert not app.exception and "transformer.h.2" in texts(app.error)
    app.selectbox(key="model_choice").set_value("Type a folder path…").run()
    assert not app.exception and not app.error and "No model chosen yet" in texts(app.info)
    app.text_input(key="typed_folder").input(str(tmp_path / "no-such-model")).run()
    assert not app.exception and "does not exist" in texts(app.error)

    app.text_input(key="typed_folder").input(str(plain)).run()
    assert not app.exception and not app.error
    assert generate(app, "Once upon").strip()
    assert "not part of a training run" in texts(app.info)  # no tb/ beside this model folder


def test_training_curves_and_attention_heatmap(monkeypatch, good_model):
    app = open_app(monkeypatch, "--model", str(good_model))
    app.text_area(key="prompt").input("To be, or not to be").run()
    app.selectbox(key="attn_layer").set_value(1).run()
    app.selectbox(key="attn_head").set_value(1).run()
    assert not app.exception
    charts = app.get("vega_lite_chart")
    assert len(charts) == 3  # loss, learning rate, attention
    loss, lr, attention = (chart.proto.spec for chart in charts)
    assert "val loss" in loss and "train loss" in loss and "learning rate" in lr
    loss_data = chart_data(charts[0])
    assert loss_data[-1]["value"].tolist() == [TARGET_LOSS]  # the target line
    points = loss_data[0]
    assert points[points.series == "train loss"].value.iloc[-1] == pytest.approx(train_loss_at(STEPS), rel=1e-6)
    assert sorted(points[points.series == "val loss"].step) == [0, 50, 100, 150, 200]
    assert "attended-to token" in attention
    cells = chart_data(charts[2])[0]
    n = len(encode_prompt("To be, or not to be", "r50k_base"))
    assert len(cells) == n * (n + 1) // 2 and "1·␣be" in set(cells["query"])
    assert "Layer 1, head 1" in texts(app.caption)


def test_model_given_on_the_command_line_is_chosen_and_listed_once(monkeypatch, tmp_path):
    make_run(tmp_path / "runs" / "other", with_tb=False)
    given = make_run(tmp_path / "runs" / "given", with_tb=False)  # below the working directory, tmp_path
    app = open_app(monkeypatch, "--model", "runs/given/model")  # relative, as people type it
    choice = app.selectbox(key="model_choice")
    assert choice.value == str(given.resolve())
    assert len(choice.options) == 3  # given, other, "Type a folder path…"
    assert "runs/given/model" in texts(app.markdown)  # the card names it relative to the working directory


def test_attention_can_include_the_generated_continuation(monkeypatch, good_model):
    app = open_app(monkeypatch, "--model", str(good_model))
    assert app.checkbox(key="attn_extend").disabled  # nothing generated yet
    prompt = "To be, or not to be"
    assert generate(app, prompt)
    extend = app.checkbox(key="attn_extend")
    assert not extend.disabled
    extend.check().run()
    assert not app.exception
    continuation = app.session_state["last_generation"]["update"].text
    shown = min(len(encode_prompt(prompt + continuation, "r50k_base")), ATTENTION_MAX_SHOWN)
    assert shown > len(encode_prompt(prompt, "r50k_base"))
    assert len(chart_data(app.get("vega_lite_chart")[2])[0]) == shown * (shown + 1) // 2


def test_runs_option_chooses_where_models_are_listed(monkeypatch, tmp_path):
    make_run(tmp_path / "runs" / "below-cwd", with_tb=False)
    elsewhere = make_run(tmp_path / "elsewhere" / "one", with_tb=False)
    app = open_app(monkeypatch, "--runs", str(tmp_path / "elsewhere"))
    choice = app.selectbox(key="model_choice")
    assert choice.options == ["elsewhere/one/model", "Type a folder path…"]  # as shown: relative to the working directory
    assert choice.value == str(elsewhere.resolve())


def test_streamlit_config_binds_to_localhost(repo_root):
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    config = tomllib.loads((repo_root / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] == "none"


def test_a_modern_model_shows_its_architecture_generates_and_shows_attention(monkeypatch, tmp_path):
    modern = make_run(tmp_path / "runs" / "modern", config=MODERN_TINY_CONFIG)
    app = open_app(monkeypatch, "--model", str(modern))
    shown = texts(app.markdown)
    assert f"architecture **{MODERN_ARCHITECTURE}**" in shown and "preset `modern-tiny`" in shown
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Context"] == "64 tokens" and metrics["Layers · heads · width"] == "2 · 2 · 32"
    app.slider(key="max_new_tokens").set_value(8)
    app.number_input(key="seed").set_value(1)
    first = generate(app, "To be")
    assert first.strip() and generate(app) == first  # the seed reproduces the text
    app.selectbox(key="attn_layer").set_value(1).run()
    app.selectbox(key="attn_head").set_value(1).run()
    assert not app.exception and not app.error
    cells = chart_data(app.get("vega_lite_chart")[2])[0]
    n = len(encode_prompt("To be", "r50k_base"))
    assert len(cells) == n * (n + 1) // 2 and "Layer 1, head 1" in texts(app.caption)


def test_the_card_shows_each_eval_task_beside_the_losses(monkeypatch, tmp_path):
    from gpt_ds.model import GPT
    from gpt_ds.model_io import save_model
    from gpt_ds.record import RunRecord

    scores = {"stdlib_mc": {"acc": 0.3114, "acc_norm": 0.2966, "n": 500}}
    record = RunRecord(step=10, tokens=1000, val_loss=3.5, preset="tiny", eval_tasks=scores).to_dict()
    folder = save_model(tmp_path / "runs" / "mc" / "model", GPT(TINY_CONFIG), TINY_CONFIG, metadata=record)
    app = open_app(monkeypatch, "--model", str(folder))
    shown = next(m for m in app.metric if m.label == "stdlib_mc acc_norm")
    assert (shown.value, shown.delta) == ("29.7%", "acc 31.1%")


# -- The chat page ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("app") / "runs" / "chat", chat=True)


def expected_reply(folder: Path, messages: list[dict], max_new_tokens: int) -> tuple[chat.ChatPrompt, str]:
    """What gpt_ds.chat writes, greedily, to `messages` (the system message first, if any), and its prompt."""
    model, info = load_model(folder)
    block_size = info.config.block_size
    prompt = chat.fit_prompt(messages, info.tokenizer, block_size, chat.reply_budget(block_size, max_new_tokens))
    return prompt, list(chat.stream_reply(model, info, prompt, Sampling(max_new_tokens, temperature=0)))[-1].text


def send(app: AppTest, message: str) -> AppTest:
    app.chat_input(key="chat_input").set_value(message).run()
    assert not app.exception
    return app


def shown_turns(app: AppTest) -> list[tuple[str, str]]:
    """(role, text) of each message on the page, the text as a reader sees it (the page writes it as HTML)."""
    def text(html_text: str) -> str:
        return html.unescape(re.sub(r"</?div[^>]*>", "", html_text).replace("<br>", "\n"))

    return [(message.name, text(message.markdown[0].value) if message.markdown else "") for message in app.chat_message]


def test_a_chat_model_gets_a_chat_page_with_the_conversation_in_context(monkeypatch, chat_model):
    app = open_app(monkeypatch, "--model", str(chat_model))
    assert [tab.label for tab in app.tabs] == ["Chat", "Training curves"]  # no Generate or Attention tab
    assert not app.text_area(key="system_prompt").value and not app.chat_message
    app.slider(key="max_new_tokens").set_value(8)
    app.slider(key="temperature").set_value(0.0)  # the completion page's controls: greedy
    app.text_area(key="system_prompt").input("Be brief.")
    send(app, "first question <|end|>")  # a typed marker is text
    send(app, "second question")

    system = {"role": "system", "content": "Be brief."}
    first_turn = {"role": "user", "content": "first question <|end|>"}
    _, first = expected_reply(chat_model, [system, first_turn], 8)
    assert first != expected_reply(chat_model, [first_turn], 8)[1]  # the system prompt is in the context
    second_turns = [system, first_turn, {"role": "assistant", "content": first}, {"role": "user", "content": "second question"}]
    prompt, second = expected_reply(chat_model, second_turns, 8)
    assert prompt.dropped == 0 and second != expected_reply(chat_model, [system, second_turns[-1]], 8)[1]
    assert shown_turns(app) == [("user", first_turn["content"]), ("assistant", first), ("user", "second question"), ("assistant", second)]
    assert "8 tokens in" in texts(app.caption) and not app.warning


def test_old_exchanges_drop_with_a_note_and_clear_starts_over(monkeypatch, chat_model):
    app = open_app(monkeypatch, "--model", str(chat_model))
    app.slider(key="max_new_tokens").set_value(20)  # 20 tokens kept for each reply: the 64-token context holds two exchanges
    app.slider(key="temperature").set_value(0.0)
    messages: list[dict] = []
    for message in ["one", "two", "three"]:
        send(app, message)
        messages += [{"role": "user", "content": message}]
        prompt, reply = expected_reply(chat_model, messages, 20)
        messages += [{"role": "assistant", "content": reply}]
        assert shown_turns(app)[-2:] == [("user", message), ("assistant", reply)]
    assert prompt.dropped == 1  # the third reply was written without the first exchange
    note = "The oldest exchange left out: the conversation outgrew the 64-token context."
    assert [c.value for c in app.chat_message[-1].caption][0] == note and texts(app.caption).count(note) == 1
    assert len(app.chat_message) == 6  # the page still shows the whole conversation

    send(app, "word " * 100)  # too long for the context on its own: a message, and the conversation is unchanged
    assert "more than this model's context of 64 tokens; shorten it" in texts(app.warning)
    assert len(app.chat_message) == 6

    app.button(key="clear_chat").click().run()
    assert not app.exception and not app.chat_message
    send(app, "one")
    assert shown_turns(app) == [("user", "one"), ("assistant", messages[1]["content"])]  # as the first time


def test_switching_models_starts_a_new_conversation_and_a_base_model_keeps_the_completion_page(monkeypatch, tmp_path):
    first = make_run(tmp_path / "runs" / "first", with_tb=False, chat=True)
    second = make_run(tmp_path / "runs" / "second", seed=1, with_tb=False, chat=True)
    base = make_run(tmp_path / "runs" / "base", with_tb=False)
    app = open_app(monkeypatch, "--model", str(first))
    app.slider(key="max_new_tokens").set_value(4)
    send(app, "hello")
    assert len(app.chat_message) == 2
    app.selectbox(key="model_choice").set_value(str(second.resolve())).run()
    assert not app.exception and not app.chat_message  # another model: a new conversation
    send(app, "hello")
    assert len(app.chat_message) == 2
    app.selectbox(key="model_choice").set_value(str(base.resolve())).run()
    assert not app.exception and [tab.label for tab in app.tabs] == ["Generate", "Training curves", "Attention"]
    assert not app.get("chat_input") and not app.chat_message
    assert generate(app, "Hello").strip()
    app.selectbox(key="model_choice").set_value(str(first.resolve())).run()
    assert not app.exception and not app.chat_message  # back to the first: a new conversation too
