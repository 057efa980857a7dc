"""gpt_ds.atomic: a file is the old content or the new, never a part, and no temp file is left."""

from __future__ import annotations

import os

import pytest

from gpt_ds import atomic


def test_write_text_replaces_the_whole_content(tmp_path):
    path = tmp_path / "latest"
    atomic.write_text(path, "step_00000001")
    atomic.write_text(path, "step_00000002")
    assert path.read_text() == "step_00000002" and [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "manifest.json"
    atomic.write_text(path, "old")
    with pytest.raises(TypeError):
        atomic.write_bytes(path, b"half", None)  # fails mid-write, after part of the temp file was written
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_temp_path_is_hidden_beside_the_file_and_per_process(tmp_path):
    tmp = atomic.temp_path(tmp_path / "train_000000.bin")
    assert tmp.parent == tmp_path and tmp.name.startswith(".train_000000.bin.")
    assert tmp.name.endswith(f".{os.getpid()}.tmp")
