"""gpt_ds.errors under several ranks: launch/train.py through the deepspeed launcher on 2 real ranks, where a bad
flag (argparse's own error) and a bad DeepSpeed config value each print one `error:` line (rank 0's) and exit
non-zero, and a key that DeepSpeed ignores is one warning line; and `first_line`, which quotes another library's
error in such a line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpt_ds.config_variant import ZERO2, write_variant
from gpt_ds.distributed import launcher_command

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "launch" / "train.py")
RUN_TIMEOUT = 240


def two_ranks(tmp_path: Path, ds_config: Path, *flags: str) -> tuple[int, str]:
    """launch/train.py on 2 ranks (run in tmp_path, so nothing lands in the repository): exit code, output."""
    args = ["--deepspeed_config", str(ds_config), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
            *flags]
    proc = subprocess.run(launcher_command(2, TRAIN, args), cwd=tmp_path, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    return proc.returncode, proc.stdout + proc.stderr


def lines_with(output: str, words: str) -> list[str]:
    return [line for line in output.splitlines() if words in line]


@pytest.mark.slow
def test_a_bad_flag_value_is_one_error_line_under_two_ranks(tmp_path):
    code, output = two_ranks(tmp_path, ZERO2, "--max-steps", "x")
    assert code != 0, output[-3000:]
    assert lines_with(output, "error:") == [
        "launch/train.py: error: argument --max-steps: invalid int value: 'x' (see launch/train.py --help)"], output
    assert "usage:" not in output and "Traceback" not in output


@pytest.mark.slow
def test_a_bad_config_value_is_one_error_line_and_an_ignored_key_one_warning_under_two_ranks(tmp_path):
    path = write_variant(tmp_path / "ds.json", edit=lambda config: config["optimizer"]["params"].update(lr="fast"),
                         wall_clock_breakdwn=False)
    code, output = two_ranks(tmp_path, path)
    assert code != 0, output[-3000:]
    assert lines_with(output, "error:") == [
        f"launch/train.py: error: DeepSpeed config {path}: optimizer.params.lr must be a number >= 0 (got 'fast')"], \
        output
    assert lines_with(output, "warning: DeepSpeed config") == [
        f"launch/train.py: warning: DeepSpeed config {path}: unknown key wall_clock_breakdwn (did you mean "
        "wall_clock_breakdown?); DeepSpeed ignores it (--strict-config makes this an error)"], output
    assert "Traceback" not in output and not (tmp_path / "run").exists()


def test_first_line_quotes_one_line_and_never_fails_on_an_empty_message():
    """The first non-blank line of a library's error, cut to the limit; an empty message is named, not an IndexError."""
    from gpt_ds.errors import first_line

    assert first_line(RuntimeError("\n  write failed: disk\nat frame 3\n")) == "write failed: disk"
    assert first_line(RuntimeError("x" * 500), limit=160) == "x" * 160
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(AssertionError(), empty="no message") == "no message"
    assert first_line("plain text\nmore") == "plain text" and first_line("") == ""
