"""How a training process takes host memory from the OS: `keep_freed_memory()`.

glibc's malloc serves a large block (over 32 MB, or smaller ones past its adaptive threshold) with a fresh
mmap and gives it back to the OS when it is freed. A training step allocates such blocks every step (ZeRO's
float32 copies of the gradients, the flat buffers, the loss's chunks of logits), so every step the kernel
maps and zeroes the same memory again. On 2 CPU cores that was half of tiny's step (bench/recipe_step.py:
244 ms against 130 ms). `keep_freed_memory` tells malloc (mallopt) to serve every block from its heap and to
keep what is freed for reuse, as the allocators that PyTorch's CPU launcher preloads (jemalloc, tcmalloc) do.
The process's resident memory then stays near its peak between steps instead of shrinking. Elsewhere than
glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
KEEP_UP_TO = 2**31 - 1  # bytes of free memory at the heap's top that malloc keeps (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Serve every allocation of this process from malloc's heap and keep freed memory for reuse; True when
    glibc took both settings."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): its own policy stays
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
