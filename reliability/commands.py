"""The sweep's constants and how it runs a command: in its own process group, with the sweep's
environment (passed in, never global), killed with its children at the end or at a timeout.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_ds.config_variant import SHIPPED
from gpt_ds.lock import LOCK_NAME
from gpt_ds.tokenizer import tiktoken_cache_dir

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TRAIN = str(REPO / "launch" / "train.py")
SAMPLE = str(REPO / "launch" / "sample.py")
EVAL = str(REPO / "launch" / "eval.py")
QUICKSTART = str(REPO / "launch" / "quickstart.py")
SUBMIT = str(REPO / "launch" / "submit.py")
ZERO2_FP16 = SHIPPED / "zero2_fp16.json"

# The model of every training here: 1 layer, 32 wide, 2 heads, 32 positions.
TINY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32"]
# The fixture run: 4 steps, checkpoints at 2 and 4.
FIXTURE_TRAIN = [*TINY, "--max-steps", "4", "--save-interval", "2", "--eval-interval", "2", "--eval-tokens", "256",
                 "--sample-tokens", "0", "--log-interval", "1"]
# A bad-flag case: 2 steps, so that a bad value accepted ends quickly (exit 0: silently wrong).
QUICK_TRAIN = [*FIXTURE_TRAIN, "--max-steps", "2"]
# Continue the fixture run past its end, so that the checkpoint is really read.
RESUME_TRAIN = [*FIXTURE_TRAIN, "--max-steps", "6"]

TIMEOUT_S = 120.0  # a case that has not exited by then hangs (the slowest normal case takes ~45 s)
TRACEBACK = "Traceback (most recent call last)"
IGNORED_NAMES = (LOCK_NAME, "__pycache__")  # lock files may appear in any folder a command opens



@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def command_env(root: Path) -> dict[str, str]:
    """The environment of every command the sweep runs (its caches under `root`)."""
    env = dict(os.environ)
    cache = tiktoken_cache_dir()
    if cache is not None:
        env["TIKTOKEN_CACHE_DIR"] = cache
    env["GPT_DS_CACHE_DIR"] = str(root / "cache")  # the CPU's measured peak: measured once, kept here
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONFAULTHANDLER"] = "1"  # a hung command, sent SIGABRT at its timeout, shows its stacks
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this benchmark started `proc` in (its children included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def dump_stacks(proc: subprocess.Popen) -> None:
    """SIGABRT the group of a hung command: faulthandler (PYTHONFAULTHANDLER) prints where each process was."""
    try:
        os.killpg(proc.pid, signal.SIGABRT)
        proc.wait(timeout=5)
    except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
        pass


def start(argv: list[str], cwd: Path, env: dict[str, str], **streams: Any) -> subprocess.Popen:
    """Start `argv` in its own process group (kill_group ends it with its children), output discarded
    unless `streams` says otherwise."""
    return subprocess.Popen(argv, cwd=cwd, env=env, **{"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                                                       **streams}, start_new_session=True)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = TIMEOUT_S) -> Result:
    """Run `argv` in its own process group; on a timeout kill the whole group."""
    start_s = time.monotonic()
    proc = start(argv, cwd, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True, errors="replace")
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        dump_stacks(proc)
        kill_group(proc)
        stdout, stderr = proc.communicate()
    finally:
        kill_group(proc)  # whatever it left behind (ranks, workers)
    return Result(proc.returncode, stdout, stderr, time.monotonic() - start_s, timed_out)


def run_ok(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> Result:
    result = run(argv, cwd, env, timeout)
    if result.rc != 0:
        raise SystemExit(f"fixture command failed ({result.rc}): {shlex.join(argv)}\n{result.output[-3000:]}")
    return result
