"""data_prep --format chat: conversations -> shards and loss masks. Round trip against render_chat (jsonl and
parquet), worker-count determinism, whole conversations per shard, truncation, interruption, --verify on masks,
every bad conversation in one line, and a text folder's manifest as it always was."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import prepare
from data_prep.settings import DEFAULT_MAX_TOKENS
from gpt_ds.data import MASK_MAGIC, open_masks, open_split, read_mask
from gpt_ds.errors import UserError
from gpt_ds.lock import LOCK_NAME
from gpt_ds.tokenizer import CHAT_TEMPLATE, CHAT_VOCAB_SIZE, EOT_TOKEN, render_chat
from test_data_prep import QUIET, all_bytes, kill_after_the_first_shard, run_cli

CHAT = {**QUIET, "format": "chat"}


def conversation(i: int, words: str = "") -> list[dict]:
    """Conversation `i`: varied in length, with a system message on every third, two turns on every other, and
    an assistant message of weight 0 (not trained) on every fifth."""
    messages = [{"role": "system", "content": f"You are assistant {i}."}] if i % 3 == 0 else []
    messages += [{"role": "user", "content": f"Question {i}: what is {i} + {i}?{words}"},
                 {"role": "assistant", "content": f"It is {2 * i}." + " Indeed." * (i % 7)}]
    if i % 2:
        messages += [{"role": "user", "content": "And <|endoftext|> <|assistant|> doubled?"},
                     {"role": "assistant", "content": f"{4 * i}, naïve café 東京 🚀", **({"weight": 0} if i % 5 == 0 else {})}]
    return messages


def write_jsonl(path, conversations, field="messages"):
    path.write_text("".join(json.dumps({"id": i, field: c}) + "\n" for i, c in enumerate(conversations)), encoding="utf-8")
    return path


def chat_table(conversations) -> pa.Table:
    """A table as Hugging Face chat datasets store it: a column of lists of structs (a null weight: absent)."""
    rows = [[{"role": m["role"], "content": m["content"], "weight": m.get("weight")} for m in c] for c in conversations]
    kind = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int64())]))
    return pa.table({"id": list(range(len(rows))), "messages": pa.array(rows, type=kind)})


def conversations_of(folder, split):
    """The split's conversations as (tokens, mask) lists, cut where a shard's stream holds EOT. Each shard must
    start with one: no conversation crosses from one shard to the next."""
    found = []
    for tokens, mask in zip(open_split(folder, split), open_masks(folder, split)):
        tokens, mask = np.asarray(tokens).tolist(), np.asarray(mask).tolist()
        assert tokens[0] == EOT_TOKEN
        starts = [i for i, t in enumerate(tokens) if t == EOT_TOKEN] + [len(tokens)]
        assert all(mask[i] == 0 for i in starts[:-1])
        found += [(tokens[a:b], mask[a:b]) for a, b in zip(starts, starts[1:])]
    return found


def rendered(conversations, encoding, limit=DEFAULT_MAX_TOKENS):
    return [tuple(part[:limit] for part in render_chat(c, encoding.encode_ordinary)) for c in conversations]


def test_jsonl_round_trip_tokens_and_masks_are_render_chats_and_no_conversation_is_cut(tmp_path, encoding):
    conversations = [conversation(i) for i in range(40)]
    write_jsonl(tmp_path / "chats.jsonl", conversations)
    manifest = prepare([str(tmp_path / "chats.jsonl")], tmp_path / "out", val_fraction=0.2, shard_tokens=200,
                       max_tokens=200, **CHAT)
    expected = rendered(conversations, encoding)
    train, val = conversations_of(tmp_path / "out", "train"), conversations_of(tmp_path / "out", "val")
    assert max(len(tokens) for tokens, _ in expected) < 200  # none truncated
    assert sorted(train + val) == sorted(expected) and len(val) >= 1
    assert train == [e for e in expected if e in train]  # corpus order kept
    assert (manifest["format"], manifest["chat_template"], manifest["vocab_size"]) == ("chat", CHAT_TEMPLATE, CHAT_VOCAB_SIZE)
    assert manifest["settings"] == {"val_fraction": 0.2, "shard_tokens": 200, "seed": 1337, "text_field": "messages",
                                    "format": "chat", "max_tokens": 200, "strict": False}
    for split, found in (("train", train), ("val", val)):
        entry = manifest["splits"][split]
        assert entry["conversations"] == len(found) and entry["truncated"] == 0
        assert entry["trained_tokens"] == sum(sum(mask) for _, mask in found)
        assert entry["tokens"] == sum(len(tokens) for tokens, _ in found)
        for shard in entry["shards"]:
            mask_file = tmp_path / "out" / shard["name"].replace(".bin", ".mask")
            assert hashlib.sha256(mask_file.read_bytes()).hexdigest() == shard["mask_sha256"]
            assert mask_file.read_bytes()[:4] == MASK_MAGIC.to_bytes(4, "little")
            assert len(read_mask(mask_file, shard["tokens"])) == shard["tokens"] <= 200
    # Shards end at a conversation's end, so most are shorter than --shard-tokens.
    assert len(manifest["splits"]["train"]["shards"]) > 3
    assert any(s["tokens"] < 200 for s in manifest["splits"]["train"]["shards"][:-1])
    assert manifest["total_trained_tokens"] == sum(sum(m) for _, m in expected)
    assert run_cli("--verify", tmp_path / "out").returncode == 0


def test_parquet_and_arrow_rows_give_the_same_shards_and_masks_as_jsonl_lines(tmp_path):
    conversations = [conversation(i) for i in range(30)]
    write_jsonl(tmp_path / "chats.jsonl", conversations)
    pq.write_table(chat_table(conversations), tmp_path / "chats.parquet", row_group_size=7)
    with pa.ipc.new_stream(str(tmp_path / "chats.arrow"), chat_table(conversations).schema) as writer:  # as datasets does
        writer.write_table(chat_table(conversations), max_chunksize=9)
    options = dict(val_fraction=0.2, shard_tokens=300, max_tokens=300, **CHAT)
    from_jsonl = prepare([str(tmp_path / "chats.jsonl")], tmp_path / "jsonl", **options)
    files = {n: b for n, b in all_bytes(tmp_path / "jsonl").items() if n != "manifest.json"}
    assert sum(name.endswith(".mask") for name in files) == sum(name.endswith(".bin") for name in files) > 2
    for name in ("chats.parquet", "chats.arrow"):
        from_table = prepare([str(tmp_path / name)], tmp_path / name.replace(".", "_"), **options)
        assert {n: b for n, b in all_bytes(tmp_path / name.replace(".", "_")).items() if n != "manifest.json"} == files
        assert from_table["splits"] == from_jsonl["splits"]


def test_the_same_bytes_for_any_worker_count_and_a_rerun_is_up_to_date(tmp_path):
    # More conversations than one worker batch holds (4096), so two workers both work.
    write_jsonl(tmp_path / "chats.jsonl", [conversation(i) for i in range(5000)])
    options = dict(val_fraction=0.1, shard_tokens=20_000, format="chat", verbose=False)
    one = prepare([str(tmp_path / "chats.jsonl")], tmp_path / "one", workers=1, **options)
    two = prepare([str(tmp_path / "chats.jsonl")], tmp_path / "two", workers=2, **options)
    assert one == two and all_bytes(tmp_path / "one") == all_bytes(tmp_path / "two")
    assert len(one["splits"]["train"]["shards"]) > 3
    assert prepare([str(tmp_path / "chats.jsonl")], tmp_path / "two", workers=2, **options) == two


def test_a_long_conversation_is_truncated_and_counted_or_refused_when_strict(tmp_path, encoding):
    conversations = [conversation(i, words=" many more words" * (40 if i in (2, 5) else 0)) for i in range(8)]
    write_jsonl(tmp_path / "chats.jsonl", conversations)
    manifest = prepare([str(tmp_path / "chats.jsonl")], tmp_path / "out", val_fraction=0, max_tokens=100,
                       shard_tokens=100, **CHAT)
    assert conversations_of(tmp_path / "out", "train") == rendered(conversations, encoding, limit=100)
    assert manifest["splits"]["train"]["truncated"] == manifest["total_truncated"] == 2
    assert all(s["tokens"] <= 100 for s in manifest["splits"]["train"]["shards"])
    result = run_cli("--format", "chat", "--input", tmp_path / "chats.jsonl", "--out", tmp_path / "strict",
                     "--max-tokens", "100", "--strict")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "chats.jsonl:3: the conversation is " in result.stderr and "longer than --max-tokens 100" in result.stderr
    assert not (tmp_path / "strict" / "manifest.json").exists()
    with pytest.raises(UserError, match="2 conversations truncated"):  # a lax folder is not what --strict asks for
        prepare([str(tmp_path / "chats.jsonl")], tmp_path / "out", val_fraction=0, max_tokens=100, shard_tokens=100,
                strict=True, **CHAT)


def test_settings_of_chat_are_checked(tmp_path):
    write_jsonl(tmp_path / "chats.jsonl", [conversation(1)])
    (tmp_path / "notes.txt").write_text("plain text is not a conversation")
    cases = [
        (dict(shard_tokens=1000), r"--shard-tokens 1000 is below --max-tokens 1025: .*never split across shards"),
        (dict(max_tokens=1), r"--max-tokens must be at least 2"),
        (dict(format="text", max_tokens=50), r"--max-tokens .* needs --format chat"),
        (dict(format="json"), r"--format must be one of text, chat"),
    ]
    for options, message in cases:
        with pytest.raises(UserError, match=message):
            prepare([str(tmp_path / "chats.jsonl")], tmp_path / "o", **{**CHAT, **options})
    with pytest.raises(UserError, match=r"notes.txt is neither .jsonl nor a .parquet/.arrow table"):
        prepare([str(tmp_path)], tmp_path / "o", **CHAT)
    assert not (tmp_path / "o").exists()


GOOD = json.dumps({"messages": conversation(1)})
BAD_LINES = [
    ('{"messages": [broken', r"not valid JSON \(.*\); fix or remove the line"),
    (json.dumps({"text": "hi"}), r"no 'messages' field \(fields: text\); pass --text-field"),
    (json.dumps({"messages": [{"role": "robot", "content": "beep"}]}), r"message 1: unknown role 'robot'; use system, user or assistant"),
    (json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}),
     r"message 1 \(user\): content must be a string, not int"),
    (json.dumps({"messages": [{"role": "user", "content": "hello?"}]}), r"no assistant turn: nothing to train on"),
    (json.dumps({"messages": [{"role": "assistant", "content": "first"}]}), r"message 1: expected a user turn, got assistant"),
    (json.dumps({"messages": []}), r"messages must be a non-empty list"),
]


@pytest.mark.parametrize("line, message", BAD_LINES,
                         ids=["not-json", "no-messages", "unknown-role", "content-not-string", "no-assistant", "order", "empty"])
def test_a_bad_conversation_is_one_line_naming_the_file_and_line(tmp_path, line, message):
    (tmp_path / "bad.jsonl").write_text(f"{GOOD}\n\n{line}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:3: " + message) as raised:
        prepare([str(tmp_path / "bad.jsonl")], tmp_path / "out", **CHAT)
    assert "\n" not in str(raised.value)
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name != LOCK_NAME]


def test_a_bad_conversation_on_the_command_line_exits_2_with_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text(f"{GOOD}\n{BAD_LINES[2][0]}\n", encoding="utf-8")
    result = run_cli("--format", "chat", "--input", tmp_path / "bad.jsonl", "--out", tmp_path / "out", "--workers", "2")
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert "bad.jsonl:2: message 1: unknown role 'robot'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_tables_of_conversations_name_the_file_and_row(tmp_path):
    kind = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    rows = [conversation(0), [{"role": "user", "content": "no reply"}], None]
    pq.write_table(pa.table({"messages": pa.array(rows, type=kind)}), tmp_path / "bad.parquet")
    pq.write_table(pa.table({"messages": pa.array([None], type=kind)}), tmp_path / "null.parquet")
    pq.write_table(pa.table({"messages": ["a string"], "chat": pa.array([conversation(0)], type=kind)}), tmp_path / "text.parquet")
    cases = [
        ("bad.parquet", r"bad.parquet \(row 1\): no assistant turn"),
        ("null.parquet", r"null.parquet \(row 0\): messages must be a non-empty list"),
        ("text.parquet", r"text.parquet: column 'messages' holds string, not conversations .*pass --text-field NAME with such a column \(chat\)"),
    ]
    for name, message in cases:
        with pytest.raises(UserError, match=message):
            prepare([str(tmp_path / name)], tmp_path / f"out_{name}", **CHAT)
        assert not (tmp_path / f"out_{name}" / "manifest.json").exists()
    manifest = prepare([str(tmp_path / "text.parquet")], tmp_path / "by_flag", text_field="chat", **CHAT)
    assert manifest["total_conversations"] == 1


def test_verify_and_a_rerun_catch_a_changed_mask_byte(tmp_path):
    write_jsonl(tmp_path / "chats.jsonl", [conversation(i) for i in range(10)])
    out = tmp_path / "out"
    prepare([str(tmp_path / "chats.jsonl")], out, val_fraction=0, **CHAT)
    good = run_cli("--verify", out)
    assert good.returncode == 0 and "1 shards and their loss masks" in good.stdout, good.stderr
    mask = out / "train_000000.mask"
    data = bytearray(mask.read_bytes())
    data[1024 + 3] ^= 1  # a context token becomes a target
    mask.write_bytes(bytes(data))
    bad = run_cli("--verify", out)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "train_000000.mask does not have the sha256" in bad.stderr
    rerun = run_cli("--format", "chat", "--input", tmp_path / "chats.jsonl", "--out", out, "--val-fraction", "0")
    assert rerun.returncode == 0 and "preparing it again" in rerun.stdout, rerun.stderr
    assert run_cli("--verify", out).returncode == 0
    mask.unlink()
    assert "loss mask" in run_cli("--verify", out).stderr


def test_text_and_chat_preparations_do_not_mistake_each_other(tmp_path):
    records = [{"text": f"document {i}", "messages": conversation(i)} for i in range(4)]
    (tmp_path / "both.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prepare([str(tmp_path / "both.jsonl")], tmp_path / "out", **QUIET)
    with pytest.raises(UserError, match=r"different preparation \(format text -> chat, text-field text -> messages"):
        prepare([str(tmp_path / "both.jsonl")], tmp_path / "out", **CHAT)
    prepare([str(tmp_path / "both.jsonl")], tmp_path / "chat", **CHAT)
    with pytest.raises(UserError, match=r"different preparation \(format chat -> text\)"):
        prepare([str(tmp_path / "both.jsonl")], tmp_path / "chat", text_field="messages", **QUIET)
    # --force replaces a chat folder with a text one, masks included
    prepare([str(tmp_path / "both.jsonl")], tmp_path / "chat", force=True, **QUIET)
    assert not list((tmp_path / "chat").glob("*.mask")) and open_masks(tmp_path / "chat", "train") is None


def test_a_text_folders_manifest_is_as_it_always_was(tmp_path, encoding):
    (tmp_path / "a.txt").write_text("Hello world")
    (tmp_path / "b.txt").write_text("Hello again")
    manifest = prepare([str(tmp_path / "*.txt")], tmp_path / "out", **QUIET)
    assert open_masks(tmp_path / "out", "train") is None and not list((tmp_path / "out").glob("*.mask"))
    shard = (tmp_path / "out" / "train_000000.bin").read_bytes()
    assert shard[1024:] == np.array([EOT_TOKEN, *encoding.encode_ordinary("Hello world")], "<u2").tobytes()
    val = (tmp_path / "out" / "val_000000.bin").read_bytes()
    inputs = manifest["inputs"]
    assert manifest == {
        "format": {"magic": 20240520, "version": 1, "header_bytes": 1024, "token_bytes": 2},
        "encoding": "r50k_base", "vocab_size": 50257, "eot_token": 50256, "dtype": "uint16",
        "splits": {
            "train": {"shards": [{"name": "train_000000.bin", "tokens": 3, "sha256": hashlib.sha256(shard).hexdigest()}],
                      "tokens": 3, "documents": 1},
            "val": {"shards": [{"name": "val_000000.bin", "tokens": 3, "sha256": hashlib.sha256(val).hexdigest()}],
                    "tokens": 3, "documents": 1},
        },
        "total_tokens": 6, "total_documents": 2,
        "inputs": {"paths": [str(tmp_path / "*.txt")], "files": 2, "bytes": 22, "fingerprint": inputs["fingerprint"]},
        "replaced": {"sequences": 0, "documents": 0},
        "skipped": {"binary_files": 0, "empty_documents": 0},
        "settings": {"val_fraction": 0.005, "shard_tokens": 100_000_000, "seed": 1337, "text_field": "text", "strict": False},
        "created_by": manifest["created_by"],
    }
    # and in that key order, as json.dumps writes it
    assert list(manifest) == ["format", "encoding", "vocab_size", "eot_token", "dtype", "splits", "total_tokens",
                              "total_documents", "inputs", "replaced", "skipped", "settings", "created_by"]


def test_an_interrupted_chat_run_reruns_to_the_same_bytes(tmp_path, python_corpus):
    text = next(python_corpus(3_000_000, files=1).iterdir()).read_text(encoding="utf-8")
    pieces = [text[i : i + 1500] for i in range(0, len(text), 1500)]
    write_jsonl(tmp_path / "chats.jsonl", [[{"role": "user", "content": a}, {"role": "assistant", "content": b}]
                                           for a, b in zip(pieces[::2], pieces[1::2])])
    args = ["--format", "chat", "--input", tmp_path / "chats.jsonl", "--shard-tokens", "20000", "--val-fraction", "0.1",
            "--workers", "1", "--out"]
    command = [sys.executable, "-m", "data_prep", *map(str, args)]
    out = tmp_path / "killed"
    kill_after_the_first_shard([*command, str(out)], out)
    rerun = run_cli(*args, out)
    assert rerun.returncode == 0 and "finishing an interrupted preparation" in rerun.stdout, rerun.stderr
    prepare([str(tmp_path / "chats.jsonl")], tmp_path / "whole", shard_tokens=20000, val_fraction=0.1, **CHAT)
    assert all_bytes(out) == all_bytes(tmp_path / "whole")
    assert len(list(out.glob("train_*.mask"))) == len(list(out.glob("train_*.bin"))) > 10


def test_invalid_utf8_and_lone_surrogates_are_replaced_and_counted_or_refused_when_strict(tmp_path, encoding):
    good = json.dumps({"messages": conversation(1)}).encode()
    surrogate = b'{"messages": [{"role": "user", "content": "a \\ud800 b"}, {"role": "assistant", "content": "ok"}]}'
    invalid = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}'
    (tmp_path / "chats.jsonl").write_bytes(b"\n".join([good, surrogate, invalid]) + b"\n")
    manifest = prepare([str(tmp_path / "chats.jsonl")], tmp_path / "out", val_fraction=0, **CHAT)
    assert manifest["replaced"] == {"sequences": 2, "documents": 2}
    fixed = [conversation(1), [{"role": "user", "content": "a \ufffd b"}, {"role": "assistant", "content": "ok"}],
             [{"role": "user", "content": "caf\ufffd"}, {"role": "assistant", "content": "ok"}]]
    assert conversations_of(tmp_path / "out", "train") == rendered(fixed, encoding)
    with pytest.raises(UserError, match=r"chats.jsonl:2: a lone UTF-16 surrogate"):
        prepare([str(tmp_path / "chats.jsonl")], tmp_path / "strict", strict=True, **CHAT)
    (tmp_path / "chats.jsonl").write_bytes(b"\n".join([good, invalid]) + b"\n")
    with pytest.raises(UserError, match=r"chats.jsonl:2: invalid UTF-8"):
        prepare([str(tmp_path / "chats.jsonl")], tmp_path / "strict", strict=True, **CHAT)
