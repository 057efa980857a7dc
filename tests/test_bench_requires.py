"""A bench whose optional package is missing says so in one line, naming the extra, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run a bench as `python bench/X.py` would, with `module` unimportable (None in sys.modules).
BLOCKED = "import runpy, sys; sys.modules[{module!r}] = None; sys.argv = {argv!r}; runpy.run_path(sys.argv[0], " \
          "run_name='__main__')"


@pytest.mark.parametrize("bench, module, extra", [
    ("convergence.py", "matplotlib", "bench"),
    ("generate.py", "transformers", "dev"),
    ("gpu_check.py", "transformers", "dev"),
    ("eval.py", "lm_eval", "eval"),
])
def test_a_bench_without_its_optional_package_names_the_extra_before_any_work(tmp_path, bench, module, extra):
    argv = [str(REPO / "bench" / bench)] + (["--out", str(tmp_path / "out")] if bench not in ("generate.py", "eval.py") else [])
    proc = subprocess.run([sys.executable, "-c", BLOCKED.format(module=module, argv=argv)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: bench/{bench} needs {module}, which is not installed: "
                                        f"pip install -e \".[{extra}]\""]
    assert proc.stdout == "" and not (tmp_path / "out").exists()
