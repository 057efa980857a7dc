"""python -m data_prep.make_mc: the offline multiple-choice set, built from a prepared folder's val split.

The folder is the stdlib corpus (8 files of 48 KB) prepared with --val-fraction 0.25: two val documents of
~45k tokens together."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from data_prep import prepare
from data_prep.make_mc import MCSettings, ValSplit, make_mc
from gpt_ds.data import open_split
from gpt_ds.tokenizer import EOT_TOKEN

SMALL = ["--n", "200", "--ctx-tokens", "32", "--ending-tokens", "8"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "data_prep.make_mc", *map(str, args)], capture_output=True, text=True)


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def data(stdlib_corpus, tmp_path_factory, encoding):
    out = tmp_path_factory.mktemp("mc_data")
    manifest = prepare([str(stdlib_corpus)], out, val_fraction=0.25, workers=1, verbose=False)
    assert manifest["splits"]["val"]["documents"] >= 2
    return out


@pytest.fixture(scope="module")
def made(data, tmp_path_factory):
    """The file of SMALL and the default seed, made once."""
    out = tmp_path_factory.mktemp("mc") / "mc.jsonl"
    result = run_cli(data, "--out", out, *SMALL)
    assert result.returncode == 0, result.stderr
    assert "200 examples" in result.stdout and "chance is 25%" in result.stdout
    return out


def test_same_seed_same_file_other_seed_other_file(data, made, tmp_path):
    again, other = tmp_path / "again.jsonl", tmp_path / "other.jsonl"
    assert run_cli(data, "--out", again, *SMALL).returncode == 0
    assert run_cli(data, "--out", other, *SMALL, "--seed", "7").returncode == 0
    assert again.read_bytes() == made.read_bytes()
    assert other.read_bytes() != made.read_bytes()
    assert [e["offset"] for e in read(other)] != [e["offset"] for e in read(made)]


def test_schema_and_labels_balanced_over_positions(made):
    examples = read(made)
    assert len(examples) == 200
    for e in examples:
        assert isinstance(e["ctx"], str) and e["ctx"]
        assert isinstance(e["endings"], list) and len(e["endings"]) == 4
        assert all(isinstance(ending, str) and ending.strip() for ending in e["endings"])
        assert len({" ".join(ending.split()) for ending in e["endings"]}) == 4  # no two read the same
        assert type(e["label"]) is int and 0 <= e["label"] < 4
    counts = Counter(e["label"] for e in examples)
    assert sorted(counts) == [0, 1, 2, 3] and set(counts.values()) == {50}  # chance is exactly 25%


def test_true_ending_continues_ctx_in_val_and_nothing_crosses_a_document(data, made, encoding):
    tokens = np.concatenate(open_split(data, "val"))
    eots = np.flatnonzero(tokens == EOT_TOKEN)
    val_text = encoding.decode(tokens.tolist())
    documents = val_text.split("<|endoftext|>")
    examples = read(made)
    starts = sorted(e["offset"] for e in examples)
    assert all(b - a >= 40 for a, b in zip(starts, starts[1:]))  # contexts do not overlap
    for e in examples:
        start = e["offset"]
        window = tokens[start:start + 40]
        assert not np.any(window == EOT_TOKEN)
        assert encoding.decode(window[:32].tolist()) == e["ctx"]
        assert encoding.decode(window[32:].tolist()) == e["endings"][e["label"]]
        # every ending is a passage of one val document; the true one follows ctx there
        assert any(e["ctx"] + e["endings"][e["label"]] in doc for doc in documents)
        for i, ending in enumerate(e["endings"]):
            assert any(ending in doc for doc in documents)
            if i != e["label"]:
                assert ending != e["endings"][e["label"]]
    assert len(eots) >= 2  # the check above had document boundaries to cross


def test_no_context_is_whitespace_alone(data, tmp_path):
    # One-token contexts: indentation is one token, so many passages of the val split start with a blank one.
    # lm-eval moves a blank context whole into the endings, gpt_ds.mc_eval does not: make_mc leaves them out.
    settings = MCSettings(data=data, out=tmp_path / "mc.jsonl", n=3000, ctx_tokens=1, ending_tokens=4)
    val = ValSplit.open(data)
    blank = [start for start in val.starts(settings.window).tolist() if not val.text(start, 1).strip()]
    assert len(blank) > 300  # the rule has something to leave out
    examples = make_mc(settings)
    assert len(examples) == 3000 and len(read(settings.out)) == 3000
    assert all(e["ctx"].strip() for e in examples)
    assert not set(blank) & {e["offset"] for e in examples}


def test_too_few_val_tokens_says_how_many_fit(data, tmp_path):
    out = tmp_path / "mc.jsonl"
    result = run_cli(data, "--out", out, "--n", "100000", "--ctx-tokens", "64", "--ending-tokens", "16")
    assert result.returncode == 2 and result.stdout == ""
    line = result.stderr
    assert line.count("\n") == 1 and "Traceback" not in line
    fit = int(line.split("room for ")[1].split()[0])
    assert 0 < fit < 100000 and "--val-fraction" in line and "smaller --n" in line
    assert run_cli(data, "--out", out, "--n", fit, "--ctx-tokens", "64", "--ending-tokens", "16").returncode == 0


@pytest.fixture(scope="module")
def no_val(python_corpus, tmp_path_factory, encoding):
    out = tmp_path_factory.mktemp("mc_no_val")
    prepare([str(python_corpus(4 * 4000, files=4))], out, val_fraction=0.0, workers=1, verbose=False)
    return out


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist; prepare one with: python -m data_prep"),
    ("no manifest", "has no manifest.json; prepare it with: python -m data_prep"),
    ("no val", "has no 'val' split"),
    ("n 0", "--n must be a positive integer, not 0"),
    ("ctx -1", "--ctx-tokens must be a positive integer, not -1"),
    ("ending 0", "--ending-tokens must be a positive integer, not 0"),
    ("choices 1", "--choices must be at least 2"),
    ("n abc", "argument --n: invalid int value: 'abc'"),
    ("out folder missing", "does not exist; create"),
    ("out a folder", "is a folder; give the path of a .jsonl file"),
    ("out exists", "already exists; pass --force to replace it"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(case, message, data, no_val, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "mc.jsonl"
    folder, flags = data, [*SMALL]
    if case == "missing":
        folder = tmp_path / "nope"
    elif case == "no manifest":
        folder = tmp_path / "empty"
    elif case == "no val":
        folder = no_val
    elif case == "out folder missing":
        out = tmp_path / "no_folder" / "mc.jsonl"
    elif case == "out a folder":
        out = tmp_path / "empty"
    elif case == "out exists":
        out.write_text("mine\n")
    else:
        flag, value = case.split()
        flags += [{"n": "--n", "ctx": "--ctx-tokens", "ending": "--ending-tokens", "choices": "--choices"}[flag], value]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli(folder, "--out", out, *flags)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("python -m data_prep.make_mc: error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temp file left
    if case == "out exists":
        assert out.read_text() == "mine\n"
        assert run_cli(folder, "--out", out, *flags, "--force").returncode == 0
        assert len(read(out)) == 200
