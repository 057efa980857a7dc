"""Replacing a library's attribute for the length of a call: `swapped`.

gpt-ds changes what DeepSpeed does in two places without copying DeepSpeed's code: the Muon
tagging inside `deepspeed.initialize` (gpt_ds.engine) and the checkpoint loads inside DeepSpeed's
functions (gpt_ds.safe_load). Each replaces one attribute with `swapped`, which names the reason,
and puts the original back however the block ends. `SWAPS` lists what is replaced and why.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

SWAPS: dict[str, str] = {}  # "owner.attribute" -> why it is replaced; filled as each swap is first used


@contextlib.contextmanager
def swapped(owner: Any, attribute: str, replacement: Any, *, why: str) -> Iterator[Any]:
    """`owner.attribute` is `replacement` within this block, and the original again after it, even on an
    error. Yields the original. `why` says what the replacement changes; it is recorded in SWAPS."""
    name = getattr(owner, "__name__", type(owner).__name__)
    SWAPS.setdefault(f"{name}.{attribute}", why)
    original = getattr(owner, attribute)
    setattr(owner, attribute, replacement)
    try:
        yield original
    finally:
        setattr(owner, attribute, original)
