"""Tests of app/discovery.py: the page's arguments, where it looks for models, and folder checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from app_fixtures import make_run

from discovery import default_run_roots, discover_model_folders, display_name, files_fingerprint, parse_app_args, resolve_model_folder
from gpt_ds.errors import UserError


def test_parse_app_args_takes_model_and_ignores_others(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert parse_app_args(["--model", "~/m", "--other", "x"]).model == Path("~/m").expanduser()
    assert parse_app_args([]).model is None
    # Only runs/ below the working directory is searched by default, never the repository's own.
    assert parse_app_args([]).runs == tuple(default_run_roots()) == (tmp_path / "runs",)
    assert parse_app_args(["--runs", "a", "--runs", "b"]).runs == (Path("a"), Path("b"))


def test_discover_finds_model_folders_newest_first(tmp_path):
    older = make_run(tmp_path / "runs" / "group" / "older", with_tb=False)
    newer = make_run(tmp_path / "runs" / "newer", with_tb=False)
    os.utime(older / "model.safetensors", (1, 1))
    (tmp_path / "runs" / "not-a-model").mkdir()
    (tmp_path / "runs" / "half").mkdir()
    (tmp_path / "runs" / "half" / "config.json").write_text("{}")  # no weights: not offered
    too_deep = tmp_path / "runs" / "a" / "b" / "c" / "d" / "e"
    make_run(too_deep, with_tb=False)

    found = discover_model_folders([tmp_path / "runs", tmp_path / "missing"])
    assert found == [newer.resolve(), older.resolve()]


def test_resolve_model_folder_explains_bad_paths(tmp_path):
    with pytest.raises(UserError, match="no model folder given"):
        resolve_model_folder("  ")
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_folder(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        resolve_model_folder(tmp_path / "file")


def test_display_name_and_fingerprint(monkeypatch, tmp_path):
    model = make_run(tmp_path / "runs" / "demo", with_tb=False)
    monkeypatch.chdir(tmp_path)
    assert display_name(model) == "runs/demo/model"
    assert display_name(Path("/elsewhere/model")) == "/elsewhere/model"
    before = files_fingerprint(model)
    assert [Path(entry[0]).name for entry in before] == ["config.json", "model.safetensors"]
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    assert files_fingerprint(model) != before
