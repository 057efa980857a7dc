"""python -m data_prep.make_chat: the conversation set from the standard library's docstrings and language reference.

The set is built once with the defaults (3000 conversations) and once whole (--n above the pool); each build takes
about a second."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

from data_prep.make_chat import (DEFAULT_N, MAX_ANSWER_TOKENS, MAX_CONVERSATION_TOKENS, SYSTEM_PROMPT, api_docs,
                                 fit, topic_docs)
from gpt_ds.tokenizer import check_conversation, render_chat

ALL = ["--n", "1000000"]


def run_cli(*args, env=None, python=()):
    return subprocess.run([sys.executable, *python, "-m", "data_prep.make_chat", *map(str, args)],
                          capture_output=True, text=True, env=env)


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def made(tmp_path_factory, encoding):
    """The set of the default flags: its folder and what the command printed."""
    out = tmp_path_factory.mktemp("chat") / "set"
    result = run_cli("--out", out)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.fixture(scope="module")
def whole(tmp_path_factory, encoding):
    """Every conversation there is, all but 5% in train.jsonl."""
    out = tmp_path_factory.mktemp("chat_all")
    result = run_cli("--out", out, *ALL)
    assert result.returncode == 0, result.stderr
    return [row["messages"] for name in ("train.jsonl", "val.jsonl") for row in read(out / name)], result.stdout


def test_same_seed_same_bytes_other_seed_other_set(made, tmp_path):
    out, _ = made
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # no set or dict order leaks into the bytes
    assert run_cli("--out", tmp_path / "again", env=env).returncode == 0
    assert run_cli("--out", tmp_path / "other", "--seed", "7").returncode == 0
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (out / name).read_bytes()


def test_counts_split_and_the_line_it_prints(made):
    out, stdout = made
    train, val = (out / "train.jsonl").read_text().splitlines(), (out / "val.jsonl").read_text().splitlines()
    assert len(train) + len(val) == DEFAULT_N and len(val) == round(DEFAULT_N * 0.05)
    assert not set(train) & set(val)
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert stdout.count("\n") == 1
    assert f"{len(train)} conversations in train.jsonl and {len(val)} in val.jsonl" in stdout
    assert f"next: python -m data_prep --format chat --input {out / 'train.jsonl'}" in stdout


def test_every_conversation_is_valid_and_fits_the_tiny_context(made, encoding):
    out, _ = made
    for name in ("train.jsonl", "val.jsonl"):
        for row in read(out / name):
            assert list(row) == ["messages"]
            messages = check_conversation(row["messages"])
            assert all(set(m) == {"role", "content"} and m["content"].strip() for m in messages)
            assert len(render_chat(messages, encoding.encode_ordinary)[0]) <= MAX_CONVERSATION_TOKENS
            assert all(len(encoding.encode_ordinary(m["content"])) <= MAX_ANSWER_TOKENS
                       for m in messages if m["role"] == "assistant")


def test_system_messages_and_two_turn_conversations_are_there(made):
    out, _ = made
    rows = [row["messages"] for row in read(out / "train.jsonl")]
    system = [m for m in rows if m[0]["role"] == "system"]
    assert 0.15 < len(system) / len(rows) < 0.35 and {m[0]["content"] for m in system} == {SYSTEM_PROMPT}
    two_turn = [m for m in rows if sum(x["role"] == "user" for x in m) == 2]
    assert len(two_turn) > 300
    follow_ups = {m[-2]["content"] for m in two_turn}
    assert {"And its signature?", "Tell me more."} & follow_ups and any("example" in f for f in follow_ups)
    assert any(m[-1]["content"].startswith("For example:\n\n>>> ") for m in two_turn)


def test_whole_pool_when_n_is_larger(whole):
    rows, stdout = whole
    assert len(rows) > DEFAULT_N  # the default takes a sample
    assert f"of the {len(rows)} that Python" in stdout


def test_answers_are_the_real_docstrings(whole):
    rows, _ = whole
    first_line = inspect.cleandoc(textwrap.dedent.__doc__).splitlines()[0]  # "Remove any common leading ..."
    about = [c for c in rows if any("textwrap.dedent" in m["content"] for m in c if m["role"] == "user")]
    assert about
    answers = " ".join(m["content"] for conversation in about for m in conversation if m["role"] == "assistant")
    assert "`textwrap.dedent(text)`" in answers and first_line in answers
    doc = next(d for d in api_docs() if d.name == "textwrap.dedent")
    assert doc.signature == "(text)" and doc.paragraph == first_line
    # a method, its `self` left out; a builtin, its signature line taken from its docstring where inspect has none
    assert next(d for d in api_docs() if d.name == "collections.Counter.most_common").signature == "(n=None)"
    assert any(d.name == "str.split" for d in api_docs())


def test_topics_answer_from_the_language_reference(whole):
    from pydoc_data.topics import topics

    rows, _ = whole
    opening = " ".join(topics["while"].split("\n\n")[1].split())  # the first paragraph after the title
    assert any(m[-2]["content"] in ("What does the `while` keyword do in Python?", "What is `while` used for in Python?",
                                    "Explain the `while` keyword.") and m[-1]["content"].startswith(opening)
               for m in rows)
    docs = {d.title: d for d in topic_docs()}
    assert "while" in docs["the `while` statement"].keywords
    assert all(len(d.answer) <= 600 and not d.answer.endswith(":") for d in docs.values())


def test_fit_cuts_at_a_sentence_end(encoding):
    text = "One two. Three four five. " * 40 + "End."
    cut = fit(text, max_tokens=20)
    assert text.startswith(cut) and cut.endswith(".") and len(encoding.encode_ordinary(cut)) <= 20
    longer = text[:text.index(". ", len(cut) + 1) + 1]  # the next sentence too
    assert len(encoding.encode_ordinary(longer)) > 20
    assert fit("A very long first sentence without an end " * 20) is None
    assert fit("Short.", max_chars=3) is None
    assert fit("It is used like this:\n\n   x = 1\n" + "   y = 2\n" * 200) == "It is used like this."  # nothing better
    assert fit("Intro. It is used like this:\n\n" + "   y = 2\n" * 200) == "Intro."


@pytest.mark.parametrize("flags, message", [
    (["--n", "0"], "--n must be at least 2"),
    (["--n", "1"], "--n must be at least 2"),
    (["--val-fraction", "1.5"], "--val-fraction must be above 0 and below 1, not 1.5"),
    (["--val-fraction", "0"], "--val-fraction must be above 0 and below 1, not 0.0"),
    (["--seed", "-1"], "--seed must be a non-negative integer"),
    (["--n", "abc"], "argument --n: invalid int value: 'abc'"),
    (["--out-a-file"], "is a file; give a folder"),
    (["--exists"], "already exists; pass --force to replace it"),
    (["-OO"], "strips docstrings; run it without -OO"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(flags, message, tmp_path, encoding):
    out, python = tmp_path / "set", ()
    if flags == ["--out-a-file"]:
        out, flags = tmp_path / "file", []
        out.write_text("mine\n")
    elif flags == ["--exists"]:
        out.mkdir()
        (out / "val.jsonl").write_text("mine\n")
        flags = []
    elif flags == ["-OO"]:
        python, flags = ("-OO",), []
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli("--out", out, *flags, python=python)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("python -m data_prep.make_chat: error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temp file left
    if message.startswith("already exists"):
        assert (out / "val.jsonl").read_text() == "mine\n"
        assert run_cli("--out", out, "--n", "20", "--force", "--quiet").returncode == 0
        assert len(read(out / "train.jsonl")) == 19 and len(read(out / "val.jsonl")) == 1
