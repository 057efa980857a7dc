"""bench/eval.py: lm-eval through the gpt-ds backend against lm-eval's hf backend on the same weights and task.

The run is the smallest there is (the tiny preset, a few questions, one round): the bench must build its task and
model, run both backends, print the ratio and find their scores identical. The figures themselves are not
asserted (timings depend on the machine). Bad flags are one line and exit 2, before any work.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.eval import main, report
from gpt_ds.model import GPT, config_from_preset
from gpt_ds.model_io import save_model

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "eval.py"



def refused(capsys, *args: str) -> str:
    """bench/eval.py's main on `args`, which must exit 2 having printed one line on stderr and nothing else:
    that line."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    [line] = err.splitlines()
    return line


def test_the_bench_runs_both_backends_prints_the_ratio_and_finds_the_scores_identical(tmp_path, encoding):
    temp = tmp_path / "temp"
    temp.mkdir()
    proc = subprocess.run([sys.executable, str(BENCH), "--preset", "tiny", "--examples", "4", "--rounds", "1",
                           "--batch-size", "8"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "TMPDIR": str(temp)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(re.fullmatch(r"gpt-ds / hf examples/s: \d+\.\d\dx \(loglikelihood alone \d+\.\d\dx; target >= 1\.5x\)",
                            line) for line in lines), proc.stdout
    identical = [line for line in lines if line.startswith("scores identical: ")]
    assert len(identical) == 1, proc.stdout
    # Both sides' acc and acc_norm are printed, and they are the same numbers.
    gpt_ds_part, hf_part = identical[0].removeprefix("scores identical: ").split(", ")
    assert gpt_ds_part.startswith("gpt-ds acc ") and hf_part.startswith("hf acc ")
    assert gpt_ds_part.removeprefix("gpt-ds ") == hf_part.removeprefix("hf ")
    assert "%|" not in proc.stderr  # lm-eval's progress bars are kept out of the output
    assert list(tmp_path.iterdir()) == [temp]  # it writes nothing where it runs,
    assert not list(temp.glob("gpt-ds-bench-eval-*"))  # and what it built went with its temporary folder


@pytest.mark.parametrize("args, message", [
    (["--examples", "0"], "--examples must be from 1 to 10,000, not 0"),
    (["--examples", "10001"], "--examples must be from 1 to 10,000, not 10001"),
    (["--rounds", "0"], "--rounds must be at least 1, not 0"),
    (["--batch-size", "-1"], "--batch-size must be at least 1, not -1"),
    (["--threads", "0"], "--threads must be at least 1, not 0"),
])
def test_a_bad_number_is_one_line_naming_the_flag_and_exit_2(capsys, args, message):
    assert refused(capsys, *args) == f"bench/eval.py: error: {message}"


def test_a_model_folder_that_is_missing_or_does_not_export_to_gpt2_is_one_line_and_exit_2(tmp_path, capsys):
    config = config_from_preset("modern-tiny")
    model_dir = save_model(tmp_path / "modern", GPT(config), config)
    assert refused(capsys, "--model-dir", str(model_dir)).startswith(
        f"bench/eval.py: error: {model_dir} is not a GPT-2 architecture")
    assert str(tmp_path / "nowhere") in refused(capsys, "--model-dir", str(tmp_path / "nowhere"))
    assert "not allowed with argument" in refused(capsys, "--model-dir", str(model_dir), "--preset", "tiny")


def test_scores_that_differ_between_the_backends_are_said_and_exit_1(capsys):
    times = {"gpt-ds": [1.0], "hf": [2.0]}
    assert report(4, times, times, {"gpt-ds": [(0.25, 0.5)], "hf": [(0.25, 0.75)]}) == 1
    out = capsys.readouterr().out
    assert "scores differ (acc, acc_norm of each round): gpt-ds: [(0.25, 0.5)]; hf: [(0.25, 0.75)]" in out and "scores identical" not in out
    # A side that scores differently from one run to the next is a difference too.
    assert report(4, {"gpt-ds": [1.0, 1.0], "hf": [2.0, 2.0]}, {"gpt-ds": [1.0, 1.0], "hf": [2.0, 2.0]},
                  {"gpt-ds": [(0.25, 0.5), (0.5, 0.5)], "hf": [(0.25, 0.5), (0.25, 0.5)]}) == 1
