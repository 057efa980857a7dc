"""The reliability sweep's entry point parses its options, and its cases build, without running the sweep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def reliability(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reliability", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_help_shows_the_command_and_its_options():
    proc = reliability("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m reliability")
    for flag in ("--out", "--kill-trials", "--only", "--match", "--jobs", "--seed", "--keep"):
        assert flag in proc.stdout


def test_an_unknown_group_is_one_error_line_before_any_work(tmp_path):
    proc = reliability("--only", "train,bogus", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error:" in line] == [
        "python -m reliability: error: --only: unknown group(s) bogus; choose from train, dsconfig, data, resume, "
        "data_prep, export, sample, eval, hf, quickstart, submit, kill-train, kill-prep"]
    assert not (tmp_path / "out").exists()


COUNT_CASES = """
from reliability.cases import GROUPS
counts = {}
for group, make in GROUPS.items():
    cases = make()
    assert {case.group for case in cases} == {group}, group
    assert len({case.name for case in cases}) == len(cases), f"{group}: two cases of one name"
    counts[group] = len(cases)
print(sum(counts.values()))
"""


def test_every_group_builds_its_cases_with_unique_names():
    # in the checkout, as `python -m reliability` runs (the package is not installed)
    proc = subprocess.run([sys.executable, "-c", COUNT_CASES], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["366"]  # the "bad inputs tried" the docs give (321, and 45 of the eval group)
