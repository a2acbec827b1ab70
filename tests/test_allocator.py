"""kit.allocator: importing kit fixes glibc's thresholds, so a forward pass reuses freed tensor
memory instead of faulting fresh pages in every batch; ``KIT_TUNE_MALLOC=0`` turns it off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import kit.allocator

# A forward whose activations (6.5 MB each) lie above glibc's starting mmap threshold; prints
# whether the allocator is tuned and the page faults of each of four blocks of ten forwards
# after a warm-up. Tuned, a block now and then faults one activation's pages in afresh (about
# 1600 faults, for reasons outside the kit: heap growth, the kernel reclaiming idle pages), so
# the test takes the tuned run's quietest block; the defaults fault in the first blocks (their
# noisiest is taken: glibc raises its threshold as it goes, so a late block can be quiet).
WORKLOAD = """
import resource, torch
import kit, kit.allocator
torch.set_num_threads(1)
net = torch.nn.Sequential(*[torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(6)]).eval()
x = torch.rand(4, 16, 160, 160)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
blocks = []
with torch.inference_mode():
    net(x)
    for _ in range(4):
        before = faults()
        for _ in range(10):
            net(x)
        blocks.append(faults() - before)
print(kit.allocator.tuned, *blocks)
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="mallopt is glibc's (Linux)")


def faults(tune: str) -> tuple[str, list[int]]:
    env = {**os.environ, kit.allocator.ENV: tune}
    out = subprocess.run([sys.executable, "-c", WORKLOAD], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], [int(n) for n in out[1:]]


@glibc_only
def test_importing_kit_tunes_the_allocator():
    assert kit.allocator.tuned and kit.allocator.tune_allocator()


@glibc_only
def test_tuned_forwards_reuse_memory_instead_of_faulting_pages_in():
    tuned, tuned_blocks = faults("1")
    plain, plain_blocks = faults("0")
    assert (tuned, plain) == ("True", "False")
    # glibc's defaults map and fault in activations again (about 10^5 faults in a block at
    # first); tuned, ten forwards reuse the pages of the warm-up
    plain_faults = max(plain_blocks)  # glibc's defaults can settle later (a block of 1600 seen)
    assert plain_faults > 20_000, plain_blocks
    assert min(tuned_blocks) < plain_faults / 20, (tuned_blocks, plain_blocks)


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
