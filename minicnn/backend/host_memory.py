"""Freed host memory kept for reuse: one call when the Numba backend loads.

A training step or an inference pass allocates its activations fresh (megabytes each) and frees
them a moment later. glibc's malloc serves such blocks from its heap while its dynamic mmap
threshold is above their size, but it gives the top of the heap back to the kernel whenever more
than its trim threshold lies free there, and the next pass then faults every page in again. On the
virtual machines we measure a fault costs several microseconds: ResNet14 inference at batch 1000
took ~500 ms a pass with 26,000-28,000 page faults, and ~300 ms with none.

glibc raises both thresholds by itself the first time a block that it had mapped on its own is
freed (the mmap threshold to that block's size, at most 32 MiB; the trim threshold to twice it),
as happens in any program that frees one large array. keep_freed_memory() makes that happen once,
with a 30 MiB block it never touches: afterwards up to 60 MiB of freed memory stays with the process
for reuse. Nothing else changes (no mallopt: a program's own settings, or MALLOC_*_ environment
variables, switch the dynamic thresholds off and win). MINICNN_KEEP_FREED=0 skips it; elsewhere than
Linux it does nothing.
"""
import os
import sys

import numpy as np

BLOCK_BYTES = 30 * 2**20          # under glibc's largest dynamic mmap threshold (32 MiB)

_done = False


def keep_freed_memory():
    """Raise glibc's dynamic thresholds once (see the module's docstring); later calls do nothing."""
    global _done
    if _done or os.environ.get("MINICNN_KEEP_FREED", "1") == "0" or not sys.platform.startswith("linux"):
        return
    _done = True
    block = np.empty(BLOCK_BYTES, dtype=np.uint8)        # mapped by malloc, never touched: no page faults
    del block                                            # freed: glibc raises its thresholds
