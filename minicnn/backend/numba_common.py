"""What the Numba backend's kernel modules share: compile flags, copy and fill loops, per-thread
scratch buffers, how a batch is cut into tasks, and the padded "wide" planes of the stride-1
convolutions (see numba_conv for the layout)."""
import math
import threading

import numpy as np
from numba import njit

from . import cores, kernel_cache, numba_strategy
from .simd import copy_run

# Compile flags: cached on disk, no fast-math unless named (results stay IEEE), the GIL released
# so that minicnn's threads (backend.cores) run kernels at once.
FAST = dict(cache=True, fastmath=False, nogil=True)
DIRECT = dict(FAST, fastmath={"contract"})        # multiply-adds may fuse into FMA instructions
DOT = dict(FAST, fastmath={"contract", "reassoc"})   # dot products may keep vector partial sums
# Batch-norm statistics sum in float64; in strict order every add waits for the one before (a
# 4-cycle chain per element: FashionCNN spent a quarter of its step there). 'reassoc' lets LLVM
# keep several partial sums in vector registers: a fixed order still, repeatable, not sequential.
REDUCE = dict(FAST, fastmath={"reassoc"})


# Numba's slice assignment (a[i:j] = b) costs about 4x a plain loop over views at these row
# lengths, so the kernels copy and fill through these two.

@njit(cache=True, inline="always")
def _copy(dst, src):
    for i in range(dst.size):
        dst[i] = src[i]


@njit(cache=True, inline="always")
def _fill(dst, value):
    for i in range(dst.size):
        dst[i] = value


@njit(**DIRECT)
def _pad_wide(x, xp, PH, PW, Wp):
    """xp (N, C, R): x placed at row PH, column PW of zeroed planes of row length Wp. (The plane zeroed
    whole, then the rows: zeroing only the gaps between rows, in runs of their own, was slower.)"""
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            plane = xp[n, c]
            _fill(plane, 0)
            for h in range(H):
                copy_run(plane, (h + PH) * Wp + PW, x[n, c, h], 0, W)


@njit(**FAST)
def _crop_padding(xp, x, PH, PW, Wp):
    """x (N, C, H, W) = the interior of the padded wide planes xp (N, C, Hp*Wp)."""
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for h in range(H):
                copy_run(x[n, c, h], 0, xp[n, c], (h + PH) * Wp + PW, W)


def _padded_wide(x, PH, PW):
    """x (N, C, H, W) as wide planes (N, C, Hp*Wp): x itself without padding, else a new array
    that forward's tasks fill (_pad_wide), a chunk of samples each."""
    N, C, H, W = x.shape
    if PH == PW == 0:
        return x.reshape(N, C, H * W)
    return np.empty((N, C, (H + 2 * PH) * (W + 2 * PW)), dtype=x.dtype)


def _balanced_chunk(N, most):
    """Samples per chunk: at most `most`, in a multiple of the strategy's min_tasks chunks of equal
    size (but the last), so that 2 or 4 threads end together: the second thread starts 20-100 us
    late, and six chunks of 51, 51, 51, 51, 51 and 1 sample leave one thread idle for a whole chunk.
    An empty batch is one empty chunk."""
    if N == 0:
        return 1
    min_tasks = numba_strategy.current().min_tasks
    n_chunks = -(-N // max(1, most))
    n_chunks = min(N, -(-n_chunks // min_tasks) * min_tasks)
    return -(-N // n_chunks)


def _rows_chunk(N, bytes_per_sample):
    """Samples per task of a path whose task keeps bytes_per_sample of rows or planes a sample in
    the cache: at most the strategy's rows_chunk_bytes a task (and _balanced_chunk's even split)."""
    return _balanced_chunk(N, numba_strategy.current().rows_chunk_bytes // max(bytes_per_sample, 1))


_thread_scratch = threading.local()


def _scratch(role, shape, dtype, align=1):
    """A C-contiguous array of this shape, this thread's own, reused by every call: chunks of rows
    are megabytes, and a fresh array that size can cost its page faults every time. Valid until the
    thread asks for the same role again; the memory stays with the thread, up to the strategy's
    scratch_keep_bytes a role: larger arrays (a single sample of a huge image) are fresh each call,
    so that one big step does not hold its memory for the rest of the process. align: the array
    starts at a multiple of this many bytes (a vector kernel's loads then never split a cache line).
    The views handed out are remembered with the role's buffer (a step asks ~280 times for the same
    few: building each anew held the GIL ~1 ms a ResNet14 step), and forgotten when it grows."""
    entry = _thread_scratch.__dict__.get(role)
    if entry is not None:
        view = entry[1].get((shape, dtype, align))
        if view is not None:
            return view
    size = math.prod(shape) * np.dtype(dtype).itemsize           # math.prod: np.prod costs 5 us
    if size + align - 1 > numba_strategy.current().scratch_keep_bytes:
        return _aligned_view(np.empty(size + align - 1, dtype=np.uint8), size, shape, dtype, align)
    if entry is None or entry[0].size < size + align - 1:
        entry = _thread_scratch.__dict__[role] = (np.empty(size + align - 1, dtype=np.uint8), {})
    view = entry[1][(shape, dtype, align)] = _aligned_view(entry[0], size, shape, dtype, align)
    return view


def _aligned_view(buffer, size, shape, dtype, align):
    skip = -buffer.ctypes.data % align
    return buffer[skip:skip + size].view(dtype).reshape(shape)


def _scratch_planes(role, shape, dtype):
    """_scratch for (16, rows, columns) arrays whose 16 planes a kernel writes or reads side by side:
    planes a multiple of 4 KB apart share the same L1 cache sets and evict each other (38x slower),
    so each plane starts 256 bytes further into the 4 KB cycle than the one before.
    Returns the planes (16, stride), C-contiguous, and the (16, rows, columns) view of them."""
    n_planes, plane = shape[0], shape[1] * shape[2]
    itemsize = np.dtype(dtype).itemsize
    stride = (-(-plane * itemsize // 4096) * 4096 + 256) // itemsize
    planes = _scratch(role, (n_planes * stride,), dtype).reshape(n_planes, stride)
    return planes, planes[:, :plane].reshape(shape)


def _add_in_order(parts, out=None):
    """((parts[0] + parts[1]) + parts[2]) + ...: the chunks' shares of a gradient added in chunk
    order, whichever thread computed them, so the bits do not depend on the threads; into out
    when given (no temporaries), else into a fresh array."""
    if out is None:
        out = np.array(parts[0], copy=True)
    else:
        np.copyto(out, parts[0])
    for part in parts[1:]:
        np.add(out, part, out=out)
    return out


def _sum_in_order(parts):
    """The chunks' (weight gradient, bias gradient) shares, each added in chunk order (_add_in_order)."""
    return _add_in_order([dw for dw, _ in parts]), _add_in_order([db for _, db in parts])


def _defers_weight_grad(dw_may_wait, data_bytes):
    """Whether a convolution's backward hands its weight-gradient tasks to cores.defer: its caller
    lets dw come back unfinished, cores could leave tasks for later now (cores.deferrable), and the
    layer's backward data (data_bytes, all samples) fit the strategy's budget. Otherwise the tasks
    run in the backward's own run, beside dx's."""
    return dw_may_wait and cores.deferrable() and numba_strategy.defers_weight_grad(data_bytes)


def _input_grad(dxp, dx, x_shape):
    """The input gradient: the padded wide planes dxp as (N, C, H, W) when there was no padding,
    else dx, which the chunks filled from them (or None without an input gradient)."""
    if dxp is None:
        return None
    return dxp.reshape(x_shape) if dx is None else dx


@njit(**REDUCE)
def _all_finite(a):
    """Whether the 1-D array a holds no inf and no NaN (v * 0 is 0 exactly for finite v, else NaN).
    Callers pass flat views: one compiled function for every shape."""
    total = a.dtype.type(0)
    for i in range(a.size):
        total += a[i] * 0
    return total == 0


# Every kernel module imports this one before it defines a kernel: the cache they share is cleared
# here if it was compiled from other sources (Numba notices only changes to a kernel's own file).
kernel_cache.refresh(_all_finite)


# Per-sample (or per-channel) kernels run on chunks of samples (or channels), each its own task;
# the chunks write disjoint parts, so results are the same bits as one call. Tensors under the
# strategy's split_bytes stay one task (a handover costs 20-50 us).

def _by_samples(a, body):
    """body(part) for slices part of a's first axis, on the cores when a is large (nothing when empty)."""
    N = a.shape[0]
    if N == 0:
        return
    chunk = N if a.nbytes < numba_strategy.current().split_bytes else _balanced_chunk(N, N)
    cores.run(lambda i: body(slice(i * chunk, (i + 1) * chunk)), -(-N // chunk))


def _by_channels(a, body):
    """body(c_first, c_stop) for ranges of a's channels (axis 1), on the cores when a is large."""
    C = a.shape[1]
    if C == 0:
        return
    chunk = C if a.nbytes < numba_strategy.current().split_bytes else _balanced_chunk(C, C)
    cores.run(lambda i: body(i * chunk, min(C, (i + 1) * chunk)), -(-C // chunk))
