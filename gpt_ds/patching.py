"""Replacing a library's attribute: for the length of a call (`swapped`), or for the process (`replace`).

gpt-ds changes what DeepSpeed does in four places without copying DeepSpeed's code: the Muon
tagging inside `deepspeed.initialize` (gpt_ds.engine) and the checkpoint loads inside DeepSpeed's
functions (gpt_ds.safe_load), each with `swapped`, which puts the original back however the block
ends; the CPU collectives of a run's process group (gpt_ds.host_collectives) and the gradient norm and
overflow scan of a ZeRO optimizer (gpt_ds.zero_step), with `replace`.
Both name the reason; `SWAPS` lists what is replaced and why.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

SWAPS: dict[str, str] = {}  # "owner.attribute" -> why it is replaced; filled as each swap is first used


@contextlib.contextmanager
def swapped(owner: Any, attribute: str, replacement: Any, *, why: str) -> Iterator[Any]:
    """`owner.attribute` is `replacement` within this block, and the original again after it, even on an
    error. Yields the original. `why` says what the replacement changes; it is recorded in SWAPS."""
    original = replace(owner, attribute, replacement, why=why)
    try:
        yield original
    finally:
        setattr(owner, attribute, original)


def replace(owner: Any, attribute: str, replacement: Any, *, why: str) -> Any:
    """`owner.attribute` is `replacement` from now on (an object that lives as long as the process, such as
    DeepSpeed's communication backend). Returns the original. `why` is recorded in SWAPS."""
    name = getattr(owner, "__name__", type(owner).__name__)
    SWAPS.setdefault(f"{name}.{attribute}", why)
    original = getattr(owner, attribute)
    setattr(owner, attribute, replacement)
    return original
