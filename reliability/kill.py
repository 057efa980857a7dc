"""The kill -9 trials: a training run and a preparation killed at a random moment, rerun, and compared
byte for byte with an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import random
import shlex
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from data_prep.stdlib_corpus import write_python_corpus
from gpt_ds.checkpoint import read_latest, tag_for
from gpt_ds.data import MANIFEST_NAME
from gpt_ds.distributed import launcher_command
from gpt_ds.lock import LOCK_NAME
from gpt_ds.model_io import WEIGHTS_FILE
from reliability.cases import mkdir
from reliability.commands import PY, TINY, TRAIN, kill_group, run, start
from reliability.fixtures import Fixtures
from reliability.outcome import first_line


@dataclass
class Trial:
    kind: str        # kill-train | kill-prep
    index: int
    identical: bool  # interrupted for real, and the result is byte-identical
    detail: str
    tensors_equal: bool | None = None  # kill-train: the weights themselves equal (whatever the bytes)


def reference_run(argv: list[str], cwd: Path, env: dict[str, str], started: Callable[[], bool],
                  finished: Callable[[], bool]) -> tuple[float, float]:
    """Run `argv` to the end; the seconds at which started() and then finished() first held (polled)."""
    start_s = time.monotonic()
    log = cwd / "reference.log"
    with log.open("w") as sink:
        proc = start(argv, cwd, env, stdout=sink, stderr=subprocess.STDOUT)
    seen: list[float] = []
    while proc.poll() is None:
        if len(seen) < 2 and (finished if seen else started)():
            seen.append(time.monotonic() - start_s)
        time.sleep(0.01)
    kill_group(proc)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed ({proc.returncode}): {shlex.join(argv)}\n{log.read_text()[-3000:]}")
    total = time.monotonic() - start_s
    seen += [total] * (2 - len(seen))
    return seen[0], seen[1]


def kill_after(argv: list[str], cwd: Path, env: dict[str, str], started: Callable[[], bool], delay: float,
               timeout: float = 300) -> bool:
    """Start `argv`, SIGKILL its process group `delay` s after started() holds; whether it was still running."""
    proc = start(argv, cwd, env)
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


KILL_GROUPS = ("kill-train", "kill-prep")
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


def kill_mid_way(command: Callable[[Path], list[str]], folder: Path, env: dict[str, str], name: str,
                 started: Callable[[Path], bool], unfinished: Callable[[Path], bool], window: float,
                 rng: random.Random) -> Kill:
    """SIGKILL command(out) at a random moment within `window` s after started(out); redrawn (in a fresh
    folder) when the run had already finished, i.e. unfinished(out) no longer held at the kill."""
    for attempt in range(1, KILL_ATTEMPTS + 1):
        out = folder / (name if attempt == 1 else f"{name}_again{attempt}")
        delay = rng.uniform(0.0, 0.9 * window)
        alive = kill_after(command(out), folder, env, functools.partial(started, out), delay)
        if alive and unfinished(out):
            return Kill(out, delay, True, attempt)
    return Kill(out, delay, False, KILL_ATTEMPTS)


def latest(run_dir: Path) -> str:
    """The tag `latest` names in run_dir's checkpoints, "" before the first checkpoint."""
    return read_latest(run_dir / "checkpoints") or ""


KILL_STEPS = 16


def kill_train_trials(fx: Fixtures, work: Path, trials: int, rng: random.Random) -> list[Trial]:
    """2 ranks, KILL_STEPS steps, a checkpoint every 2: kill -9 between the first checkpoint and the last one
    (the moment drawn from the uninterrupted run's timing), rerun the same command, compare the weights."""
    folder = mkdir(work / "kill-train")
    flags = [*TINY, "--max-steps", str(KILL_STEPS), "--save-interval", "2", "--eval-interval", "8",
             "--eval-tokens", "256", "--sample-tokens", "0", "--log-interval", "1"]
    final = tag_for(KILL_STEPS)

    def command(out: Path) -> list[str]:
        return launcher_command(2, TRAIN, ["--deepspeed_config", str(fx.ds_config), "--data", str(fx.data),
                                   "--out", str(out), *flags])

    reference = folder / "straight"
    first, last = reference_run(command(reference), folder, fx.env, lambda: latest(reference) != "",
                                lambda: latest(reference) == final)
    window = max(0.1, last - first)
    want = (reference / "model" / WEIGHTS_FILE).read_bytes()
    results = []
    for i in range(trials):
        kill = kill_mid_way(command, folder, fx.env, f"trial{i}", lambda out: latest(out) != "",
                            lambda out: latest(out) != final, window, rng)
        out, left = kill.out, latest(kill.out) or "none"
        resumed = run(command(out), folder, fx.env, 300)
        got = out / "model" / WEIGHTS_FILE
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
    import torch
    from safetensors.torch import load

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
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != LOCK_NAME}


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
    first, last = reference_run(command(reference), folder, fx.env, lambda: first_shard(reference),
                                (reference / MANIFEST_NAME).exists)
    window = max(0.05, last - first)
    want = folder_bytes(reference)
    results = []
    for i in range(trials):
        kill = kill_mid_way(command, folder, fx.env, f"trial{i}", first_shard,
                            lambda out: not (out / MANIFEST_NAME).exists(), window, rng)
        out = kill.out
        shards_left = len(list(out.glob("*.bin"))) if out.exists() else 0
        rerun = run(command(out), folder, fx.env, 300)
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
