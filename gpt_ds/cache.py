"""Where gpt-ds keeps what it learns about a machine across runs: GPT_DS_CACHE_DIR (default ~/.cache/gpt-ds).

- `peak_flops.json`: the CPU's measured matmul peak per dtype and thread count (gpt_ds.metrics);
- `inductor/`: torch.compile's on-disk caches (inductor's compiled graphs, AOTAutograd's), which the chunked loss
  and DeepSpeed's Muon fill at a run's first step. A second run of the same shape then loads instead of compiling:
  the quickstart's first step takes 17.5 s cold and 3.4 s warm on 2 CPU cores. torch's own default is under /tmp,
  which a reboot empties and another cluster node does not share; a home folder survives both.
"""

from __future__ import annotations

import os
from pathlib import Path

INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's own setting: when it is set, gpt-ds leaves it alone


def cache_dir() -> Path:
    """GPT_DS_CACHE_DIR, default ~/.cache/gpt-ds."""
    return Path(os.environ.get("GPT_DS_CACHE_DIR") or Path.home() / ".cache" / "gpt-ds")


def _given_at_start(name: str) -> bool:
    """Whether the environment this process started with sets `name`. Importing torch._dynamo (DeepSpeed does)
    writes torch's default into TORCHINDUCTOR_CACHE_DIR, so os.environ cannot tell a user's choice from torch's;
    the process's initial environment can (Linux: /proc/self/environ; elsewhere os.environ is the best guess)."""
    try:
        initial = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return name in os.environ
    return any(entry.startswith(name.encode() + b"=") for entry in initial)


def use_compile_cache() -> str:
    """Point torch.compile's on-disk caches at cache_dir()/inductor, unless the user set TORCHINDUCTOR_CACHE_DIR;
    call before compiling (inductor reads it at each compile). Returns the folder in use."""
    if not _given_at_start(INDUCTOR_ENV):
        os.environ[INDUCTOR_ENV] = str(cache_dir() / "inductor")
    return os.environ[INDUCTOR_ENV]
