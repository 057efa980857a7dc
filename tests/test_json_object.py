"""gpt_ds.json_object: a JSON object from a file, or one line naming the file and the fix."""

from __future__ import annotations

import pytest

from gpt_ds import json_object
from gpt_ds.data import ShardError
from gpt_ds.errors import UserError


def test_an_object_is_read_and_anything_else_is_one_line_with_the_fix(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"step": 3}')
    assert json_object.read(path, fix="pick another") == {"step": 3}

    path.write_text("{not json")
    with pytest.raises(UserError) as err:
        json_object.read(path, fix="pick another")
    assert str(err.value).startswith(f"{path} is not valid JSON (") and str(err.value).endswith("); pick another")
    assert "\n" not in str(err.value)

    path.write_text("[1, 2]")
    with pytest.raises(UserError, match=r"state.json is not a client state \(a JSON list, not an object\); pick another$"):
        json_object.read(path, fix="pick another", kind="a client state")

    path.write_bytes(b'{"text": "\xff\xfe"}')  # not UTF-8
    with pytest.raises(ShardError, match=r"state.json is corrupt \(.*codec.*\); re-prepare$"):
        json_object.read(path, fix="re-prepare", invalid="is corrupt", error=ShardError)

    with pytest.raises(FileNotFoundError):  # the caller names a missing file in its own words
        json_object.read(tmp_path / "absent.json", fix="x")


def test_parse_names_its_source_and_the_lenient_readers_give_none(tmp_path):
    with pytest.raises(UserError, match=r"^w.safetensors: its header is unreadable \(.*\); re-export$"):
        json_object.parse("{", "w.safetensors: its header", fix="re-export", invalid="is unreadable")
    assert json_object.parse_or_none('{"pid": 1}') == {"pid": 1}
    assert json_object.parse_or_none("") is None and json_object.parse_or_none('"text"') is None
    path = tmp_path / "cache.json"
    assert json_object.read_or_none(path) is None  # missing
    path.write_text("[]")
    assert json_object.read_or_none(path) is None  # not an object
    path.write_bytes(b"\xff")
    assert json_object.read_or_none(path) is None  # not UTF-8
    path.write_text('{"a": 1}')
    assert json_object.read_or_none(path) == {"a": 1}
