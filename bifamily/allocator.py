"""Keep freed memory inside the process, so a CPU training step does not fault in fresh pages.

A training step allocates and frees the same large activation tensors every step. glibc's malloc
serves large requests with mmap and returns them to the kernel on free (and trims the top of the heap
once enough is free), so the next step's tensors are new pages that the kernel must zero and map:
about 100,000 page faults and a tenth of a second of kernel time per ``bigbigan_small`` step on this
project's CPU. Raising glibc's mmap and trim thresholds keeps that memory in the heap for reuse.
The effect on the resident size is small (the heap keeps its high-water mark, which the peak was
anyway). Other C libraries have no ``mallopt``; there this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1  # an int; as good as never


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds for this process (once); whether it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt (musl, macOS)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
