"""Shared test set-up: the offline tiktoken cache, the test corpus, and paths to ../shared material.

The corpus every test trains on or prepares is the Python standard library's own sources (what
`data_prep.default_corpus()` falls back to), present on every machine: `python_corpus` cuts a fixed,
sorted selection of stdlib modules into folders of a stated size. The stdlib's text differs between
Python versions, so tests state sizes in bytes and never hard-code token counts of it.
Tests that need something else from ../shared (the tiktoken cache, the Slurm scripts) skip with the
reason when it is absent. (No test is about Shakespeare's text, so none needs ../shared/corpora.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# the tiktoken cache, as the product finds it (configured, beside the checkout, or inside it), for every
# subprocess too
from gpt_ds.tokenizer import tiktoken_cache_dir  # noqa: E402

_TIKTOKEN_CACHE = tiktoken_cache_dir()
if _TIKTOKEN_CACHE is not None:
    os.environ["TIKTOKEN_CACHE_DIR"] = _TIKTOKEN_CACHE

# gpt-ds's per-machine cache (the CPU's measured matmul peak) goes to a folder of this test session, not the
# user's home; training subprocesses inherit it.
_CACHE = tempfile.TemporaryDirectory(prefix="gpt-ds-test-cache-")
os.environ["GPT_DS_CACHE_DIR"] = _CACHE.name
# The training subprocesses' torch.compile caches stay where torch keeps them (gpt_ds.cache leaves a
# TORCHINDUCTOR_CACHE_DIR they start with alone): the suite's many short runs compile each shape once per
# machine, not once per session.
try:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
except ImportError:  # a torch that moved it: the tests then compile into GPT_DS_CACHE_DIR, as users do
    pass
else:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())

# The corpus: data_prep.stdlib_corpus (single-file stdlib modules of every supported Python, 3.10-3.14, in a
# fixed order: ~2.5 MB of text on 3.11, ~2.2 bytes per GPT-2 token), shared with the benches and the GPU check.
from data_prep.stdlib_corpus import write_python_corpus  # noqa: E402


@pytest.fixture(scope="session")
def python_corpus(tmp_path_factory) -> Callable[..., Path]:
    """A factory: python_corpus(total_bytes, files=1) -> a folder of `files` stdlib-source files of
    ~total_bytes together (see write_python_corpus), made once per session for each size."""
    made: dict[tuple[int, int], Path] = {}

    def make(total_bytes: int, files: int = 1) -> Path:
        key = (total_bytes, files)
        if key not in made:
            made[key] = write_python_corpus(tmp_path_factory.mktemp(f"python_corpus_{total_bytes}b_{files}files_"),
                                            total_bytes, files)
        return made[key]

    return make


@pytest.fixture(scope="session")
def stdlib_corpus(python_corpus) -> Path:
    """The training corpus of the multi-rank and reference tests: 8 files of 48 KB of stdlib sources
    (384 KB, ~170k GPT-2 tokens). With --val-fraction 0.25 (seed 1337) files 1 and 6 go to val."""
    return python_corpus(8 * 48_000, files=8)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def encoding():
    """The GPT-2 BPE; skips when neither a cache nor the network can provide it."""
    from gpt_ds.errors import UserError
    from gpt_ds.tokenizer import get_encoding

    try:
        return get_encoding()
    except UserError as err:
        pytest.skip(str(err))


@pytest.fixture
def small_disk(tmp_path):
    """A factory: small_disk(megabytes) -> an empty folder on a tmpfs of that size, mounted for this test
    (unmounted after it): a real file system that fills up. Skips where mounting is not allowed (not root)."""
    import subprocess

    mounts: list[Path] = []

    def make(megabytes: float) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(megabytes * 1024)}k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"a full-disk test mounts a small tmpfs, which needs root: {proc.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def one_rank():
    """This pytest process as rank 0 of 1 with torch.distributed started, for a module's tests that build an
    engine in-process. The environment fill_env sets (RANK, LOCAL_RANK, MASTER_PORT...; DeepSpeed's engine reads
    it) is restored after the module: later training subprocesses must not inherit it. The group itself stays
    until the session ends (DeepSpeed keeps its groups and cannot start twice in one process), and
    gpt_ds.errors.exit_process ends a process that started torch.distributed with os._exit: so the modules
    using this fixture sort after every module that runs a command's main() in-process (test_settings,
    test_slurm_submit)."""
    from gpt_ds import distributed

    environ = dict(os.environ)
    dist_env = distributed.fill_env()
    distributed.init(dist_env)
    yield dist_env
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture(scope="session")
def reference_shards(tmp_path_factory, stdlib_corpus, encoding) -> Path:
    """The stdlib corpus in small shards (so windows are drawn across several), no val split: the data of the
    step-by-step reference tests (test_reference, test_init_from)."""
    import data_prep

    out = tmp_path_factory.mktemp("reference") / "data"
    data_prep.prepare([str(stdlib_corpus)], out, val_fraction=0.0, shard_tokens=50_000, workers=1, verbose=False)
    return out
