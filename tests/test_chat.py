"""gpt_ds.chat and `launch/sample.py --chat`: a chat model's prompt fitted to its context (the oldest exchanges
drop, the system message stays), the reply ending at the model's end of turn, and the terminal chat driven
through a pipe: two messages, two replies, the second written with the first exchange in its context."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from app_fixtures import make_run

from gpt_ds import chat
from gpt_ds.errors import UserError
from gpt_ds.generate import Sampling, generate
from gpt_ds.inference import stream_continuation
from gpt_ds.model import GPT, config_from_preset
from gpt_ds.model_io import load_model, save_model
from gpt_ds.tokenizer import ROLE_TOKENS, decode_chat, render_chat

SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, encoding):
    return make_run(tmp_path_factory.mktemp("chat") / "run", with_tb=False, chat=True)


def exchange(i: int) -> list[dict]:
    return [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]


def test_the_prompt_drops_the_oldest_exchanges_and_keeps_the_system_message(encoding):
    messages = [SYSTEM, *exchange(1), *exchange(2), *exchange(3), {"role": "user", "content": "last"}]
    whole = render_chat(messages, encoding.encode_ordinary, for_reply=True)[0]
    assert chat.fit_prompt(messages, "r50k_base", len(whole) + 4, reserve=4) == chat.ChatPrompt(whole, 0)
    fitted = chat.fit_prompt(messages, "r50k_base", len(whole) + 3, reserve=4)  # one token short: drop one exchange
    assert fitted.dropped == 1
    assert fitted.tokens == render_chat([SYSTEM, *messages[3:]], encoding.encode_ordinary, for_reply=True)[0]
    assert fitted.tokens[1] == ROLE_TOKENS["system"] and fitted.tokens[-1] == ROLE_TOKENS["assistant"]
    with pytest.raises(UserError, match="more than this model's context of 8 tokens; shorten it"):
        chat.fit_prompt(messages, "r50k_base", 8, reserve=4)
    assert chat.reply_budget(64, 200) == 32 and chat.reply_budget(1024, 200) == 200
    assert chat.dropped_note(1, 64) == "the oldest exchange left out: the conversation outgrew the 64-token context"
    assert chat.dropped_note(3, 64).startswith("the 3 oldest exchanges left out")


def test_a_reply_ends_at_a_stop_token(chat_model_dir, encoding):
    model, info = load_model(chat_model_dir)
    prompt = chat.fit_prompt([{"role": "user", "content": "hi"}], info.tokenizer, 64, 8)
    greedy = Sampling(8, temperature=0, stop_token=None)
    tokens = generate(model, [prompt.tokens], greedy)[0]
    whole = list(stream_continuation(model, info.tokenizer, prompt.tokens, greedy))[-1]
    assert whole.tokens == 8 and whole.text == decode_chat(tokens, encoding.decode)  # markers as their text
    cut = list(stream_continuation(model, info.tokenizer, prompt.tokens, greedy, stop_tokens=frozenset({tokens[3]})))
    assert cut[-1].tokens == tokens.index(tokens[3])  # the stream ends before the first stop token
    assert chat.REPLY_STOPS >= {ROLE_TOKENS["user"], 50256, 50260}


def run_sample(repo_root, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/sample.py", *args], input=stdin, capture_output=True, text=True,
                          cwd=repo_root, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=120)


def test_the_terminal_chat_through_a_pipe(chat_model_dir, repo_root):
    model, info = load_model(chat_model_dir)
    sampling = Sampling(6, temperature=0)

    def expected(messages: list[dict]) -> str:
        prompt = chat.fit_prompt(messages, info.tokenizer, 64, chat.reply_budget(64, 6))
        updates = list(chat.stream_reply(model, info, prompt, sampling))
        assert updates and updates[-1].tokens == 6
        return updates[-1].text

    args = ["--model", str(chat_model_dir), "--chat", "--greedy", "--max-new-tokens", "6", "--system", "Be brief."]
    result = run_sample(repo_root, *args, stdin="first question\n\n/clear\nsecond question\nthird\n/quit\nignored\n")
    assert result.returncode == 0, result.stderr
    replies = [line.removeprefix("assistant: ") for line in result.stdout.splitlines()]
    assert len(replies) == 3 and result.stdout.count("assistant: ") == 3
    first = expected([SYSTEM, {"role": "user", "content": "first question"}])
    second = expected([SYSTEM, {"role": "user", "content": "second question"}])  # /clear: the first is gone
    third = expected([SYSTEM, {"role": "user", "content": "second question"}, {"role": "assistant", "content": second},
                      {"role": "user", "content": "third"}])
    assert replies == [first, second, third] and "(a new conversation)" in result.stderr
    assert third != expected([SYSTEM, {"role": "user", "content": "third"}])  # the exchange before it is in context

    # a message too long for the context alone: one line, and the conversation goes on without it
    long = run_sample(repo_root, *args, stdin="word " * 80 + "\nfirst question\n")
    assert long.returncode == 0 and "more than this model's context of 64 tokens; shorten it" in long.stderr
    assert long.stdout.splitlines() == [f"assistant: {first}"]

    once = run_sample(repo_root, *args, "--prompt", "first question")
    assert once.returncode == 0 and once.stdout == first + "\n"


@pytest.mark.parametrize("extra, message", [
    (["--system", "x"], "--system needs --chat"),
    (["--chat", "--num-samples", "2"], "--chat answers once per message: drop --num-samples"),
])
def test_bad_chat_flags_are_one_line(chat_model_dir, repo_root, extra, message):
    result = run_sample(repo_root, "--model", str(chat_model_dir), *extra)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_base_model_refuses_chat(tmp_path, repo_root, encoding):
    config = config_from_preset("tiny")
    base = save_model(tmp_path / "base", GPT(config), config)
    result = run_sample(repo_root, "--model", str(base), "--chat", "--prompt", "hi")
    assert result.returncode == 2 and "is a base model (no chat template in its config.json)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
