"""data_prep: corpus -> shards. Round trip, format, determinism, interruption, and every bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep import default_corpus, prepare
from data_prep.inputs import CorpusReader, safe_cut
from data_prep.split import val_score
from data_prep.tokenize import check_fits_uint16
from gpt_ds.data import IN_PROGRESS_NAME, ShardError, load_manifest, open_split, read_shard
from gpt_ds.errors import UserError
from gpt_ds.lock import LOCK_NAME

EOT = 50256
QUIET = {"verbose": False, "workers": 1}


def split_documents(data_dir, split):
    """The documents of a split, as token lists, cut at each EOT (which must open the stream)."""
    tokens = np.concatenate([np.asarray(s) for s in open_split(data_dir, split)]).tolist()
    assert tokens[0] == EOT
    docs, current = [], None
    for token in tokens:
        if token == EOT:
            current = []
            docs.append(current)
        else:
            current.append(token)
    return docs


def all_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


@pytest.fixture
def mixed_corpus(tmp_path, python_corpus):
    """Plain text (odd extensions, CRLF, unicode, a literal <|endoftext|>), jsonl and gzip of both.
    Returns the folder and its documents in the order data_prep must take them (sorted paths)."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    plays = sorted(python_corpus(2 * 64_000, files=2).iterdir())  # two large documents (~29k tokens each)
    texts = {
        "a_play.txt": plays[0].read_text(encoding="utf-8"),
        "b_crlf.md": "line one\r\nline two  \r\n\r\n  indented\r\n",
        "c_unicode": "naïve café — 東京 🚀\n<|endoftext|> is text here\n",
        "sub/d_play.txt.gz": plays[1].read_text(encoding="utf-8"),
    }
    for name, text in texts.items():
        data = text.encode("utf-8")
        (root / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    records = ["first record", "second\nwith newline", "", "third: \u00e9\u00e8"]
    jsonl = "\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(records)) + "\n\n"
    (root / "e_records.jsonl").write_text(jsonl, encoding="utf-8")
    (root / "sub" / "f_records.jsonl.gz").write_bytes(gzip.compress(jsonl.encode()))
    (root / ".hidden.txt").write_text("hidden files are left out")
    records = [r for r in records if r]  # an empty text is an empty document: skipped
    docs = [texts["a_play.txt"], texts["b_crlf.md"], texts["c_unicode"], *records, *records, texts["sub/d_play.txt.gz"]]
    # sorted by path: a_play.txt, b_crlf.md, c_unicode, e_records.jsonl, sub/d_play.txt.gz, sub/f_records.jsonl.gz
    docs = docs[:3] + docs[3:6] + [docs[-1]] + docs[6:9]
    return root, docs


def test_round_trip_each_document_after_an_eot(mixed_corpus, tmp_path, encoding):
    root, docs = mixed_corpus
    out = tmp_path / "out"
    manifest = prepare([str(root)], out, val_fraction=0.3, shard_tokens=10_000, **QUIET)
    train, val = split_documents(out, "train"), split_documents(out, "val")
    assert len(train) + len(val) == len(docs) == manifest["total_documents"]
    # Each split keeps the corpus order; together they hold every document exactly, as encode_ordinary makes it.
    expected = [encoding.encode_ordinary(d) for d in docs]
    it = iter(expected)
    assert all(any(doc == e for e in it) for doc in train)
    assert sorted(map(tuple, train + val)) == sorted(map(tuple, expected))
    assert [encoding.decode(d) for d in train + val].count(docs[2]) == 1  # the literal <|endoftext|> is text
    assert len(val) >= 1 and len(manifest["splits"]["train"]["shards"]) > 2
    assert manifest["skipped"] == {"binary_files": 0, "empty_documents": 2}
    assert manifest["inputs"]["files"] == 6  # the hidden file is not an input


def test_manifest_matches_the_shards(mixed_corpus, tmp_path):
    root, _ = mixed_corpus
    out = tmp_path / "out"
    manifest = prepare([str(root / "*")], out, shard_tokens=50_000, seed=7, **QUIET)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert load_manifest(out) == manifest
    assert (manifest["encoding"], manifest["vocab_size"], manifest["eot_token"], manifest["dtype"]) == (
        "r50k_base", 50257, EOT, "uint16")
    assert manifest["settings"] == {"val_fraction": 0.005, "shard_tokens": 50_000, "seed": 7,
                                    "text_field": "text", "strict": False}
    total = 0
    for split in ("train", "val"):
        entry = manifest["splits"][split]
        names = [s["name"] for s in entry["shards"]]
        assert names == [f"{split}_{i:06d}.bin" for i in range(len(names))]
        for shard in entry["shards"]:
            raw = (out / shard["name"]).read_bytes()
            assert hashlib.sha256(raw).hexdigest() == shard["sha256"]
            assert len(raw) == 1024 + 2 * shard["tokens"]
        assert all(s["tokens"] == 50_000 for s in entry["shards"][:-1])  # all full but the last
        assert entry["tokens"] == sum(s["tokens"] for s in entry["shards"])
        total += entry["tokens"]
    assert manifest["total_tokens"] == total
    assert IN_PROGRESS_NAME not in os.listdir(out)


def test_shard_header_byte_by_byte(tmp_path):
    corpus = tmp_path / "doc.txt"
    corpus.write_text("Hello world")
    prepare([str(corpus)], tmp_path / "out", **QUIET)
    raw = (tmp_path / "out" / "train_000000.bin").read_bytes()
    assert raw[:12] == (20240520).to_bytes(4, "little") + (1).to_bytes(4, "little") + (3).to_bytes(4, "little")
    assert raw[12:1024] == bytes(1012)
    assert raw[1024:] == b"".join(t.to_bytes(2, "little") for t in (EOT, 15496, 995))  # EOT "Hello" " world"


def test_same_bytes_across_runs_and_worker_counts(mixed_corpus, tmp_path):
    root, _ = mixed_corpus
    options = {"val_fraction": 0.2, "shard_tokens": 20_000, "verbose": False}
    prepare([str(root)], tmp_path / "w1", workers=1, **options)
    prepare([str(root)], tmp_path / "w2", workers=2, **options)
    prepare([str(root)], tmp_path / "w2again", workers=2, **options)
    reference = all_bytes(tmp_path / "w1")
    assert len(reference) > 4
    assert all_bytes(tmp_path / "w2") == reference
    assert all_bytes(tmp_path / "w2again") == reference


def test_large_document_is_cut_only_where_tokens_do_not_change(tmp_path, python_corpus, encoding):
    # Above 1 MiB a document is tokenized in pieces; the tokens must equal encoding the whole.
    text = python_corpus(2_200_000).joinpath("000.py").read_text(encoding="utf-8")
    assert len(text.encode()) > 2 * (1 << 20)
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    prepare([str(tmp_path / "big.txt")], tmp_path / "out", **QUIET)
    assert split_documents(tmp_path / "out", "train") == [encoding.encode_ordinary(text)]


def test_safe_cut_points_keep_tokens_on_adversarial_text(tmp_path, encoding):
    rng = random.Random(0)
    alphabet = ["a", "B", "7", ".", "'s", " ", "  ", "\n", "\r\n", "\n\n", "\t", " \n", "é", "\u00a0", "\u3000", "!?", "--"]
    text = "".join(rng.choice(alphabet) for _ in range(20_000))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8", newline="")
    pieces = list(CorpusReader([path], piece_bytes=64).pieces())
    assert len(pieces) > 50
    assert b"".join(p.data for p in pieces) == text.encode()
    assert sum((encoding.encode_ordinary(p.data.decode()) for p in pieces), []) == encoding.encode_ordinary(text)
    assert safe_cut(b"abc\r\ndef") == 3 and safe_cut(b"abc \ndef") == 0 and safe_cut(b"\n\nx") == 0


def test_val_split_rules(tmp_path):
    def docs(n, name):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(n):
            (folder / f"{i:03d}.txt").write_text(f"document number {i}")
        return str(folder)

    one = prepare([docs(1, "one")], tmp_path / "o1", **QUIET)
    assert one["splits"]["train"]["documents"] == 1 and one["splits"]["val"]["documents"] == 0
    two = prepare([docs(2, "two")], tmp_path / "o2", **QUIET)  # 0.005 draws none: the lowest score goes to val
    assert two["splits"]["train"]["documents"] == 1 and two["splits"]["val"]["documents"] == 1
    many = docs(40, "many")
    none = prepare([many], tmp_path / "o3", val_fraction=0.0, **QUIET)
    assert none["splits"]["val"] == {"shards": [], "tokens": 0, "documents": 0}

    def val_docs(seed, out):
        prepare([many], tmp_path / out, val_fraction=0.25, seed=seed, **QUIET)
        return {tuple(d) for d in split_documents(tmp_path / out, "val")}

    assert val_docs(1, "s1") == val_docs(1, "s1b")
    assert val_docs(1, "s1") != val_docs(2, "s2")  # the seed decides
    expected = sum(val_score(1, i) < 0.25 for i in range(40))
    assert len(val_docs(1, "s1")) == expected


# ~4M tokens in 80 files: tokenizing it takes seconds, so an interruption lands mid-run.
BIG_CORPUS = dict(total_bytes=9_000_000, files=80)


def kill_after_the_first_shard(command: list[str], out: Path) -> None:
    """Run `command` (a preparation into `out`) and kill it with SIGKILL once its first shard is written."""
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "train_000000.bin").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "manifest.json").exists()


def test_interrupted_run_then_rerun_gives_the_same_bytes(tmp_path, python_corpus):
    corpus = python_corpus(**BIG_CORPUS)
    args = ["--input", str(corpus), "--shard-tokens", "40000", "--val-fraction", "0.1", "--workers", "1"]
    command = [sys.executable, "-m", "data_prep", *args, "--out"]
    out = tmp_path / "killed"
    kill_after_the_first_shard([*command, str(out)], out)
    for shard in out.glob("*.bin"):  # whatever carries a shard name is complete
        read_shard(shard)
    with pytest.raises(ShardError, match="unfinished preparation"):
        open_split(out, "train")
    with pytest.raises(UserError, match="unfinished preparation with other inputs or settings .*seed"):
        prepare([str(corpus)], out, shard_tokens=40000, val_fraction=0.1, seed=1, **QUIET)

    rerun = subprocess.run([*command, str(out)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "finishing an interrupted preparation" in rerun.stdout
    prepare([str(corpus)], tmp_path / "whole", shard_tokens=40000, val_fraction=0.1, **QUIET)
    assert all_bytes(out) == all_bytes(tmp_path / "whole")
    assert len(list(out.glob("train_*.bin"))) > 10


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], capture_output=True, text=True)


def test_rerun_is_up_to_date_and_other_settings_are_refused_without_force(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "b.txt").write_text("more text")
    out = tmp_path / "out"
    prepare([str(tmp_path / "*.txt")], out, **QUIET)
    def stamps():  # the run's lock file is written by every run: the data is what must stay
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != LOCK_NAME}

    before = stamps()
    result = run_cli("--input", tmp_path / "a.txt", tmp_path / "b.txt", "--out", out)
    assert result.returncode == 0 and "up to date" in result.stdout
    assert stamps() == before  # nothing rewritten

    result = run_cli("--input", tmp_path / "a.txt", tmp_path / "b.txt", "--out", out, "--seed", "5")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "different preparation (seed 1337 -> 5)" in result.stderr and "--force" in result.stderr
    (tmp_path / "b.txt").write_text("changed text")
    with pytest.raises(UserError, match="the input files"):
        prepare([str(tmp_path / "*.txt")], out, **QUIET)
    manifest = prepare([str(tmp_path / "*.txt")], out, seed=5, force=True, **QUIET)
    assert manifest["settings"]["seed"] == 5
    (out / "train_000000.bin").write_bytes(b"x" * 2000)  # damaged after preparation: redone, not "up to date"
    assert prepare([str(tmp_path / "*.txt")], out, seed=5, **QUIET) == manifest
    read_shard(out / "train_000000.bin")


def test_an_input_glob_that_also_names_the_output_folder_leaves_it_out(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text")
    (corpus / "b.txt").write_text("more text")
    out = corpus / "prepared"
    first = prepare([str(corpus / "*")], out, **QUIET)
    # Now corpus/* matches corpus/prepared too: its shards and manifest are not inputs.
    assert prepare([str(corpus / "*")], out, **QUIET) == first
    assert prepare([str(corpus / "**")], out, **QUIET) == first
    assert first["inputs"]["files"] == 2


def test_binary_files_are_skipped_and_counted_or_refused_when_strict(tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "text.txt").write_text("plain words")
    (corpus / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(100))
    manifest = prepare([str(corpus)], tmp_path / "out", **QUIET)
    assert manifest["skipped"]["binary_files"] == 1 and manifest["total_documents"] == 1
    with pytest.raises(UserError, match=r"image.png is a binary file .*drop --strict"):
        prepare([str(corpus)], tmp_path / "strict", strict=True, **QUIET)
    with pytest.raises(UserError, match="was prepared without --strict"):
        prepare([str(corpus)], tmp_path / "out", strict=True, **QUIET)


def test_invalid_utf8_is_replaced_and_counted_or_refused_when_strict(tmp_path, encoding):
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me \ufffd".encode("latin-1", "replace")[:-1] + "\ufffd".encode())
    (corpus / "ok.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "bad \xff byte"}\n')
    manifest = prepare([str(corpus)], tmp_path / "out", val_fraction=0, **QUIET)
    # Two bad bytes in the text file (a literal, valid U+FFFD there is not counted), one in the jsonl.
    assert manifest["replaced"] == {"sequences": 3, "documents": 2}
    docs = [encoding.decode(d) for d in split_documents(tmp_path / "out", "train")]
    assert docs == ["caf\ufffd cr\ufffdme \ufffd", "fine", "bad \ufffd byte"]
    with pytest.raises(UserError, match=r"latin1.txt \(byte 3\): invalid UTF-8 .*drop --strict"):
        prepare([str(corpus)], tmp_path / "strict", strict=True, **QUIET)
    (corpus / "latin1.txt").unlink()
    with pytest.raises(UserError, match=r"ok.jsonl:2: invalid UTF-8"):
        prepare([str(corpus)], tmp_path / "strict", strict=True, workers=2, verbose=False)


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "ok"}\n\n{"text": broken}\n', r"bad.jsonl:3: not valid JSON"),
        (b'{"text": "ok"}\n{"body": "no text field"}\n', r"bad.jsonl:2: no 'text' field \(fields: body\); pass --text-field"),
        (b'{"text": 5}\n', r"bad.jsonl:1: field 'text' is int, not a string"),
        (b'["a list"]\n', r"bad.jsonl:1: a JSON list, not an object"),
    ],
    ids=["not-json", "no-field", "not-string", "not-object"],
)
def test_bad_jsonl_lines_are_named_by_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_bytes(content)
    with pytest.raises(UserError, match=message):
        prepare([str(tmp_path / "bad.jsonl")], tmp_path / "out", **QUIET)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not any(p.name.endswith(".bin") for p in (tmp_path / "out").iterdir())


def test_jsonl_field_option(tmp_path, encoding):
    (tmp_path / "r.jsonl").write_text('{"body": "alpha"}\n{"body": "beta"}\n')
    prepare([str(tmp_path / "r.jsonl")], tmp_path / "out", jsonl_field="body", val_fraction=0, **QUIET)
    assert [encoding.decode(d) for d in split_documents(tmp_path / "out", "train")] == ["alpha", "beta"]


def test_bad_paths_and_empty_corpora(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "zero.txt").write_bytes(b"")
    (tmp_path / "blank" / "none.jsonl").write_text('{"text": ""}\n')
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.dat").write_bytes(bytes(64))
    (tmp_path / "t.txt").write_text("text")
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(b"text")[:-8])
    cases = [
        ([tmp_path / "missing.txt"], tmp_path / "o", r"input .*missing.txt does not exist"),
        ([tmp_path / "*.nothing"], tmp_path / "o", r"no file matches the input glob"),
        ([tmp_path / "empty"], tmp_path / "o", r"hold no files"),
        ([tmp_path / "blank"], tmp_path / "o", r"hold no documents: 2 files, 0 of them binary .*2 empty documents"),
        ([tmp_path / "bin"], tmp_path / "o", r"hold no documents: 1 files, 1 of them binary"),
        ([tmp_path / "t.txt"], tmp_path / "t.txt", r"--out .*t.txt is a file"),
        ([tmp_path / "t.txt"], tmp_path / "t.txt" / "sub", r"a part of that path is a file"),
        ([tmp_path / "t.txt.gz"], tmp_path / "o", r"t.txt.gz holds corrupt or truncated gzip data"),
    ]
    for inputs, out, message in cases:
        with pytest.raises(UserError, match=message):
            prepare([str(p) for p in inputs], out, **QUIET)
    assert not (tmp_path / "o" / "manifest.json").exists()
    for bad in ({"val_fraction": 1.0}, {"shard_tokens": 0}, {"workers": 0}):
        with pytest.raises(UserError):
            prepare([str(tmp_path / "t.txt")], tmp_path / "o", **{**QUIET, **bad})


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path):
    result = run_cli("--input", tmp_path / "nope", "--out", tmp_path / "o")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("python -m data_prep: error: input ") and result.stderr.count("\n") == 1


def test_refuses_an_encoding_too_large_for_uint16(encoding):
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)} | {f"<t{i}>".encode(): 256 + i for i in range(70_000)}
    big = tiktoken.Encoding("big_vocab", pat_str=encoding._pat_str, mergeable_ranks=ranks, special_tokens={})
    with pytest.raises(UserError, match=r"70,256 tokens, more than the 65,536 that fit in the shards' uint16"):
        check_fits_uint16(big)
    check_fits_uint16(encoding)


def test_default_corpus_exists_offline():
    corpus = default_corpus()
    assert corpus and all(Path(p).exists() for p in corpus)


def test_ctrl_c_stops_cleanly_with_one_line(tmp_path, python_corpus):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep", "--input", str(python_corpus(**BIG_CORPUS)), "--out", str(out),
         "--workers", "2", "--val-fraction", "0.1", "--shard-tokens", "40000"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while not (out / "train_000000.bin").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    # At once: on an idle machine the whole corpus takes well under a second, and a signal that
    # lands during interpreter shutdown tests nothing. The workers are mid-batch now.
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the whole foreground group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr == "python -m data_prep: interrupted\n"
    assert not (out / "manifest.json").exists() and not list(out.glob(".*.tmp"))


def test_a_dead_worker_is_a_one_line_error(tmp_path, python_corpus):
    import psutil

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep", "--input", str(python_corpus(**BIG_CORPUS)), "--out", str(out),
         "--workers", "2"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    main = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers = []
    while not workers and proc.poll() is None and time.monotonic() < deadline:
        # The workers are the forkserver's children, so the main process's grandchildren.
        workers = [p for p in main.children(recursive=True) if p.ppid() != main.pid]
        time.sleep(0.01)
    assert workers, "no worker process appeared"
    workers[0].kill()  # as the kernel's out-of-memory killer would
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stderr.startswith("python -m data_prep: error: a worker process died") and stderr.count("\n") == 1
    assert not (out / "manifest.json").exists()


def test_two_preparations_into_one_folder_the_second_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("some text " * 100)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gpt_ds.lock import FolderLock; "
                               "lock = FolderLock(sys.argv[1], 'data_prep run').acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("--input", tmp_path / "a.txt", "--out", out)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"in use by another data_prep run (pid {holder.pid} on" in result.stderr
        assert not (out / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_cli("--input", tmp_path / "a.txt", "--out", out).returncode == 0


def test_a_corrupt_manifest_is_named_with_the_way_out(tmp_path):
    (tmp_path / "a.txt").write_text("some text " * 100)
    out = tmp_path / "out"
    prepare([str(tmp_path / "a.txt")], out, **QUIET)
    (out / "manifest.json").write_text("{ damaged")
    result = run_cli("--input", tmp_path / "a.txt", "--out", out)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "manifest.json is unreadable" in result.stderr and "--force" in result.stderr
    assert run_cli("--input", tmp_path / "a.txt", "--out", out, "--force").returncode == 0


def test_changed_shard_bytes_are_found_by_the_rerun_and_by_verify(tmp_path):
    (tmp_path / "a.txt").write_text("some text, " * 3000)
    (tmp_path / "b.txt").write_text("other words. " * 3000)
    out = tmp_path / "out"
    prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], out, **QUIET)
    good = run_cli("--verify", out)
    assert good.returncode == 0 and "sizes and sha256 as recorded" in good.stdout
    shard = out / "train_000000.bin"
    data = bytearray(shard.read_bytes())
    data[2000:2004] = b"\xff\xff\xff\xff"  # same size, other tokens (65535: past the vocabulary)
    shard.write_bytes(bytes(data))
    bad = run_cli("--verify", out)
    assert bad.returncode == 2 and "train_000000.bin does not have the sha256" in bad.stderr
    assert bad.stderr.count("\n") == 1
    rerun = run_cli("--input", tmp_path / "a.txt", tmp_path / "b.txt", "--out", out)
    assert rerun.returncode == 0 and "preparing it again" in rerun.stdout and "up to date" not in rerun.stdout
    assert run_cli("--verify", out).returncode == 0
    assert run_cli("--verify", tmp_path / "nothing").returncode == 2
    # the same damage with the manifest's sha256 re-recorded: --verify still reads every token
    shard.write_bytes(bytes(data))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    rehashed = run_cli("--verify", out)
    assert rehashed.returncode == 2 and "holds token id 65535" in rehashed.stderr, rehashed.stderr


def test_a_full_disk_is_one_line_and_leaves_nothing_that_looks_complete(small_disk, python_corpus, tmp_path):
    out = small_disk(0.25) / "data"  # 256 kB: the ~400 kB corpus's shards do not fit
    proc = subprocess.run([sys.executable, "-m", "data_prep", "--input", str(python_corpus(400_000)), "--out", str(out),
                           "--workers", "1", "--quiet"], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no space left on the device preparing" in errors[0] and str(out) in errors[0]
    assert not (out / "manifest.json").exists()
    with pytest.raises(ShardError):
        open_split(out, "train")
