"""gpt_ds.data: the llm.c shard format read back, and every way a shard or folder can be wrong."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from gpt_ds import data
from gpt_ds.data import HEADER_BYTES, MAGIC, ShardError, load_manifest, open_split, read_shard, write_shard
from gpt_ds.errors import UserError


def llmc_write(path, tokens, magic=20240520, version=1, count=None):
    """An independent writer in the layout of llm.c's dev/data/data_common.py::write_datafile."""
    header = [0] * 256
    header[0], header[1], header[2] = magic, version, len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack(f"<{len(tokens)}H", *tokens))


def test_reads_a_shard_written_by_an_independent_llmc_writer(tmp_path):
    tokens = [50256, 0, 1, 65535, 464, 2068, 7586, 50256, 12]
    llmc_write(tmp_path / "fineweb_train_000001.bin", tokens)
    shard = read_shard(tmp_path / "fineweb_train_000001.bin")
    assert isinstance(shard, np.memmap) and shard.dtype == np.dtype("<u2")
    assert shard.tolist() == tokens
    assert not shard.flags.writeable  # memory-mapped read-only, not copied


def test_write_shard_header_byte_by_byte(tmp_path):
    path = write_shard(tmp_path / "s.bin", np.array([1, 258, 50256], dtype=np.int64))
    raw = path.read_bytes()
    assert len(raw) == 1024 + 3 * 2
    assert raw[0:4] == bytes([0x88, 0xD8, 0x34, 0x01])  # 20240520 = 0x0134D888, little-endian
    assert raw[4:8] == bytes([1, 0, 0, 0])
    assert raw[8:12] == bytes([3, 0, 0, 0])
    assert raw[12:1024] == bytes(1012)
    assert raw[1024:] == bytes([1, 0, 2, 1, 0x50, 0xC4])  # 1, 258, 50256 as little-endian uint16
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]  # no temp file left behind


def test_write_shard_refuses_ids_beyond_uint16(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_shard(tmp_path / "s.bin", np.array([70000]))
    assert not (tmp_path / "s.bin").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:500]), "truncated or not a shard"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), "longer than its header says"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000)), "not a token shard: magic number"),
        (lambda p: llmc_write(p, [1, 2], version=2), "version 2"),
        (lambda p: llmc_write(p, [], count=0), "empty"),
        (lambda p: p.unlink(), "does not exist"),
    ],
    ids=["one-byte-short", "shorter-than-header", "trailing-bytes", "foreign", "version2", "no-tokens", "missing"],
)
def test_reader_errors_name_the_file(tmp_path, damage, message):
    path = tmp_path / "train_000000.bin"
    llmc_write(path, [5, 6, 7])
    damage(path)
    with pytest.raises(ShardError, match=message) as err:
        read_shard(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, UserError)


def make_folder(tmp_path, splits):
    """A prepared folder by hand: shards plus a manifest listing them."""
    manifest = {"dtype": "uint16", "splits": {}}
    for split, shards in splits.items():
        entries = []
        for i, tokens in enumerate(shards):
            name = f"{split}_{i:06d}.bin"
            write_shard(tmp_path / name, np.array(tokens, dtype=np.uint16))
            entries.append({"name": name, "tokens": len(tokens), "sha256": ""})
        manifest["splits"][split] = {"shards": entries, "tokens": sum(len(t) for t in shards), "documents": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_open_split_returns_the_shards_in_manifest_order(tmp_path):
    make_folder(tmp_path, {"train": [[50256, 1, 2], [3, 4]], "val": [[50256, 9]]})
    assert [s.tolist() for s in open_split(tmp_path, "train")] == [[50256, 1, 2], [3, 4]]
    assert [s.tolist() for s in open_split(tmp_path, "val")] == [[50256, 9]]


def test_open_split_checks_counts_against_the_manifest(tmp_path):
    manifest = make_folder(tmp_path, {"train": [[50256, 1, 2]]})
    manifest["splits"]["train"]["shards"][0]["tokens"] = 4
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="holds 3 tokens but manifest.json says 4") as err:
        open_split(tmp_path, "train")
    assert "train_000000.bin" in str(err.value)


def test_open_split_names_a_missing_split_and_a_missing_shard(tmp_path):
    make_folder(tmp_path, {"train": [[50256, 1]], "val": []})
    with pytest.raises(ShardError, match="no 'val' split .*--val-fraction"):
        open_split(tmp_path, "val")
    (tmp_path / "train_000000.bin").unlink()
    with pytest.raises(ShardError, match="train_000000.bin does not exist"):
        open_split(tmp_path, "train")


def test_folder_problems_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(ShardError, match=r"does not exist; prepare one with: python -m data_prep"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShardError, match="is a file, not a folder"):
        load_manifest(tmp_path / "file")
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(ShardError, match="has no manifest.json"):
        open_split(folder, "train")
    (folder / data.IN_PROGRESS_NAME).write_text("{}")
    llmc_write(folder / "train_000000.bin", [1, 2])
    with pytest.raises(ShardError, match="unfinished preparation .*rerun"):
        open_split(folder, "train")  # an interrupted preparation's shards are never trained on
    (folder / data.IN_PROGRESS_NAME).unlink()
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        load_manifest(folder)


def test_llmc_folder_without_manifest_opens_by_name(tmp_path):
    llmc_write(tmp_path / "fineweb_val_000000.bin", [50256, 7])
    llmc_write(tmp_path / "fineweb_train_000002.bin", [50256, 3])
    llmc_write(tmp_path / "fineweb_train_000001.bin", [50256, 1, 2])
    assert [s.tolist() for s in open_split(tmp_path, "train")] == [[50256, 1, 2], [50256, 3]]
    assert [s.tolist() for s in open_split(tmp_path, "val")] == [[50256, 7]]


def test_constants_match_llmc():
    assert (MAGIC, data.VERSION, HEADER_BYTES) == (20240520, 1, 1024)


def test_a_loss_mask_round_trips_and_a_bad_one_is_one_clear_error(tmp_path):
    from gpt_ds.data import (HEADER_BYTES, MASK_MAGIC, ShardError, mask_name, read_mask, shard_header, write_mask,
                             write_shard)

    assert mask_name("train_000003.bin") == "train_000003.mask"
    mask = np.array([0, 1, 1, 0, 1], dtype=np.uint8)
    path = write_mask(tmp_path / "train_000000.mask", mask)
    assert path.stat().st_size == HEADER_BYTES + 5
    np.testing.assert_array_equal(read_mask(path, 5), mask)
    with pytest.raises(ShardError, match="holds 5 bytes, its header says 5 and its shard 6 tokens"):
        read_mask(path, 6)
    with pytest.raises(ShardError, match="does not exist"):
        read_mask(tmp_path / "val_000000.mask", 5)
    shard = write_shard(tmp_path / "train_000001.bin", np.arange(5))  # a token shard is not a mask
    with pytest.raises(ShardError, match="is not a loss mask of this format"):
        read_mask(shard, 5)
    (tmp_path / "cut.mask").write_bytes(shard_header(5, MASK_MAGIC) + b"\x01\x00")
    with pytest.raises(ShardError, match="holds 2 bytes, its header says 5"):
        read_mask(tmp_path / "cut.mask", 5)
    with pytest.raises(ValueError):
        write_mask(tmp_path / "two.mask", np.array([0, 2]))
