"""Process-level tuning of the C allocator for reconstruction on a CPU.

A batched reconstruction allocates and frees many tensors of a few megabytes every step. With glibc's default
settings such blocks are handed back to the operating system when freed (memory-mapped blocks, or a trimmed
heap top), so the next step maps them again and the kernel zero-fills every page on first touch: thousands
of page faults a step. Keeping freed memory in the heap for reuse avoids that (on the project's 2-core machine,
16 images at once: from 5,000-10,000 page faults a step to a few hundred, and 8-18% less wall time in
alternating runs; ``benchmarks/speed.py --system-allocator`` measures without it).

This changes the whole process, so the library never calls it in its caller's process: the ``dgp`` command,
the worker processes that ``dgp batch`` and the quality benchmark start, and the benchmarks call
:func:`keep_freed_memory` once at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value: blocks up to 32 MiB come from the heap
_TRIM_THRESHOLD = 2**31 - 1  # give the heap's free top back only beyond 2 GiB (mallopt takes an int)
_TOP_PAD = 64 * 2**20  # grow the heap in steps of 64 MiB (address space; pages count only when touched)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MiB for reuse instead of returning them to the system.

    The peak memory of a process does not change (freed memory is reused, not returned); what stays resident
    after a peak is not handed back until the process ends.

    Returns:
        ``True`` when the settings were applied, ``False`` where the C library is not glibc (macOS, Windows,
        musl), which is harmless: those allocators keep their own policy.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
