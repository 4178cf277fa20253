"""The C allocator's settings for a process that values books with numpy.

A window's valuation makes temporary arrays of every holding (~800 KB each at 50 books x 2,000
holdings). glibc serves such a block with mmap and returns it with munmap, and gives the top of
its heap back to the system as soon as it is free, so each window faulted its arrays' pages in
afresh: 6.9-8.4 ms a window against 4.8-5.2 ms with blocks kept in the heap
(`monitor bench-fills`, the engine's window). The cost: up to TRIM_BYTES of freed memory stays
with the process.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_BYTES = 64 << 20  # blocks below this come from the heap
TRIM_BYTES = 128 << 20  # free memory at the heap's top kept rather than given back


def keep_freed_memory() -> bool:
    """Keep numpy's temporary arrays in the heap (see the module's docstring); False where the C
    library is not glibc (the settings do not exist there, and nothing changes)."""
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
