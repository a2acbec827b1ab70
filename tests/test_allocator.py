"""kit.allocator: importing kit fixes glibc's thresholds, so a forward pass reuses freed tensor
memory instead of faulting fresh pages in every batch (benchmarks/bench_allocator.py measures
that); ``KIT_TUNE_MALLOC=0`` turns it off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import kit.allocator

# Allocates one block of 16 MiB (above glibc's starting mmap threshold, below the kit's) in a
# process that imported torch and kit, frees it, and prints whether the allocator is tuned, the
# bytes glibc mapped for the block and the free bytes left on the heap afterwards (mallinfo2,
# glibc 2.33+). The thresholds decide both, so this checks them directly and the same way every
# time; what they buy (page faults and kernel time per forward) is a timing, measured by
# benchmarks/bench_allocator.py and not asserted here: the page faults of a process also move
# with the kernel reclaiming idle pages, so a fault-count test failed now and then.
BLOCK = """
import ctypes
import torch, kit, kit.allocator
libc = kit.allocator._libc()
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                              "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 * 2**20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(kit.allocator.tuned, mapped, libc.mallinfo2().fordblks)
"""
MIB = 2**20

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="mallopt is glibc's (Linux)")


def block_fate(tune: str) -> tuple[str, int, int]:
    """(tuned, bytes mapped for a 16 MiB block, free heap bytes once it is freed)."""
    env = {**os.environ, kit.allocator.ENV: tune}
    out = subprocess.run([sys.executable, "-c", BLOCK], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1]), int(out[2])


@glibc_only
def test_importing_kit_tunes_the_allocator():
    assert kit.allocator.tuned and kit.allocator.tune_allocator()


@glibc_only
@pytest.mark.skipif(not hasattr(kit.allocator._libc(), "mallinfo2"), reason="glibc before 2.33")
def test_tuned_heap_serves_and_keeps_an_activation_sized_block():
    tuned, tuned_mapped, tuned_free = block_fate("1")
    plain, plain_mapped, plain_free = block_fate("0")
    assert (tuned, plain) == ("True", "False")
    # tuned: the block comes from the heap and stays there, free, for the next batch
    assert tuned_mapped == 0 and tuned_free >= 16 * MIB, (tuned_mapped, tuned_free)
    # glibc's defaults (the control, so the check can fail): mapped apart and handed back
    assert plain_mapped >= 16 * MIB and plain_free < 16 * MIB, (plain_mapped, plain_free)


RELEASE = """
import numpy as np, psutil
import kit.allocator
rss = lambda: psutil.Process().memory_info().rss / 2**20
chunks = [np.ones(2**17) for _ in range(300)]  # 300 MiB in 1 MiB blocks, from the heap
above = np.ones(2**10)  # a live block above them: the heap's top cannot shrink past it
del chunks
before = rss()
released = kit.allocator.release_free_memory()
print(released, before - rss())
"""


@glibc_only
def test_release_hands_the_free_heap_back():
    """The tuned heap keeps the free memory below its last live block (and up to 256 MiB at
    its top); a run releases it before it begins, so its peak memory is its own."""
    env = {**os.environ, kit.allocator.ENV: "1"}
    out = subprocess.run([sys.executable, "-c", RELEASE], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert float(out[1]) > 200  # MiB handed back of the 300 freed
