"""Handing the freed part of a process's C heap back to the OS (glibc's `malloc_trim`).

Why the learner needs it (the likely path; the retention itself was measured): glibc raises
its mmap threshold (up to 32 MiB) each time a large mmapped block is freed, so after the
first updates the PPO temporaries of tens of MB come from the heap; what they leave free in
the middle of it stays resident, and the heap's footprint creeps up as it fragments. In a
60-minute soak the learner's RSS grew by a third; capped at 2 malloc arenas it still went
from 640 to 885 MB of RssAnon in 8 minutes. Seen with gdb 14 minutes in: the main heap held
714 MB of which 231 MB were in use, and `malloc_trim(0)` took RssAnon from 858 to 398 MB
(docs/soak.md). A trim takes about 14 ms and the update after it faults its pages back in:
after every update that cost 11% (`keisei-ray bench trim`), so the learner trims every
`train.learner_heap_trim_s` instead.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

_Trim = Callable[[int], int]


def _find_malloc_trim() -> _Trim | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the symbols this process already has: its C library among them
    trim = getattr(libc, "malloc_trim", None)  # glibc has it; musl, for one, does not
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def can_release_heap() -> bool:
    """Whether this process's C library can hand freed heap memory back (glibc)."""
    return _MALLOC_TRIM is not None


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS; True if any were (False: none, or no glibc)."""
    return _MALLOC_TRIM is not None and _MALLOC_TRIM(0) == 1
