"""data_prep on tables: parquet files and Hugging Face save_to_disk folders, one row a document.
Round trip, worker-count determinism, --text-field, nulls, interruption, and every bad table in one line."""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import prepare
from gpt_ds.errors import UserError
from gpt_ds.lock import LOCK_NAME
from test_data_prep import QUIET, all_bytes, kill_after_the_first_shard, run_cli, split_documents

ROWS = ["first row", "", None, "naïve café — 東京 🚀\n<|endoftext|> is text here", "line one\r\nline two  \r\n", "x"]


def play_rows(python_corpus, count: int = 60) -> list[str]:
    """`count` rows of stdlib source, of varied lengths (some over the 1 MiB reading batch together)."""
    text = next(python_corpus(400_000, files=1).iterdir()).read_text(encoding="utf-8")
    step = len(text) // count
    return [text[i * step : i * step + 500 + (i * 977) % step] for i in range(count)]


def shards(folder):
    return {name: data for name, data in all_bytes(folder).items() if name.endswith(".bin")}


def write_parquet(path, rows, row_group_size=None, **columns):
    pq.write_table(pa.table({"id": list(range(len(rows))), "text": rows, **columns}), path, row_group_size=row_group_size)
    return path


def test_parquet_round_trip_rows_are_documents_and_nulls_are_skipped(tmp_path, encoding):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_parquet(corpus / "a.parquet", ROWS, row_group_size=2)
    (corpus / "b.txt").write_text("a text file between the tables")
    write_parquet(corpus / "c.parquet", ROWS[::-1])
    manifest = prepare([str(corpus)], tmp_path / "out", val_fraction=0, shard_tokens=20, **QUIET)
    docs = [r for r in ROWS if r]
    expected = [*docs, "a text file between the tables", *docs[::-1]]
    assert [encoding.decode(d) for d in split_documents(tmp_path / "out", "train")] == expected
    assert split_documents(tmp_path / "out", "train") == [encoding.encode_ordinary(d) for d in expected]
    assert manifest["skipped"] == {"binary_files": 0, "empty_documents": 4}  # an empty string and a null per table
    assert manifest["inputs"]["files"] == 3 and manifest["settings"]["text_field"] == "text"


def test_parquet_output_is_the_same_bytes_for_any_worker_count(tmp_path, python_corpus, encoding):
    rows = play_rows(python_corpus)
    corpus = write_parquet(tmp_path / "plays.parquet", rows, row_group_size=7)
    options = dict(val_fraction=0.2, shard_tokens=3_000)
    one = prepare([str(corpus)], tmp_path / "one", **options, **QUIET)
    two = prepare([str(corpus)], tmp_path / "two", **options, workers=2, verbose=False)
    assert one == two and all_bytes(tmp_path / "one") == all_bytes(tmp_path / "two")
    assert len(one["splits"]["train"]["shards"]) > 3 and one["splits"]["val"]["documents"] > 0
    got = split_documents(tmp_path / "one", "train") + split_documents(tmp_path / "one", "val")
    assert sorted(map(tuple, got)) == sorted(tuple(encoding.encode_ordinary(r)) for r in rows)
    # The text that reaches the tokenizer is read in bounded batches whatever the row groups are.
    assert prepare([str(corpus)], tmp_path / "one", **options, **QUIET) == one  # and a rerun is up to date


def test_a_save_to_disk_folder_reads_as_the_same_rows(tmp_path, python_corpus):
    datasets = pytest.importorskip("datasets")
    rows = play_rows(python_corpus, count=30) + ["", None]
    write_parquet(tmp_path / "rows.parquet", rows)
    dataset = datasets.Dataset.from_dict({"id": list(range(len(rows))), "text": rows})
    dataset.save_to_disk(str(tmp_path / "saved"), num_shards=3)
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved_dict"))
    options = dict(val_fraction=0.1, shard_tokens=2_000)
    reference = prepare([str(tmp_path / "rows.parquet")], tmp_path / "from_parquet", **options, **QUIET)
    for name in ("saved", "saved_dict"):
        manifest = prepare([str(tmp_path / name)], tmp_path / f"from_{name}", **options, **QUIET)
        assert shards(tmp_path / f"from_{name}") == shards(tmp_path / "from_parquet")
        assert manifest["splits"] == reference["splits"] and manifest["skipped"]["empty_documents"] == 2
    # The arrow files only: state.json, dataset_info.json and dataset_dict.json are bookkeeping, not text.
    assert prepare([str(tmp_path / "saved")], tmp_path / "from_saved", **options, **QUIET)["inputs"]["files"] == 3


def test_an_arrow_ipc_file_is_read_too(tmp_path):
    table = pa.table({"text": ["one", "two"]})
    with pa.ipc.new_file(str(tmp_path / "t.arrow"), table.schema) as writer:
        writer.write_table(table)
    manifest = prepare([str(tmp_path / "t.arrow")], tmp_path / "out", val_fraction=0, **QUIET)
    assert manifest["total_documents"] == 2


def test_text_field_and_its_old_name_jsonl_field(tmp_path, encoding):
    write_parquet(tmp_path / "t.parquet", ["ignored", "also ignored"], body=["alpha", "beta"])
    (tmp_path / "r.jsonl").write_text('{"body": "gamma"}\n')
    for flag in ("--text-field", "--jsonl-field"):
        out = tmp_path / flag
        result = run_cli("--input", tmp_path / "t.parquet", tmp_path / "r.jsonl", "--out", out, flag, "body",
                         "--val-fraction", "0", "--workers", "1", "--quiet")
        assert result.returncode == 0, result.stderr
        assert [encoding.decode(d) for d in split_documents(out, "train")] == ["gamma", "alpha", "beta"]  # sorted paths: r.jsonl first
    # A folder prepared before the flag's rename (its settings say jsonl_field) is still up to date.
    manifest_path = tmp_path / "--text-field" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["settings"]["jsonl_field"] = manifest["settings"].pop("text_field")
    manifest_path.write_text(json.dumps(manifest))
    result = run_cli("--input", tmp_path / "t.parquet", tmp_path / "r.jsonl", "--out", tmp_path / "--text-field",
                     "--text-field", "body", "--val-fraction", "0", "--workers", "1")
    assert result.returncode == 0 and "up to date" in result.stdout, result.stderr


def test_invalid_utf8_in_a_row_is_replaced_or_named_by_row_when_strict(tmp_path, encoding):
    data, offsets = b"good\xffbad", pa.array([0, 4, 8], type=pa.int32())
    column = pa.StringArray.from_buffers(2, offsets.buffers()[1], pa.py_buffer(data))  # not validated
    pq.write_table(pa.table({"text": column}), tmp_path / "bad.parquet")
    manifest = prepare([str(tmp_path / "bad.parquet")], tmp_path / "out", val_fraction=0, **QUIET)
    assert manifest["replaced"] == {"sequences": 1, "documents": 1}
    assert [encoding.decode(d) for d in split_documents(tmp_path / "out", "train")] == ["good", "\ufffdbad"]
    with pytest.raises(UserError, match=r"bad.parquet \(row 1\): invalid UTF-8"):
        prepare([str(tmp_path / "bad.parquet")], tmp_path / "strict", strict=True, **QUIET)


def bad_tables(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", ["fine"] * 200)
    raw = good.read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.parquet").write_bytes(b"not a parquet file at all" * 40)
    (tmp_path / "garbage.arrow").write_bytes(b"\xff\xff\xff\xff" + b"junk" * 40)
    # A damaged data page behind an intact footer: found only when the rows are read.
    middle = raw.index(b"fine") + 2
    (tmp_path / "damaged.parquet").write_bytes(raw[:middle - 40] + bytes(80) + raw[middle + 40:])
    write_parquet(tmp_path / "numbers.parquet", ["a"], count=[3])
    pq.write_table(pa.table({"text": pa.array([1, 2])}), tmp_path / "ints.parquet")
    return [
        ("good.parquet", {"text_field": "body"}, r"good.parquet has no column 'body' \(columns: id, text\); pass --text-field"),
        ("ints.parquet", {}, r"ints.parquet: column 'text' holds int64, not strings; .*\(this file has none\)"),
        ("numbers.parquet", {"text_field": "count"}, r"column 'count' holds int64, not strings; .*string column \(text\)"),
        ("truncated.parquet", {}, r"truncated.parquet is not a readable parquet file \(.*\); re-download"),
        ("garbage.parquet", {}, r"garbage.parquet is not a readable parquet file"),
        ("garbage.arrow", {}, r"garbage.arrow is not a readable Arrow IPC file"),
        ("damaged.parquet", {}, r"damaged.parquet is not a readable parquet file"),
    ]


def test_bad_tables_are_one_line_naming_the_file_and_nothing_is_written(tmp_path):
    for name, options, message in bad_tables(tmp_path):
        out = tmp_path / f"out_{name}"
        with pytest.raises(UserError, match=message) as raised:
            inputs = [tmp_path / name] if options else [tmp_path / "good.parquet", tmp_path / name]  # a good table first
            prepare([str(p) for p in inputs], out, **{**QUIET, **options})
        assert "\n" not in str(raised.value)
        assert not out.exists() or not any(p.name != LOCK_NAME for p in out.iterdir()), name


def test_a_bad_table_on_the_command_line_exits_2_with_one_line(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 but nothing else")
    result = run_cli("--input", tmp_path / "broken.parquet", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "broken.parquet is not a readable parquet file" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_interrupted_parquet_run_reruns_to_the_same_bytes(tmp_path, python_corpus):
    rows = [p.read_text(encoding="utf-8") for p in sorted(python_corpus(total_bytes=9_000_000, files=80).iterdir())]
    corpus = write_parquet(tmp_path / "rows.parquet", rows, row_group_size=8)
    args = ["--input", corpus, "--shard-tokens", "40000", "--val-fraction", "0.1", "--workers", "1", "--out"]
    command = [sys.executable, "-m", "data_prep", *map(str, args)]
    out = tmp_path / "killed"
    kill_after_the_first_shard([*command, str(out)], out)
    rerun = run_cli(*args, out)
    assert rerun.returncode == 0 and "finishing an interrupted preparation" in rerun.stdout, rerun.stderr
    prepare([str(corpus)], tmp_path / "whole", shard_tokens=40000, val_fraction=0.1, **QUIET)
    assert all_bytes(out) == all_bytes(tmp_path / "whole")
