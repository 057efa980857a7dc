"""Reliability sweep: bad inputs into every command, run as a hostile user would, and kill -9 trials.

    python bench/reliability.py [--out DIR] [--kill-trials N] [--only GROUP[,GROUP...]]
                                [--match TEXT] [--jobs J] [--seed S] [--keep]

What it checks. Every case is a real subprocess of a real command line (launch/train.py, the deepspeed
launcher, `python -m data_prep`, `python -m gpt_ds.export`, `python -m gpt_ds.hf export|import`,
launch/sample.py, launch/quickstart.py, launch/submit.py --dry-run / --cluster local) after a setup that
damages something: bad flag values (nan, inf, negative, 0, strings), missing or wrong paths, a file where
a folder is expected and the reverse, malformed or mistyped or misspelt DeepSpeed configs, corrupt
manifests, truncated / overwritten / foreign shards and shards with out-of-vocabulary tokens, truncated,
altered and pickle-poisoned checkpoint files (their `__reduce__` would create a marker file), a
client_state.json that is not JSON, `latest` pointing nowhere, model folders with a broken config.json,
a changed n_head or truncated safetensors, output folders equal to (inside, above) their inputs, two
concurrent runs into one folder, --resume pointing at odd places. Each outcome is one of

- clear:          a non-zero exit, exactly one line containing "error:" (stdout and stderr together) and
                  no traceback. For the few inputs the README documents as a warning (altered weights, a
                  DeepSpeed key DeepSpeed ignores) exit 0 with exactly one "warning:" line is clear too;
- traceback:      "Traceback (most recent call last)" anywhere in the output;
- silently wrong: exit 0 although the input was bad, or a poisoned pickle's marker file appeared, or a
                  folder that was an input changed (shared fixtures included);
- other:          anything else, with the reason (several error lines, none, a hang past the timeout: then
                  the command's process group gets SIGABRT first, so that faulthandler prints its stacks).
Some cases carry a note for whoever judges them (e.g. the damage included forging a checksum record).

Kill -9 trials (--kill-trials N, default 5; --seed S fixes the moments): a tiny 2-rank training run (the
deepspeed launcher, 16 steps, a checkpoint every 2) is SIGKILLed as a process group at a random moment
between its first and its last checkpoint (timed on the same command run uninterrupted), then the same
command is run again to the end; its model.safetensors must equal, byte for byte, the uninterrupted
run's. Likewise `python -m data_prep` (2 workers) is SIGKILLed at a random moment while it writes shards
and rerun: every file of its output folder must equal those of the uninterrupted preparation. A kill that
lands after the work it should interrupt (the last checkpoint, the manifest) is drawn again, up to 3 times.

Fixtures are built under --out (default: a new temporary folder): a corpus cut from the Python standard
library's sources (data_prep.stdlib_corpus, as the tests), its preparation by data_prep, a 1-layer 32-wide model
trained 4 steps by launch/train.py (checkpoints at steps 2 and 4) and its model folder, that folder
exported to Hugging Face's format, and the quickstart's default corpus prepared as the quickstart does.
Cases damage copies, never the fixtures. The output is a table of every case, the summary line

    bad inputs: N tried, C clear errors, T tracebacks, S silently wrong, O other; kill -9: K/K resumes bit-identical, P/P preparations identical

and DIR/reliability.json with every case's command, outcome, exit code and output excerpt, the kill
trials, and the git commit (and changed files) the sweep ran on. Groups for --only: train, dsconfig, data,
resume, data_prep, export, sample, hf, quickstart, submit, kill-train, kill-prep; --match TEXT keeps the
cases whose "group: name" contains TEXT (to rerun one). --jobs J cases run at once (default 2). Without
--keep the fixtures and case folders are removed at the end. About 12 minutes on 2 CPU cores. Set
TIKTOKEN_CACHE_DIR for offline use (../shared/tiktoken beside the repository is used where present).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import os
import pickle
import random
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data_prep import default_corpus  # noqa: E402
from data_prep.stdlib_corpus import stdlib_text, write_python_corpus  # noqa: E402  (the test suite's corpus)
from gpt_ds.tokenizer import tiktoken_cache_dir  # noqa: E402
PY = sys.executable
TRAIN = str(REPO / "launch" / "train.py")
SAMPLE = str(REPO / "launch" / "sample.py")
QUICKSTART = str(REPO / "launch" / "quickstart.py")
SUBMIT = str(REPO / "launch" / "submit.py")
ZERO2 = REPO / "ds_configs" / "zero2.json"
ZERO2_FP16 = REPO / "ds_configs" / "zero2_fp16.json"

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
IGNORED_NAMES = (".gpt-ds.lock", "__pycache__")  # lock files may appear in any folder a command opens


# ---------------------------------------------------------------------------------------------
# running commands


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


ENV: dict[str, str] = {}


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


def run(argv: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> Result:
    """Run `argv` in its own process group; on a timeout kill the whole group."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
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
    return Result(proc.returncode, stdout, stderr, time.monotonic() - start, timed_out)


def run_ok(argv: list[str], cwd: Path, timeout: float = 600) -> Result:
    result = run(argv, cwd, timeout)
    if result.rc != 0:
        raise SystemExit(f"fixture command failed ({result.rc}): {shlex.join(argv)}\n{result.output[-3000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(ranks: int, script: str, args: list[str]) -> list[str]:
    """The deepspeed launcher with this interpreter (as gpt_ds.distributed.launcher_command)."""
    return [PY, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port", str(free_port()),
            script, *args]


# ---------------------------------------------------------------------------------------------
# fixtures


@dataclass(frozen=True)
class Fixtures:
    root: Path
    corpus: Path     # 8 files of stdlib sources
    data: Path       # its preparation (val fraction 0.25, several train shards)
    ds_config: Path  # zero2.json, micro-batch 4
    run: Path        # 4 steps of the 1-layer model, checkpoints step_00000002 and step_00000004
    model: Path      # run/model
    hf: Path         # model exported to Hugging Face's format
    qs_data: Path    # the quickstart's default corpus prepared as the quickstart prepares it

    def shared(self) -> list[Path]:
        return [self.corpus, self.data, self.ds_config, self.run, self.hf]


def write_ds_config(path: Path, **changes: Any) -> Path:
    config = json.loads(ZERO2.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=1))
    return path


def build_fixtures(root: Path) -> Fixtures:
    fx_dir = root / "fixtures"
    fx_dir.mkdir(parents=True)
    corpus = write_python_corpus(fx_dir / "corpus", 8 * 48_000, files=8)
    data = fx_dir / "data"
    run_ok([PY, "-m", "data_prep", "--input", str(corpus), "--out", str(data), "--val-fraction", "0.25",
            "--shard-tokens", "40000", "--workers", "1", "--quiet"], fx_dir)
    ds_config = write_ds_config(fx_dir / "ds.json", train_micro_batch_size_per_gpu=4)
    run_dir = fx_dir / "run"
    run_ok([PY, TRAIN, "--deepspeed_config", str(ds_config), "--data", str(data), "--out", str(run_dir),
            *FIXTURE_TRAIN], fx_dir)
    hf = fx_dir / "hf"
    run_ok([PY, "-m", "gpt_ds.hf", "export", str(run_dir / "model"), "--out", str(hf)], fx_dir)
    qs_data = fx_dir / "qs_data"
    corpus_paths = [str(p) for p in default_corpus()]  # the very paths the quickstart passes
    run_ok([PY, "-m", "data_prep", "--input", *corpus_paths, "--out", str(qs_data), "--quiet"], fx_dir)
    return Fixtures(root, corpus, data, ds_config, run_dir, run_dir / "model", hf, qs_data)


# ---------------------------------------------------------------------------------------------
# damage


class Poison:
    """Unpickling this runs `touch MARKER`: the marker file says a loader ran code from a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def write_poison(path: Path, marker: Path, torch_format: bool = True) -> Path:
    """Replace `path` with a pickle that creates `marker` when loaded: a torch.save zip, or a raw pickle."""
    path.unlink(missing_ok=True)
    if torch_format:
        import torch

        torch.save({"module": Poison(marker), "optimizer_state_dict": Poison(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Poison(marker), protocol=2))
    return path


def truncate(path: Path, keep: float | int = 0.5) -> Path:
    """Cut `path` to a fraction of its size (float) or to a number of bytes (int)."""
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.unlink()
    path.write_bytes(data[:n])
    return path


def flip_byte(path: Path, at: float = 0.75) -> Path:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))
    return path


def edit_json(path: Path, change: Callable[[Any], Any]) -> Path:
    """Rewrite a JSON file after change(parsed) edited it in place (what change returns is ignored)."""
    value = json.loads(path.read_text())
    change(value)
    path.unlink()
    path.write_text(json.dumps(value, indent=1))
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rerecord(tag_dir: Path, name: str) -> None:
    """Make client_state.json's record of `name` match the file as it is now (an attacker's care)."""
    path = tag_dir / name

    def change(state: dict) -> None:
        state["files"][name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}

    edit_json(tag_dir / "client_state.json", change)


def rewrite_shard(path: Path, tokens: Callable[[int], Iterable[int]]) -> Path:
    """Rewrite an llm.c shard with a valid header and the same token count, its tokens from tokens(n)."""
    data = path.read_bytes()
    header = data[:1024]
    n = struct.unpack_from("<i", header, 8)[0]
    body = struct.pack(f"<{n}H", *tokens(n))
    path.unlink()
    path.write_bytes(header + body)
    return path


def rerecord_shard(data_dir: Path, shard: str) -> None:
    """Make the manifest's sha256 of `shard` match the file (a consistent but wrong folder)."""
    path = data_dir / shard

    def change(manifest: dict) -> None:
        for split in manifest["splits"].values():
            for entry in split["shards"]:
                if entry["name"] == shard:
                    entry["sha256"] = sha256(path)

    edit_json(data_dir / "manifest.json", change)


def copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED_NAMES))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dst


def tag(run_dir: Path, step: int = 4) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"


# ---------------------------------------------------------------------------------------------
# snapshots: has a folder changed?


def snapshot(paths: Iterable[Path], content: bool) -> dict[str, Any]:
    """Every file under `paths`: its sha256 (content=True) or (size, mtime); lock files ignored."""
    seen: dict[str, Any] = {}
    for root in paths:
        if not root.exists():
            seen[str(root)] = None
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*"))
        for p in files:
            if any(part in IGNORED_NAMES for part in p.parts):
                continue
            if p.is_dir():
                seen[str(p)] = "dir"
            elif p.is_file():
                st = p.stat()
                seen[str(p)] = sha256(p) if content else (st.st_size, st.st_mtime_ns)
            else:
                seen[str(p)] = "other"
    return seen


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    added = [f"+{p}" for p in after.keys() - before.keys()]
    removed = [f"-{p}" for p in before.keys() - after.keys()]
    changed = [f"~{p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    return sorted(added + removed + changed)


# ---------------------------------------------------------------------------------------------
# cases


@dataclass
class Prepared:
    """What a case runs, once its setup is done."""

    argv: list[str]
    watch: list[Path] = field(default_factory=list)  # inputs that must be byte-identical afterwards
    marker: Path | None = None                       # must never appear
    background: subprocess.Popen | None = None       # a run holding the folder (killed afterwards)
    timeout: float = TIMEOUT_S


Setup = Callable[[Fixtures, Path], Prepared]


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    setup: Setup
    expect: str = "error"  # "warning": exit 0 with one warning: line is documented and counts as clear
    note: str = ""         # what to know when judging the outcome (e.g. the damage needs a forged record)


@dataclass
class Outcome:
    group: str
    name: str
    command: str
    outcome: str  # clear | traceback | silently wrong | other
    detail: str   # for "other" and "silently wrong": why; for the rest, the first error line
    rc: int | None
    seconds: float
    excerpt: str
    note: str = ""


def train_cmd(fx: Fixtures, out: Path, *flags: str, data: Path | None = None, config: Path | None = None,
              base: list[str] = QUICK_TRAIN) -> list[str]:
    return [PY, TRAIN, "--deepspeed_config", str(config or fx.ds_config), "--data", str(data or fx.data),
            "--out", str(out), *base, *flags]


def train_flag(name: str, *flags: str) -> Case:
    return Case("train", name, lambda fx, w: Prepared(train_cmd(fx, w / "run", *flags)))


def train_cases() -> list[Case]:
    flags = [
        ("max-steps 0", "--max-steps", "0"), ("max-steps negative", "--max-steps", "-5"),
        ("max-steps nan", "--max-steps", "nan"), ("max-steps 1e3", "--max-steps", "1e3"),
        ("lr nan", "--lr", "nan"), ("lr inf", "--lr", "inf"), ("lr negative", "--lr", "-1"),
        ("lr string", "--lr", "fast"), ("min-lr negative", "--min-lr", "-0.1"), ("min-lr nan", "--min-lr", "nan"),
        ("min-lr above lr", "--lr", "1e-3", "--min-lr", "1"),
        ("target-loss nan", "--target-loss", "nan"), ("target-loss negative", "--target-loss", "-1"),
        ("warmup-steps negative", "--warmup-steps", "-1"), ("warmup-steps past the schedule", "--warmup-steps", "100"),
        ("lr-decay-steps 0", "--lr-decay-steps", "0"), ("lr-decay-steps negative", "--lr-decay-steps", "-3"),
        ("eval-interval 0", "--eval-interval", "0"), ("eval-interval negative", "--eval-interval", "-1"),
        ("eval-tokens 0", "--eval-tokens", "0"), ("eval-tokens negative", "--eval-tokens", "-1"),
        ("save-interval 0", "--save-interval", "0"), ("save-interval negative", "--save-interval", "-2"),
        ("keep-checkpoints 0", "--keep-checkpoints", "0"), ("keep-checkpoints negative", "--keep-checkpoints", "-1"),
        ("seed string", "--seed", "abc"),
        ("log-interval 0", "--log-interval", "0"), ("sample-tokens negative", "--sample-tokens", "-1"),
        ("peak-tflops 0", "--peak-tflops", "0"), ("peak-tflops nan", "--peak-tflops", "nan"),
        ("peak-tflops negative", "--peak-tflops", "-1"),
        ("n-head not dividing n-embd", "--n-head", "3"), ("n-layer 0", "--n-layer", "0"),
        ("n-embd negative", "--n-embd", "-32"), ("n-head 0", "--n-head", "0"), ("block-size 0", "--block-size", "0"),
        ("seq-len above block-size", "--seq-len", "64"), ("seq-len 0", "--seq-len", "0"),
        ("unknown preset", "--model", "gpt5"),
        ("decay-fraction 0", "--schedule", "wsd", "--decay-fraction", "0"),
        ("decay-fraction 1.5", "--schedule", "wsd", "--decay-fraction", "1.5"),
        ("decay-fraction nan", "--schedule", "wsd", "--decay-fraction", "nan"),
        ("logit-softcap negative", "--logit-softcap", "-1"), ("logit-softcap nan", "--logit-softcap", "nan"),
        ("recipe modern without Muon config", "--recipe", "modern"),
        ("misspelt flag", "--max-stpes", "2"), ("unknown schedule", "--schedule", "linear"),
    ]
    cases = [train_flag(name, *values) for name, *values in flags]

    def paths(name: str, make: Callable[[Fixtures, Path], list[str]]) -> Case:
        return Case("train", name, lambda fx, w: Prepared(make(fx, w), watch=[fx.data]))

    cases += [
        paths("data missing", lambda fx, w: train_cmd(fx, w / "run", data=w / "nope")),
        paths("data is a file (a shard)", lambda fx, w: train_cmd(fx, w / "run", data=fx.data / "train_000000.bin")),
        paths("data is an empty folder", lambda fx, w: train_cmd(fx, w / "run", data=mkdir(w / "empty"))),
        paths("data is the raw corpus", lambda fx, w: train_cmd(fx, w / "run", data=fx.corpus)),
        paths("data is a run folder", lambda fx, w: train_cmd(fx, w / "run", data=fx.run)),
        paths("out is a file", lambda fx, w: train_cmd(fx, touch(w / "file"))),
        paths("out under a file", lambda fx, w: train_cmd(fx, touch(w / "file") / "run")),
        Case("train", "out equal to data", out_equal_to_data),
        Case("train", "out inside data", lambda fx, w: out_equal_to_data(fx, w, sub="run")),
        paths("deepspeed_config missing", lambda fx, w: train_cmd(fx, w / "run", config=w / "nope.json")),
        paths("deepspeed_config is a folder", lambda fx, w: train_cmd(fx, w / "run", config=mkdir(w / "cfg"))),
        paths("deepspeed_config is a shard", lambda fx, w: train_cmd(fx, w / "run",
                                                                     config=fx.data / "train_000000.bin")),
        Case("train", "a second run into a folder in use", concurrent_train),
    ]
    return cases


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def touch(path: Path, text: str = "not a folder\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def out_equal_to_data(fx: Fixtures, w: Path, sub: str = "") -> Prepared:
    data = copy(fx.data, w / "data")
    return Prepared(train_cmd(fx, data / sub if sub else data, data=data), watch=[data])


def concurrent_train(fx: Fixtures, w: Path) -> Prepared:
    """A long run holds w/run; the case is the second run into it."""
    out = w / "run"
    first = subprocess.Popen(train_cmd(fx, out, "--max-steps", "100000", "--save-interval", "100000",
                                       "--eval-interval", "100000"), cwd=w, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(out / "settings.json", first, 120)
    return Prepared(train_cmd(fx, out), background=first)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def dsconfig_case(name: str, damage: Callable[[dict], Any] | str, *flags: str, ranks: int = 1,
                  expect: str = "error", base: Path = ZERO2) -> Case:
    """launch/train.py with a DeepSpeed JSON changed by damage(config) or replaced by the text `damage`."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        path = w / "ds.json"
        if isinstance(damage, str):
            path.write_text(damage)
        else:
            config = json.loads(base.read_text())
            config["train_micro_batch_size_per_gpu"] = 4
            damage(config)
            path.write_text(json.dumps(config, indent=1))
        args = train_cmd(fx, w / "run", *flags, config=path)[2:]
        argv = launcher(ranks, TRAIN, args) if ranks > 1 else [PY, TRAIN, *args]
        return Prepared(argv, watch=[path])

    return Case("dsconfig", name, setup, expect)


def set_in(*keys: str, value: Any) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return change


def rename_key(section: str | None, old: str, new: str) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        node = config[section] if section else config
        node[new] = node.pop(old)

    return change


def dsconfig_cases() -> list[Case]:
    text = ZERO2.read_text()
    return [
        dsconfig_case("not JSON (truncated)", text[: len(text) // 2]),
        dsconfig_case("empty file", ""),
        dsconfig_case("a JSON list", "[1, 2, 3]"),
        dsconfig_case("JSON null", "null"),
        dsconfig_case("micro-batch a string", set_in("train_micro_batch_size_per_gpu", value="8")),
        dsconfig_case("micro-batch 0", set_in("train_micro_batch_size_per_gpu", value=0)),
        dsconfig_case("micro-batch negative", set_in("train_micro_batch_size_per_gpu", value=-4)),
        dsconfig_case("micro-batch 2.5", set_in("train_micro_batch_size_per_gpu", value=2.5)),
        dsconfig_case("accumulation 0", set_in("gradient_accumulation_steps", value=0)),
        dsconfig_case("train_batch_size not divisible", set_in("train_batch_size", value=7)),
        dsconfig_case("ZeRO stage 0", set_in("zero_optimization", "stage", value=0)),
        dsconfig_case("ZeRO stage a string", set_in("zero_optimization", "stage", value="two")),
        dsconfig_case("ZeRO stage 7", set_in("zero_optimization", "stage", value=7)),
        dsconfig_case("zero_optimization a list", set_in("zero_optimization", value=[2])),
        dsconfig_case("misspelt key in zero_optimization", rename_key("zero_optimization", "overlap_comm",
                                                                      "overlap_com")),
        dsconfig_case("misspelt top-level key (warned)", set_in("wall_clock_breakdwn", value=False), expect="warning"),
        dsconfig_case("misspelt top-level key, --strict-config", set_in("wall_clock_breakdwn", value=False),
                      "--strict-config"),
        dsconfig_case("optimizer type unknown", set_in("optimizer", "type", value="Adamm")),
        dsconfig_case("optimizer lr a string", set_in("optimizer", "params", "lr", value="fast")),
        dsconfig_case("optimizer lr NaN", set_in("optimizer", "params", "lr", value=float("nan"))),
        dsconfig_case("optimizer lr negative", set_in("optimizer", "params", "lr", value=-1e-3)),
        dsconfig_case("optimizer betas one value", set_in("optimizer", "params", "betas", value=[0.9])),
        dsconfig_case("optimizer betas a string", set_in("optimizer", "params", "betas", value="0.9,0.95")),
        dsconfig_case("optimizer betas above 1", set_in("optimizer", "params", "betas", value=[1.5, 0.95])),
        dsconfig_case("optimizer eps negative", set_in("optimizer", "params", "eps", value=-1e-8)),
        dsconfig_case("optimizer weight_decay negative", set_in("optimizer", "params", "weight_decay", value=-0.1)),
        dsconfig_case("misspelt optimizer param", rename_key("optimizer", "params", "parms")),
        dsconfig_case("bf16 enabled a string", set_in("bf16", "enabled", value="yes")),
        dsconfig_case("bf16 and fp16 both on", set_in("fp16", "enabled", value=True)),
        dsconfig_case("a scheduler section", set_in("scheduler", value={"type": "WarmupLR", "params": {}})),
        dsconfig_case("gradient_clipping a string", set_in("gradient_clipping", value="none")),
        dsconfig_case("gradient_clipping negative", set_in("gradient_clipping", value=-1.0)),
        dsconfig_case("fp16 config on a CPU", lambda c: None, base=ZERO2_FP16),
        dsconfig_case("2 ranks: not JSON", text[: len(text) // 2], ranks=2),
        dsconfig_case("2 ranks: train_batch_size 3", set_in("train_batch_size", value=3), ranks=2),
        dsconfig_case("2 ranks: misspelt key in zero_optimization",
                      rename_key("zero_optimization", "overlap_comm", "overlap_com"), ranks=2),
    ]


def data_case(name: str, damage: Callable[[Path], Any], *, verify: bool = False, flags: tuple[str, ...] = (),
              expect: str = "error") -> Case:
    """Training (or `data_prep --verify`) on a copy of the prepared folder changed by damage(folder)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        data = copy(fx.data, w / "data")
        damage(data)
        argv = [PY, "-m", "data_prep", "--verify", str(data)] if verify else train_cmd(fx, w / "run", *flags,
                                                                                       data=data)
        return Prepared(argv, watch=[data])

    return Case("data", name, setup, expect)


def oov(value: int) -> Callable[[int], list[int]]:
    return lambda n: [value if i % 7 == 3 else 198 for i in range(n)]


def foreign(n: int) -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(50257) for _ in range(n)]


def data_cases() -> list[Case]:
    shard, val = "train_000000.bin", "val_000000.bin"
    damages: list[tuple[str, Callable[[Path], Any]]] = [
        ("manifest not JSON", lambda d: truncate(d / "manifest.json", 0.5)),
        ("manifest a JSON list", lambda d: (d / "manifest.json").write_text("[]")),
        ("manifest without splits", lambda d: edit_json(d / "manifest.json", lambda m: m.pop("splits"))),
        ("manifest token count wrong", lambda d: edit_json(
            d / "manifest.json", lambda m: m["splits"]["train"]["shards"][0].update(tokens=123))),
        ("manifest vocab_size a string", lambda d: edit_json(d / "manifest.json", lambda m: m.update(vocab_size="x"))),
        ("manifest names a missing shard", lambda d: (d / shard).unlink()),
        ("interrupted preparation (no manifest, marker)", lambda d: (
            (d / "manifest.json").rename(d / ".prepare-in-progress.json"))),
        ("shard truncated", lambda d: truncate(d / shard, 0.5)),
        ("shard shorter than its header", lambda d: truncate(d / shard, 10)),
        ("shard overwritten with zeros", lambda d: (d / shard).write_bytes(bytes((d / shard).stat().st_size))),
        ("shard header count altered", lambda d: patch(d / shard, 8, struct.pack("<i", 5))),
        ("shard header magic altered", lambda d: patch(d / shard, 0, struct.pack("<i", 1234))),
        ("val shard deleted", lambda d: (d / val).unlink()),
        ("foreign shard (same size, other tokens)", lambda d: rewrite_shard(d / shard, foreign)),
        ("shard with tokens past the vocabulary", lambda d: rewrite_shard(d / shard, oov(65535))),
        ("shard with tokens in the padding rows", lambda d: rewrite_shard(d / shard, oov(50300))),
        ("shard with out-of-vocabulary tokens, manifest re-hashed",
         lambda d: (rewrite_shard(d / shard, oov(65535)), rerecord_shard(d, shard))),
        ("val shard with out-of-vocabulary tokens, manifest re-hashed",
         lambda d: (rewrite_shard(d / val, oov(60000)), rerecord_shard(d, val))),
    ]
    cases = [data_case(name, damage) for name, damage in damages]
    cases.append(data_case("foreign shard, --verify-data", lambda d: rewrite_shard(d / shard, foreign),
                           flags=("--verify-data",)))
    verify = ["manifest not JSON", "shard truncated", "shard overwritten with zeros",
              "foreign shard (same size, other tokens)", "shard with out-of-vocabulary tokens, manifest re-hashed",
              "manifest names a missing shard"]
    cases += [data_case(f"data_prep --verify: {name}", damage, verify=True)
              for name, damage in damages if name in verify]
    return cases


def patch(path: Path, offset: int, data: bytes) -> Path:
    content = bytearray(path.read_bytes())
    content[offset:offset + len(data)] = data
    path.unlink()
    path.write_bytes(bytes(content))
    return path


def resume_case(name: str, damage: Callable[[Path, Path], Any], *flags: str, group: str = "resume",
                resume: Callable[[Path, Path], str] | None = None, note: str = "") -> Case:
    """Continue a copy of the fixture run (to step 6) after damage(run_copy, marker)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        run_dir = copy(fx.run, w / "run")
        marker = w / "MARKER"
        damage(run_dir, marker)
        extra = ["--resume", resume(run_dir, w)] if resume else []
        argv = train_cmd(fx, run_dir, *extra, *flags, base=RESUME_TRAIN)
        # a resume adds checkpoints, moves `latest` and prunes step 2 (keep-last-2); the tag it resumes from
        # must stay as it was
        return Prepared(argv, watch=[tag(run_dir, 4)], marker=marker)

    return Case(group, name, setup, note=note)


def nothing(run_dir: Path, marker: Path) -> None:
    pass


def checkpoint_damages() -> list[tuple[str, Callable[[Path, Path], Any]]]:
    """Damage to a run's newest checkpoint, shared by the resume and export cases."""
    t = tag
    return [
        ("latest points nowhere", lambda r, m: (r / "checkpoints" / "latest").write_text("step_99999999")),
        ("latest empty", lambda r, m: (r / "checkpoints" / "latest").write_text("")),
        ("latest points outside", lambda r, m: (r / "checkpoints" / "latest").write_text("../../run")),
        ("latest is a folder", lambda r, m: ((r / "checkpoints" / "latest").unlink(),
                                             (r / "checkpoints" / "latest").mkdir())),
        ("client_state.json not JSON", lambda r, m: truncate(t(r) / "client_state.json", 0.5)),
        ("client_state.json a JSON list", lambda r, m: (t(r) / "client_state.json").write_text("[]")),
        ("client_state.json deleted", lambda r, m: (t(r) / "client_state.json").unlink()),
        ("model states truncated", lambda r, m: truncate(t(r) / MODEL_STATES, 0.5)),
        ("model states truncated, re-recorded", lambda r, m: (truncate(t(r) / MODEL_STATES, 0.5),
                                                              rerecord(t(r), MODEL_STATES))),
        ("optimizer states truncated", lambda r, m: truncate(t(r) / OPTIM_STATES, 0.3)),
        ("model states byte flipped", lambda r, m: flip_byte(t(r) / MODEL_STATES)),
        ("optimizer states of another step", lambda r, m: shutil.copyfile(tag(r, 2) / OPTIM_STATES,
                                                                           t(r) / OPTIM_STATES)),
        ("optimizer states of another step, re-recorded", lambda r, m: (
            shutil.copyfile(tag(r, 2) / OPTIM_STATES, t(r) / OPTIM_STATES), rerecord(t(r), OPTIM_STATES))),
        ("optimizer states deleted", lambda r, m: (t(r) / OPTIM_STATES).unlink()),
        ("poisoned model states", lambda r, m: write_poison(t(r) / MODEL_STATES, m)),
        ("poisoned model states, re-recorded", lambda r, m: (write_poison(t(r) / MODEL_STATES, m),
                                                             rerecord(t(r), MODEL_STATES))),
        ("poisoned optimizer states, re-recorded", lambda r, m: (write_poison(t(r) / OPTIM_STATES, m),
                                                                 rerecord(t(r), OPTIM_STATES))),
        ("raw-pickle model states, re-recorded", lambda r, m: (write_poison(t(r) / MODEL_STATES, m, False),
                                                               rerecord(t(r), MODEL_STATES))),
        ("checkpoint without its file record", lambda r, m: (
            edit_json(t(r) / "client_state.json", lambda s: s.pop("files")), write_poison(t(r) / OPTIM_STATES, m))),
    ]


def resume_cases() -> list[Case]:
    cases = [resume_case(name, damage) for name, damage in checkpoint_damages()]
    cases += [
        resume_case("another n_head", nothing, "--n-head", "4"),
        resume_case("another width", nothing, "--n-embd", "64"),
        resume_case("resume never into a run with checkpoints", nothing, "--resume", "never"),
        resume_case("resume PATH missing", nothing, resume=lambda r, w: str(w / "nope")),
        resume_case("resume PATH a file", nothing, resume=lambda r, w: str(tag(r) / MODEL_STATES)),
        resume_case("resume PATH the data folder", nothing, resume=lambda r, w: str(w.parents[1] / "fixtures/data")),
        resume_case("resume PATH the model folder", nothing, resume=lambda r, w: str(r / "model")),
        resume_case("resume PATH an empty string", nothing, resume=lambda r, w: ""),
        resume_case("resume PATH a tag with bad client_state",
                    lambda r, m: truncate(tag(r, 2) / "client_state.json", 0.5),
                    resume=lambda r, w: str(tag(r, 2))),
        resume_case("resume PATH a poisoned tag of another folder",
                    lambda r, m: (copy(tag(r, 2), r.parent / "elsewhere" / "step_00000002"),
                                  write_poison(r.parent / "elsewhere" / "step_00000002" / MODEL_STATES, m),
                                  rerecord(r.parent / "elsewhere" / "step_00000002", MODEL_STATES)),
                    resume=lambda r, w: str(w / "elsewhere" / "step_00000002")),
    ]
    return cases


def data_prep_case(name: str, make: Callable[[Fixtures, Path], list[str]], watch: Callable[[Fixtures, Path],
                   list[Path]] = lambda fx, w: []) -> Case:
    def setup(fx: Fixtures, w: Path) -> Prepared:
        argv = [PY, "-m", "data_prep", *make(fx, w)]
        return Prepared(argv, watch=watch(fx, w))

    return Case("data_prep", name, setup)


def corpus_copy(fx: Fixtures, w: Path) -> Path:
    return copy(fx.corpus, w / "corpus") if not (w / "corpus").exists() else w / "corpus"


def write_file(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def data_prep_cases() -> list[Case]:
    def prep(*flags: str) -> Callable[[Fixtures, Path], list[str]]:
        return lambda fx, w: ["--input", str(fx.corpus), "--out", str(w / "out"), "--workers", "1", *flags]

    def inp(make_input: Callable[[Path], Path], *flags: str) -> Callable[[Fixtures, Path], list[str]]:
        return lambda fx, w: ["--input", str(make_input(w)), "--out", str(w / "out"), "--workers", "1", *flags]

    text = "def f():\n    return 1\n"
    cases = [
        data_prep_case("no arguments", lambda fx, w: []),
        data_prep_case("input missing", inp(lambda w: w / "nope")),
        data_prep_case("glob matching nothing", lambda fx, w: ["--input", str(w / "*.nothing"), "--out", str(w / "o")]),
        data_prep_case("input an empty folder", inp(lambda w: mkdir(w / "empty"))),
        data_prep_case("input only empty files", inp(lambda w: (write_file(w / "c/a.txt", ""),
                                                                write_file(w / "c/b.txt", ""))[0].parent)),
        data_prep_case("input only a binary file", inp(lambda w: write_file(w / "c/x.bin", bytes(range(256)) * 64))),
        data_prep_case("binary file under --strict", inp(lambda w: (write_file(w / "c/a.py", text),
                                                                    write_file(w / "c/x.bin", bytes(4096)))[0].parent,
                                                         "--strict")),
        data_prep_case("invalid UTF-8 under --strict", inp(lambda w: write_file(w / "c/a.py", b"ok\n\xff\xfe bad\n"),
                                                           "--strict")),
        data_prep_case("jsonl line not JSON", inp(lambda w: write_file(w / "c/a.jsonl", '{"text": "a"}\n{oops\n'))),
        data_prep_case("jsonl line not an object", inp(lambda w: write_file(w / "c/a.jsonl", '{"text": "a"}\n[1]\n'))),
        data_prep_case("jsonl without the field", inp(lambda w: write_file(w / "c/a.jsonl", '{"body": "a"}\n'))),
        data_prep_case("jsonl field not a string", inp(lambda w: write_file(w / "c/a.jsonl", '{"text": 5}\n'))),
        data_prep_case("jsonl field empty name", inp(lambda w: write_file(w / "c/a.jsonl", '{"text": "a"}\n'),
                                                     "--jsonl-field", "")),
        data_prep_case("corrupt gzip", inp(lambda w: write_file(w / "c/a.txt.gz", b"\x1f\x8b\x08\x00garbage" * 50))),
        data_prep_case("truncated gzip", inp(lambda w: write_file(w / "c/a.txt.gz", gzip.compress(
            stdlib_text()[:200_000])[:5000]))),
        data_prep_case("out is a file", lambda fx, w: ["--input", str(fx.corpus), "--out", str(touch(w / "f"))]),
        data_prep_case("out under a file", lambda fx, w: ["--input", str(fx.corpus), "--out",
                                                          str(touch(w / "f") / "d")]),
        data_prep_case("out equal to the input", lambda fx, w: ["--input", str(corpus_copy(fx, w)), "--out",
                                                                str(w / "corpus"), "--workers", "1"],
                       watch=lambda fx, w: [corpus_copy(fx, w)]),
        data_prep_case("out inside the input", lambda fx, w: ["--input", str(corpus_copy(fx, w)), "--out",
                                                              str(w / "corpus" / "prepared"), "--workers", "1"],
                       watch=lambda fx, w: [corpus_copy(fx, w)]),
        data_prep_case("input a prepared folder, out the same", lambda fx, w: [
            "--input", str(copy(fx.data, w / "data")), "--out", str(w / "data"), "--workers", "1"],
            watch=lambda fx, w: [w / "data"]),
        data_prep_case("val-fraction 1.5", prep("--val-fraction", "1.5")),
        data_prep_case("val-fraction negative", prep("--val-fraction", "-0.1")),
        data_prep_case("val-fraction nan", prep("--val-fraction", "nan")),
        data_prep_case("shard-tokens 0", prep("--shard-tokens", "0")),
        data_prep_case("shard-tokens negative", prep("--shard-tokens", "-1")),
        data_prep_case("shard-tokens a string", prep("--shard-tokens", "1M")),
        data_prep_case("workers 0", prep("--workers", "0")),
        data_prep_case("workers negative", prep("--workers", "-2")),
        data_prep_case("seed a string", prep("--seed", "abc")),
        data_prep_case("encoding too large for uint16", prep("--encoding", "cl100k_base")),
        data_prep_case("encoding unknown", prep("--encoding", "nonsense")),
        data_prep_case("verify a missing folder", lambda fx, w: ["--verify", str(w / "nope")]),
        data_prep_case("verify a file", lambda fx, w: ["--verify", str(fx.data / "manifest.json")]),
        data_prep_case("verify an empty folder", lambda fx, w: ["--verify", str(mkdir(w / "empty"))]),
        data_prep_case("verify the raw corpus", lambda fx, w: ["--verify", str(fx.corpus)]),
        data_prep_case("a different preparation in out", lambda fx, w: [
            "--input", str(fx.corpus), "--out", str(copy(fx.data, w / "data")), "--val-fraction", "0.25",
            "--shard-tokens", "40000", "--workers", "1", "--seed", "7"], watch=lambda fx, w: [w / "data"]),
        Case("data_prep", "a second preparation into a folder in use", concurrent_prep),
    ]
    return cases


def concurrent_prep(fx: Fixtures, w: Path) -> Prepared:
    """A long preparation (a 48 MB corpus, 1 worker) holds w/out; the case is a second one into it."""
    corpus = write_python_corpus(w / "big", 48_000_000, files=24)
    argv = [PY, "-m", "data_prep", "--input", str(corpus), "--out", str(w / "out"), "--workers", "1", "--quiet"]
    first = subprocess.Popen(argv, cwd=w, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    wait_for(w / "out" / ".prepare-in-progress.json", first, 60)
    return Prepared(argv, background=first)


def export_case(name: str, damage: Callable[[Path, Path], Any], *flags: str | Callable[[Path, Path], str],
                run_arg: Callable[[Path, Path], Path] | None = None) -> Case:
    """`python -m gpt_ds.export` of a copy of the fixture run after damage(run_copy, marker)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        run_dir = copy(fx.run, w / "run")
        shutil.rmtree(run_dir / "model")
        marker = w / "MARKER"
        damage(run_dir, marker)
        args = [f(run_dir, w) if callable(f) else f for f in flags]
        target = run_arg(run_dir, w) if run_arg else run_dir
        argv = [PY, "-m", "gpt_ds.export", str(target), *args]
        return Prepared(argv, watch=[run_dir / "checkpoints", w / "data"], marker=marker)

    return Case("export", name, setup)


def data_copy(w: Path) -> Path:
    """A copy of the fixtures' data folder in the case folder `w` (cases/<case> beside fixtures/)."""
    return copy(w.parents[1] / "fixtures" / "data", w / "data")


def export_cases() -> list[Case]:
    cases = [export_case(name, damage) for name, damage in checkpoint_damages()]
    cases += [
        export_case("run folder missing", nothing, run_arg=lambda r, w: w / "nope"),
        export_case("run folder is a file", nothing, run_arg=lambda r, w: tag(r) / MODEL_STATES),
        export_case("run folder is a data folder", nothing, run_arg=lambda r, w: data_copy(w)),
        export_case("run folder is empty", nothing, run_arg=lambda r, w: mkdir(w / "empty")),
        export_case("run folder is a tag folder", nothing, run_arg=lambda r, w: tag(r)),
        export_case("tag missing", nothing, "--tag", "step_00000099"),
        export_case("tag is ..", nothing, "--tag", ".."),
        export_case("dtype int8", nothing, "--dtype", "int8"),
        export_case("out equal to the run folder", nothing, "--out", lambda r, w: str(r)),
        export_case("out equal to the run folder, --force", nothing, "--out", lambda r, w: str(r), "--force"),
        export_case("out is checkpoints/", nothing, "--out", lambda r, w: str(r / "checkpoints"), "--force"),
        export_case("out inside a tag folder", nothing, "--out", lambda r, w: str(tag(r) / "model"), "--force"),
        export_case("out above the run folder, --force", nothing, "--out", lambda r, w: str(w), "--force"),
        export_case("out is a file", nothing, "--out", lambda r, w: str(touch(w / "file"))),
        export_case("out is a data folder", nothing, "--out", lambda r, w: str(data_copy(w))),
    ]
    return cases


def model_copy(fx: Fixtures, w: Path, damage: Callable[[Path, Path], Any]) -> tuple[Path, Path]:
    model, marker = copy(fx.model, w / "model"), w / "MARKER"
    damage(model, marker)
    return model, marker


def config_edit(change: Callable[[dict], Any]) -> Callable[[Path, Path], Any]:
    return lambda m, marker: edit_json(m / "config.json", change)


def model_damages() -> list[tuple[str, Callable[[Path, Path], Any], str]]:
    """(name, damage(model_copy, marker), expect) for a model folder, shared by sample and hf export."""
    weights = "model.safetensors"
    return [
        ("config.json not JSON", lambda m, _: truncate(m / "config.json", 0.5), "error"),
        ("config.json empty", lambda m, _: (m / "config.json").write_text(""), "error"),
        ("config.json a list", lambda m, _: (m / "config.json").write_text("[]"), "error"),
        ("config.json without model", config_edit(lambda c: c.pop("model")), "error"),
        ("config.json deleted", lambda m, _: (m / "config.json").unlink(), "error"),
        ("config n_head changed", config_edit(lambda c: c["model"].update(n_head=4)), "error"),
        ("config n_embd changed", config_edit(lambda c: c["model"].update(n_embd=64)), "error"),
        ("config n_layer changed", config_edit(lambda c: c["model"].update(n_layer=2)), "error"),
        ("config vocab_size a string", config_edit(lambda c: c["model"].update(vocab_size="big")), "error"),
        ("config block_size negative", config_edit(lambda c: c["model"].update(block_size=-1)), "error"),
        ("config misspelt field", config_edit(lambda c: c["model"].update(n_heads=2)), "error"),
        ("config unknown tokenizer", config_edit(lambda c: c.update(tokenizer="nonsense")), "error"),
        ("safetensors truncated", lambda m, _: truncate(m / weights, 0.5), "error"),
        ("safetensors empty", lambda m, _: (m / weights).write_bytes(b""), "error"),
        ("safetensors header garbage", lambda m, _: patch(m / weights, 8, b"{{{{garbage"), "error"),
        ("safetensors deleted", lambda m, _: (m / weights).unlink(), "error"),
        ("safetensors byte flipped (warned)", lambda m, _: flip_byte(m / weights), "warning"),
        ("safetensors replaced by a pickle", lambda m, marker: write_poison(m / weights, marker), "error"),
        ("only a poisoned pytorch_model.bin", lambda m, marker: ((m / weights).unlink(),
                                                                 write_poison(m / "pytorch_model.bin", marker)),
         "error"),
    ]


def sample_case(name: str, damage: Callable[[Path, Path], Any], *flags: str, expect: str = "error",
                model_arg: Callable[[Fixtures, Path], Path] | None = None) -> Case:
    def setup(fx: Fixtures, w: Path) -> Prepared:
        model, marker = model_copy(fx, w, damage)
        target = model_arg(fx, w) if model_arg else model
        argv = [PY, SAMPLE, "--model", str(target), "--prompt", "def ", "--max-new-tokens", "8", *flags]
        return Prepared(argv, watch=[model], marker=marker)

    return Case("sample", name, setup, expect)


def sample_cases() -> list[Case]:
    cases = [sample_case(name, damage, expect=expect) for name, damage, expect in model_damages()]
    flags = [
        ("max-new-tokens negative", "--max-new-tokens", "-1"), ("max-new-tokens a string", "--max-new-tokens", "abc"),
        ("temperature nan", "--temperature", "nan"), ("temperature negative", "--temperature", "-1"),
        ("temperature inf", "--temperature", "inf"), ("top-k negative", "--top-k", "-5"),
        ("top-p 0", "--top-p", "0"), ("top-p 1.5", "--top-p", "1.5"), ("top-p nan", "--top-p", "nan"),
        ("num-samples 0", "--num-samples", "0"), ("num-samples negative", "--num-samples", "-1"),
        ("device cuda without a GPU", "--device", "cuda"), ("dtype int8", "--dtype", "int8"),
    ]
    cases += [sample_case(name, nothing, *values) for name, *values in flags]
    cases += [
        sample_case("model missing", nothing, model_arg=lambda fx, w: w / "nope"),
        sample_case("model is the weights file", nothing, model_arg=lambda fx, w: w / "model" / "model.safetensors"),
        sample_case("model is an empty folder", nothing, model_arg=lambda fx, w: mkdir(w / "empty")),
        sample_case("model is the run folder", nothing, model_arg=lambda fx, w: fx.run),
        sample_case("model is a Hugging Face folder", nothing, model_arg=lambda fx, w: fx.hf),
    ]
    return cases


def hf_export_case(name: str, damage: Callable[[Path, Path], Any], *flags: str | Callable[[Path, Path], str],
                   expect: str = "error") -> Case:
    def setup(fx: Fixtures, w: Path) -> Prepared:
        model, marker = model_copy(fx, w, damage)
        args = [f(model, w) if callable(f) else f for f in flags] or ["--out", str(w / "hf")]
        return Prepared([PY, "-m", "gpt_ds.hf", "export", str(model), *args], watch=[model], marker=marker)

    return Case("hf", f"export: {name}", setup, expect)


def hf_import_case(name: str, damage: Callable[[Path, Path], Any], *flags: str | Callable[[Path, Path], str],
                   hf_arg: Callable[[Path, Path], Path] | None = None) -> Case:
    def setup(fx: Fixtures, w: Path) -> Prepared:
        hf, marker = copy(fx.hf, w / "hf"), w / "MARKER"
        damage(hf, marker)
        args = [f(hf, w) if callable(f) else f for f in flags] or ["--out", str(w / "model")]
        source = hf_arg(hf, w) if hf_arg else hf
        return Prepared([PY, "-m", "gpt_ds.hf", "import", str(source), *args], watch=[hf], marker=marker)

    return Case("hf", f"import: {name}", setup)


def hf_cases() -> list[Case]:
    export_damages = {"config.json not JSON", "config n_head changed", "config n_embd changed", "safetensors truncated",
                      "safetensors replaced by a pickle", "only a poisoned pytorch_model.bin", "config.json deleted"}
    cases = [hf_export_case(name, damage, expect=expect) for name, damage, expect in model_damages()
             if name in export_damages]
    cases += [
        hf_export_case("out equal to the model", nothing, "--out", lambda m, w: str(m)),
        hf_export_case("out equal to the model, --force", nothing, "--out", lambda m, w: str(m), "--force"),
        hf_export_case("out inside the model", nothing, "--out", lambda m, w: str(m / "hf"), "--force"),
        hf_export_case("out above the model, --force", nothing, "--out", lambda m, w: str(w), "--force"),
        hf_export_case("out is a file", nothing, "--out", lambda m, w: str(touch(w / "file"))),
        hf_export_case("out is a gpt-ds model folder", nothing, "--out",
                       lambda m, w: str(copy(m, w / "other_model"))),
        hf_export_case("dtype int4", nothing, "--out", lambda m, w: str(w / "hf"), "--dtype", "int4"),
        hf_export_case("missing model folder", lambda m, _: shutil.rmtree(m)),
    ]
    weights = "model.safetensors"
    cases += [
        hf_import_case("folder missing", nothing, hf_arg=lambda h, w: w / "nope"),
        hf_import_case("a file instead of the folder", nothing, hf_arg=lambda h, w: h / "config.json"),
        hf_import_case("only a poisoned pytorch_model.bin", lambda h, m: ((h / weights).unlink(),
                                                                          write_poison(h / "pytorch_model.bin", m))),
        hf_import_case("safetensors replaced by a pickle", lambda h, m: write_poison(h / weights, m)),
        hf_import_case("config model_type llama", lambda h, m: edit_json(h / "config.json",
                                                                          lambda c: c.update(model_type="llama"))),
        hf_import_case("config.json not JSON", lambda h, m: truncate(h / "config.json", 0.5)),
        hf_import_case("config n_embd changed", lambda h, m: edit_json(h / "config.json",
                                                                        lambda c: c.update(n_embd=64))),
        hf_import_case("config activation unknown", lambda h, m: edit_json(
            h / "config.json", lambda c: c.update(activation_function="swish"))),
        hf_import_case("safetensors truncated", lambda h, m: truncate(h / weights, 0.5)),
        hf_import_case("out equal to the input", nothing, "--out", lambda h, w: str(h), "--force"),
        hf_import_case("out is a file", nothing, "--out", lambda h, w: str(touch(w / "file"))),
        hf_import_case("out is a Hugging Face folder", nothing, "--out", lambda h, w: str(copy(h, w / "other_hf"))),
    ]
    return cases


def quickstart_case(name: str, *flags: str | Callable[[Path], str], prepared: bool = True) -> Case:
    """launch/quickstart.py with a bad flag; --out (a case folder) holds the prepared default corpus already,
    and --max-steps 2 comes first, so a bad value that is accepted ends quickly (exit 0)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        out = w / "qs"
        if prepared:
            copy(fx.qs_data, out / "data")
        args = [f(w) if callable(f) else f for f in flags]
        return Prepared([PY, QUICKSTART, "--out", str(out), "--max-steps", "2", *args], timeout=180)

    return Case("quickstart", name, setup)


def quickstart_cases() -> list[Case]:
    return [
        quickstart_case("ranks 0", "--ranks", "0"),
        quickstart_case("ranks negative", "--ranks", "-1"),
        quickstart_case("ranks a string", "--ranks", "two"),
        quickstart_case("max-steps 0", "--max-steps", "0"),
        quickstart_case("max-steps negative", "--max-steps", "-1"),
        quickstart_case("target-loss nan", "--target-loss", "nan"),
        quickstart_case("target-loss negative", "--target-loss", "-1"),
        quickstart_case("out is a file", "--out", lambda w: str(touch(w / "file")), prepared=False),
        quickstart_case("out under a file", "--out", lambda w: str(touch(w / "file") / "qs"), prepared=False),
        quickstart_case("misspelt flag", "--rnaks", "2"),
    ]


def submit_case(name: str, options: list[str], train: Callable[[Fixtures, Path], list[str]] | None = None,
                timeout: float = TIMEOUT_S) -> Case:
    """launch/submit.py OPTIONS -- TRAIN_ARGS (the training's arguments valid unless `train` replaces them)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        train_args = train(fx, w) if train else train_cmd(fx, w / "run")[2:]
        return Prepared([PY, SUBMIT, *options, "--", *train_args], timeout=timeout)

    return Case("submit", name, setup)


def submit_cases() -> list[Case]:
    dry = ["--dry-run"]
    local = ["--cluster", "local", "--tasks-per-node", "2", "--wait"]  # --wait: a job that starts is followed
    bad_json = lambda fx, w: train_cmd(fx, w / "run", config=touch(w / "ds.json", "{oops"))[2:]  # noqa: E731
    return [
        Case("submit", "no -- and no training arguments", lambda fx, w: Prepared([PY, SUBMIT, "--dry-run"])),
        submit_case("nodes 0", [*dry, "--nodes", "0"]),
        submit_case("nodes negative", [*dry, "--nodes", "-1"]),
        submit_case("nodes a string", [*dry, "--nodes", "two"]),
        submit_case("gpus-per-node negative", [*dry, "--gpus-per-node", "-1"]),
        submit_case("tasks-per-node 0", [*dry, "--tasks-per-node", "0"]),
        submit_case("time 0", [*dry, "--time", "0"]),
        submit_case("time 1 minute (below the signal delay)", [*dry, "--time", "1"]),
        submit_case("signal-delay negative", [*dry, "--signal-delay", "-5"]),
        submit_case("master-port 80", [*dry, "--master-port", "80"]),
        submit_case("master-port 70000", [*dry, "--master-port", "70000"]),
        submit_case("max-requeues negative", [*dry, "--max-requeues", "-1"]),
        submit_case("cpus-per-task 0", [*dry, "--cpus-per-task", "0"]),
        submit_case("cluster unknown", [*dry, "--cluster", "pbs"]),
        submit_case("mem not Slurm's syntax", [*dry, "--mem", "lots"]),
        submit_case("partition unknown", [*dry, "--partition", "no_such_partition"]),
        submit_case("local on 2 nodes", ["--cluster", "local", "--nodes", "2", "--dry-run"]),
        submit_case("training arguments missing --data", dry,
                    lambda fx, w: ["--deepspeed_config", str(fx.ds_config), "--out", str(w / "run")]),
        submit_case("training data missing", dry, lambda fx, w: train_cmd(fx, w / "run", data=w / "nope")[2:]),
        submit_case("training max-steps negative", dry,
                    lambda fx, w: train_cmd(fx, w / "run", "--max-steps", "-1")[2:]),
        submit_case("training lr nan", dry, lambda fx, w: train_cmd(fx, w / "run", "--lr", "nan")[2:]),
        submit_case("local: train_batch_size 3 on 2 tasks", local, lambda fx, w: train_cmd(
            fx, w / "run", config=write_ds_config(w / "ds.json", train_batch_size=3))[2:]),
        submit_case("local: malformed DeepSpeed JSON", local, bad_json),
        submit_case("local: out is a file", local, lambda fx, w: train_cmd(fx, touch(w / "file"))[2:]),
        submit_case("local: time 0", [*local, "--time", "0"]),
        submit_case("local: data is a file", local,
                    lambda fx, w: train_cmd(fx, w / "run", data=fx.data / "manifest.json")[2:]),
    ]


# What to know when judging some outcomes (by case name, in any group).
FORGED = "the damage includes rewriting client_state.json's file record to match the new bytes"
NOTES = {
    "foreign shard (same size, other tokens)": "the README says shard sha256s are checked only under --verify-data",
    "data_prep --verify: shard with out-of-vocabulary tokens, manifest re-hashed":
        "the manifest's sha256 was rewritten to match; training refuses this folder",
    "out inside the input": "data_prep leaves its --out out of its inputs, so this may be meant to work",
    "optimizer states of another step, re-recorded": FORGED,
    "model states truncated, re-recorded": FORGED,
    "poisoned model states, re-recorded": FORGED,
    "poisoned optimizer states, re-recorded": FORGED,
    "raw-pickle model states, re-recorded": FORGED,
}

GROUPS: dict[str, Callable[[], list[Case]]] = {
    "train": train_cases, "dsconfig": dsconfig_cases, "data": data_cases, "resume": resume_cases,
    "data_prep": data_prep_cases, "export": export_cases, "sample": sample_cases, "hf": hf_cases,
    "quickstart": quickstart_cases, "submit": submit_cases,
}
KILL_GROUPS = ("kill-train", "kill-prep")


# ---------------------------------------------------------------------------------------------
# classification


def error_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if "error:" in line]


def first_line(result: Result) -> str:
    """The first error line, else the traceback's last line, else the last line of output."""
    errors = error_lines(result.output)
    if errors:
        return errors[0]
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    if TRACEBACK in result.output:
        tail = result.output[result.output.rindex(TRACEBACK):].splitlines()
        exc = [line for line in tail if line and not line.startswith(" ") and line != tail[0]]
        return exc[-1].strip() if exc else tail[-1].strip()
    return lines[-1] if lines else "(no output)"


def classify(result: Result, expect: str, marker_ran: bool, changed: list[str],
             background_done: bool) -> tuple[str, str]:
    """(outcome, detail) of one case."""
    if marker_ran:
        return "silently wrong", "the poisoned pickle ran (its marker file appeared)"
    if changed:
        return "silently wrong", f"an input changed: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}"
    if result.timed_out:
        return "other", f"hang: no exit within {result.seconds:.0f} s (killed)"
    if TRACEBACK in result.output:
        return "traceback", first_line(result)
    if background_done and result.rc == 0:
        return "other", "the first run ended before the second started (inconclusive: make it longer)"
    errors = error_lines(result.output)
    if result.rc == 0:
        warnings = [line for line in result.output.splitlines() if "warning:" in line]
        if expect == "warning" and len(warnings) == 1:
            return "clear", f"warned: {warnings[0].strip()}"
        return "silently wrong", "exit 0" + (f"; warnings: {warnings[0].strip()}" if warnings else ", no warning")
    if len(errors) == 1:
        return "clear", errors[0]
    if not errors:
        return "other", f"exit {result.rc} without an error: line ({first_line(result)})"
    return "other", f"{len(errors)} error: lines (exit {result.rc}): " + " | ".join(errors[:3])


def excerpt(result: Result, lines: int = 10) -> str:
    text = result.output
    if TRACEBACK in text:
        text = text[text.index(TRACEBACK):]
        kept = text.splitlines()
        return "\n".join(kept[:3] + ["..."] + kept[-6:]) if len(kept) > 9 else text
    return "\n".join(text.splitlines()[-lines:])


def run_case(case: Case, fx: Fixtures, work: Path) -> Outcome:
    folder = work / f"{case.group}-{slug(case.name)}"
    folder.mkdir(parents=True)
    shared_before = snapshot(fx.shared(), content=False)
    prepared: Prepared | None = None
    try:
        prepared = case.setup(fx, folder)
        watched_before = snapshot(prepared.watch, content=True)
        result = run(prepared.argv, folder, prepared.timeout)
        background_done = prepared.background is not None and prepared.background.poll() is not None
    finally:
        if prepared is not None and prepared.background is not None:
            kill_group(prepared.background)
            prepared.background.wait()
    changed = changes(watched_before, snapshot(prepared.watch, content=True))
    changed += changes(shared_before, snapshot(fx.shared(), content=False))
    marker_ran = prepared.marker is not None and prepared.marker.exists()
    outcome, detail = classify(result, case.expect, marker_ran, changed, background_done)
    detail = detail.replace(str(folder), "CASE").replace(str(fx.root / "fixtures"), "FIXTURES")
    return Outcome(case.group, case.name, shlex.join(prepared.argv), outcome, detail, result.rc,
                   round(result.seconds, 1), excerpt(result), case.note or NOTES.get(case.name, ""))


def run_case_safely(case: Case, fx: Fixtures, work: Path) -> Outcome:
    """run_case, with a failure of this benchmark's own setup reported as such instead of ending the sweep."""
    try:
        return run_case(case, fx, work)
    except Exception as err:  # noqa: BLE001 - a bench bug must not hide the other cases' results
        return Outcome(case.group, case.name, "", "other", f"the benchmark's setup failed: {err!r}", None, 0.0, "")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:60]


# ---------------------------------------------------------------------------------------------
# kill -9 trials


@dataclass
class Trial:
    kind: str        # kill-train | kill-prep
    index: int
    identical: bool  # interrupted for real, and the result is byte-identical
    detail: str
    tensors_equal: bool | None = None  # kill-train: the weights themselves equal (whatever the bytes)


def reference_run(argv: list[str], cwd: Path, started: Callable[[], bool],
                  finished: Callable[[], bool]) -> tuple[float, float]:
    """Run `argv` to the end; the seconds at which started() and then finished() first held (polled)."""
    start = time.monotonic()
    log = cwd / "reference.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    seen: list[float] = []
    while proc.poll() is None:
        if len(seen) < 2 and (finished if seen else started)():
            seen.append(time.monotonic() - start)
        time.sleep(0.01)
    kill_group(proc)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed ({proc.returncode}): {shlex.join(argv)}\n{log.read_text()[-3000:]}")
    total = time.monotonic() - start
    seen += [total] * (2 - len(seen))
    return seen[0], seen[1]


def kill_after(argv: list[str], cwd: Path, started: Callable[[], bool], delay: float, timeout: float = 300) -> bool:
    """Start `argv`, SIGKILL its process group `delay` s after started() holds; whether it was still running."""
    proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        alive = proc.poll() is None
    finally:
        kill_group(proc)
        proc.wait()
    return alive


KILL_ATTEMPTS = 3  # a kill that lands after the work it should interrupt is drawn again, at most this often


@dataclass
class Kill:
    out: Path          # the folder of the killed run (rerun there)
    delay: float       # seconds after started() held
    interrupted: bool  # the kill landed while the run was still doing what is measured
    attempts: int

    def how(self) -> str:
        again = f" (drawn {self.attempts} times: the earlier ones came too late)" if self.attempts > 1 else ""
        return ("killed" if self.interrupted else f"killed too late in {self.attempts} attempts") + again


def kill_mid_way(command: Callable[[Path], list[str]], folder: Path, name: str, started: Callable[[Path], bool],
                 unfinished: Callable[[Path], bool], window: float, rng: random.Random) -> Kill:
    """SIGKILL command(out) at a random moment within `window` s after started(out); redrawn (in a fresh
    folder) when the run had already finished, i.e. unfinished(out) no longer held at the kill."""
    for attempt in range(1, KILL_ATTEMPTS + 1):
        out = folder / (name if attempt == 1 else f"{name}_again{attempt}")
        delay = rng.uniform(0.0, 0.9 * window)
        alive = kill_after(command(out), folder, lambda: started(out), delay)
        if alive and unfinished(out):
            return Kill(out, delay, True, attempt)
    return Kill(out, delay, False, KILL_ATTEMPTS)


def read_latest(run_dir: Path) -> str:
    try:
        return (run_dir / "checkpoints" / "latest").read_text().strip()
    except (FileNotFoundError, IsADirectoryError):
        return ""


KILL_STEPS = 16


def kill_train_trials(fx: Fixtures, work: Path, trials: int, rng: random.Random) -> list[Trial]:
    """2 ranks, KILL_STEPS steps, a checkpoint every 2: kill -9 between the first checkpoint and the last one
    (the moment drawn from the uninterrupted run's timing), rerun the same command, compare the weights."""
    folder = mkdir(work / "kill-train")
    flags = [*TINY, "--max-steps", str(KILL_STEPS), "--save-interval", "2", "--eval-interval", "8",
             "--eval-tokens", "256", "--sample-tokens", "0", "--log-interval", "1"]
    final = f"step_{KILL_STEPS:08d}"

    def command(out: Path) -> list[str]:
        return launcher(2, TRAIN, ["--deepspeed_config", str(fx.ds_config), "--data", str(fx.data),
                                   "--out", str(out), *flags])

    reference = folder / "straight"
    first, last = reference_run(command(reference), folder, lambda: read_latest(reference) != "",
                                lambda: read_latest(reference) == final)
    window = max(0.1, last - first)
    want = (reference / "model" / "model.safetensors").read_bytes()
    results = []
    for i in range(trials):
        kill = kill_mid_way(command, folder, f"trial{i}", lambda out: read_latest(out) != "",
                            lambda out: read_latest(out) != final, window, rng)
        out, left = kill.out, read_latest(kill.out) or "none"
        resumed = run(command(out), folder, 300)
        got = out / "model" / "model.safetensors"
        if resumed.rc != 0 or not got.exists():
            results.append(Trial("kill-train", i, False, f"the resume failed (exit {resumed.rc}): "
                                                         f"{first_line(resumed)}"))
            continue
        got_bytes = got.read_bytes()
        same = got_bytes == want
        tensors_equal, how_differs = (True, "") if same else compare_weights(got_bytes, want)
        detail = (f"{kill.how()} {kill.delay:.2f} s after the first checkpoint (of a {window:.1f} s window), "
                  f"latest {left}; resumed to the end: " + ("model.safetensors bit-identical" if same else
                                                             f"model.safetensors differs ({how_differs})"))
        results.append(Trial("kill-train", i, same and kill.interrupted, detail, tensors_equal and kill.interrupted))
    return results


def safetensors_header(data: bytes) -> dict[str, Any]:
    (length,) = struct.unpack_from("<Q", data, 0)
    return json.loads(data[8:8 + length])


def compare_weights(got: bytes, want: bytes) -> tuple[bool, str]:
    """Where two model.safetensors files that are not byte-identical differ: (tensors equal, what differs)."""
    from safetensors.torch import load

    import torch

    a, b = load(got), load(want)
    if a.keys() != b.keys():
        return False, "other tensor names"
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    if differ:
        return False, f"tensors differ: {differ[:3]}"
    header_got, header_want = safetensors_header(got), safetensors_header(want)
    if header_got == header_want:
        return True, ("tensors equal and the header's content equal; only its key order differs (safetensors "
                      "writes the metadata map in a per-process random order)")
    meta_got, meta_want = header_got.get("__metadata__") or {}, header_want.get("__metadata__") or {}
    keys = sorted(k for k in set(meta_got) | set(meta_want) if meta_got.get(k) != meta_want.get(k))
    return True, f"tensors equal, the header's content differs (metadata keys {keys or 'equal'})"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".gpt-ds.lock"}


def first_shard(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("train_*.bin"))


def kill_prep_trials(fx: Fixtures, work: Path, trials: int, rng: random.Random) -> list[Trial]:
    """data_prep of a 12 MB corpus (48 files) into 200k-token shards on 2 workers: kill -9 while it writes shards
    (between its first shard and its manifest, timed on an uninterrupted run), rerun, compare every file."""
    folder = mkdir(work / "kill-prep")
    corpus = write_python_corpus(folder / "corpus", 12_000_000, files=48)

    def command(out: Path) -> list[str]:
        return [PY, "-m", "data_prep", "--input", str(corpus), "--out", str(out), "--shard-tokens", "200000",
                "--val-fraction", "0.1", "--workers", "2", "--quiet"]

    reference = folder / "straight"
    first, last = reference_run(command(reference), folder, lambda: first_shard(reference),
                                (reference / "manifest.json").exists)
    window = max(0.05, last - first)
    want = folder_bytes(reference)
    results = []
    for i in range(trials):
        kill = kill_mid_way(command, folder, f"trial{i}", first_shard,
                            lambda out: not (out / "manifest.json").exists(), window, rng)
        out = kill.out
        shards_left = len(list(out.glob("*.bin"))) if out.exists() else 0
        rerun = run(command(out), folder, 300)
        if rerun.rc != 0:
            results.append(Trial("kill-prep", i, False, f"the rerun failed (exit {rerun.rc}): {first_line(rerun)}"))
            continue
        got = folder_bytes(out)
        differing = sorted(set(got) ^ set(want) | {n for n in set(got) & set(want) if got[n] != want[n]})
        detail = (f"{kill.how()} {kill.delay:.2f} s after its first shard (of a {window:.1f} s window), "
                  f"{shards_left} of {len(want) - 1} shards complete; rerun: "
                  + ("every file identical" if not differing else f"files differ: {differing[:4]}"))
        results.append(Trial("kill-prep", i, not differing and kill.interrupted, detail))
    return results


# ---------------------------------------------------------------------------------------------
# report


OUTCOMES = ("clear", "traceback", "silently wrong", "other")


def summary_line(outcomes: list[Outcome], trials: list[Trial]) -> str:
    count = {o: sum(1 for x in outcomes if x.outcome == o) for o in OUTCOMES}
    train = [t for t in trials if t.kind == "kill-train"]
    prep = [t for t in trials if t.kind == "kill-prep"]
    return (f"bad inputs: {len(outcomes)} tried, {count['clear']} clear errors, {count['traceback']} tracebacks, "
            f"{count['silently wrong']} silently wrong, {count['other']} other; kill -9: "
            f"{sum(t.identical for t in train)}/{len(train)} resumes bit-identical, "
            f"{sum(t.identical for t in prep)}/{len(prep)} preparations identical")


def trim(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(outcomes: list[Outcome], trials: list[Trial]) -> None:
    name_w = max([len(f"{o.group}: {o.name}") for o in outcomes] + [10])
    print(f"{'case':<{name_w}}  {'outcome':<14}  first error line / why")
    for o in outcomes:
        print(f"{o.group + ': ' + o.name:<{name_w}}  {o.outcome:<14}  {trim(o.detail, 150)}")
    for t in trials:
        print(f"{t.kind} #{t.index}: {'identical' if t.identical else 'NOT identical'}: {t.detail}")


def git_state() -> dict[str, Any]:
    """The commit the sweep ran on and the files changed against it (the results are of that tree)."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "changed": git("status", "--porcelain").splitlines()}


def describe_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    if before["commit"] != after["commit"]:
        return f"commit {before['commit'][:12]} -> {after['commit'][:12]}"
    changed = sorted(set(after["changed"]) ^ set(before["changed"]))
    return f"uncommitted changes to {', '.join(line[3:] for line in changed[:5])}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="folder for fixtures, cases and reliability.json "
                                                         "(default: a new temporary folder)")
    p.add_argument("--kill-trials", type=int, default=5, help="kill -9 trials of each kind (default 5)")
    p.add_argument("--only", default=None, help="comma-separated groups: " + ", ".join([*GROUPS, *KILL_GROUPS]))
    p.add_argument("--match", default=None, metavar="TEXT",
                   help="only the cases whose 'group: name' contains TEXT (to rerun one)")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: random)")
    p.add_argument("--keep", action="store_true", help="keep the fixtures and case folders")
    args = p.parse_args(argv)
    known = {*GROUPS, *KILL_GROUPS}
    args.groups = set(args.only.split(",")) if args.only else known
    if args.groups - known:
        p.error(f"--only: unknown group(s) {', '.join(sorted(args.groups - known))}; "
                f"choose from {', '.join([*GROUPS, *KILL_GROUPS])}")
    if args.kill_trials < 0 or args.jobs < 1:
        p.error("--kill-trials must be >= 0 and --jobs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="gpt-ds-reliability-"))).resolve()
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ENV.update(command_env(work))
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    started = time.monotonic()
    git_before = git_state()

    print(f"building fixtures in {work / 'fixtures'} ...", flush=True)
    fx = build_fixtures(work)
    print(f"fixtures built in {time.monotonic() - started:.0f} s", flush=True)

    cases = [case for group, make in GROUPS.items() if group in args.groups for case in make()
             if args.match is None or args.match in f"{case.group}: {case.name}"]
    cases_dir = mkdir(work / "cases")
    outcomes: list[Outcome] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_case_safely, case, fx, cases_dir) for case in cases]
        for future in futures:  # in order, so the table is the case order
            o = future.result()
            outcomes.append(o)
            print(f"  [{len(outcomes)}/{len(cases)}] {o.group}: {o.name}: {o.outcome} ({o.seconds:.0f} s)",
                  flush=True)

    rng = random.Random(seed)
    trials: list[Trial] = []
    if "kill-train" in args.groups and args.kill_trials:
        trials += kill_train_trials(fx, work, args.kill_trials, rng)
    if "kill-prep" in args.groups and args.kill_trials:
        trials += kill_prep_trials(fx, work, args.kill_trials, rng)

    print()
    print_table(outcomes, trials)
    line = summary_line(outcomes, trials)
    seconds = time.monotonic() - started
    report = {"summary": line, "seconds": round(seconds), "kill_seed": seed, "python": sys.version.split()[0],
              "git": git_before, "git_after": git_state(),
              "cases": [dataclasses.asdict(o) for o in outcomes],
              "kill_trials": [dataclasses.asdict(t) for t in trials]}
    (out / "reliability.json").write_text(json.dumps(report, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if report["git_after"] != git_before:
        change = describe_change(git_before, report["git_after"])
        print(f"warning: the repository changed while the sweep ran ({change}); some results may be of the code "
              "before, some of the code after")
    train = [t for t in trials if t.kind == "kill-train"]
    tensors = f"; kill -9 resumes with equal tensors: {sum(bool(t.tensors_equal) for t in train)}/{len(train)}"
    print(f"\n{line}\n({seconds / 60:.1f} min{tensors if train else ''}; every case in {out / 'reliability.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
