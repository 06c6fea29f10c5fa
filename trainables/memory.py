"""Give the memory a finished trial freed back to the operating system.

Ray reuses a worker process for trial after trial (`reuse_actors`), and runs each trial's function in a
new thread. glibc's malloc keeps what a thread freed in that thread's arena instead of returning it, so a
reused CPU worker's resident memory grew by about the size of one trial's training state (weights, best
weights, Adam's moments, checkpoint) with every trial: 0.5 GB per ResNet50 trial, 6 GB after a dozen
(BENCHMARKS.md, "Trial worker memory"), until Ray's memory monitor killed workers. `malloc_trim(0)` hands
the free pages of every arena back. Python objects and tensors are unaffected: only memory already freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc_malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Collect unreachable Python objects, then return the C heap's free pages to the system; True when
    the C library could (glibc), False where there is nothing to call."""
    gc.collect()
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
