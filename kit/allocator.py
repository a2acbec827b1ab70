"""glibc's memory allocator, set for PyTorch on the CPU: freed tensor memory is reused, not
handed back to the kernel and faulted in again.

By default glibc serves every allocation above its *mmap threshold* (128 KiB at start, raised
as large blocks are freed) with a fresh ``mmap`` and returns it with ``munmap`` on free, and it
trims the top of the heap once more than its *trim threshold* lies free there. A CNN forward
allocates and frees activation tensors of a few MiB each, every layer, every batch, so each
batch maps fresh pages that the kernel must fault in and zero, which shows as kernel time and
page faults beside the forward (``benchmarks/bench_allocator.py`` measures both). Fixing both
thresholds (``mallopt``) keeps blocks up to :data:`MMAP_THRESHOLD` in the heap and up to
:data:`TRIM_THRESHOLD` of free memory on it, so later batches reuse the pages.

:func:`tune_allocator` runs once when ``kit`` is imported (the CLI, the dashboard, the
notebooks, a grid's workers). ``KIT_TUNE_MALLOC=0`` turns it off. It does nothing on other C
libraries (macOS, musl), which have their own allocators.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit (4 * 1024 * 1024 * sizeof(long))
TRIM_THRESHOLD = 256 * 2**20  # free memory kept at the heap's top: reuse over a smaller RSS
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
ENV = "KIT_TUNE_MALLOC"

tuned = False  # whether this process runs with the thresholds above


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True if they are set now.

    Both together: setting either one alone stops glibc adapting the other, and on its own
    each made the forward slower than the defaults."""
    global tuned
    if tuned:
        return True
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # a C library without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    tuned = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
             and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    return tuned


def release_free_memory() -> bool:
    """Collect Python's garbage and hand every free page of the heap back to the kernel
    (glibc's ``malloc_trim``); True if glibc did. A run calls it before it begins: in a process
    that makes several runs (a grid's worker, a notebook) the heap an earlier run left would
    otherwise count in the next run's peak memory. The pages are faulted in again once, not
    every batch. ONNX Runtime's open sessions (``kit.ort``) are closed too."""
    ort = sys.modules.get("kit.ort")
    if ort is not None:
        ort.drop_sessions()
    gc.collect()
    if not tuned:
        return False
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
