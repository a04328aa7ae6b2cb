"""What the Numba backend's kernel modules share: compile flags, copy and fill loops, per-thread
scratch buffers, how a batch is cut into tasks, and the padded "wide" planes of the stride-1
convolutions (see numba_conv for the layout)."""
import math
import threading

import numpy as np
from numba import njit

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
    """xp (N, C, Hp*Wp): x placed at row PH, column PW of zeroed planes of row length Wp."""
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            plane = xp[n, c]
            _fill(plane, 0)
            for h in range(H):
                start = (h + PH) * Wp + PW
                _copy(plane[start:start + W], x[n, c, h])


@njit(**FAST)
def _crop_padding(xp, x, PH, PW, Wp):
    """x (N, C, H, W) = the interior of the padded wide planes xp (N, C, Hp*Wp)."""
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for h in range(H):
                _copy(x[n, c, h], xp[n, c, (h + PH) * Wp + PW:(h + PH) * Wp + PW + W])


def _padded_wide(x, PH, PW):
    """x (N, C, H, W) as wide planes (N, C, Hp*Wp): x itself without padding, else a new array
    that forward's tasks fill (_pad_wide), a chunk of samples each."""
    N, C, H, W = x.shape
    if PH == PW == 0:
        return x.reshape(N, C, H * W)
    return np.empty((N, C, (H + 2 * PH) * (W + 2 * PW)), dtype=x.dtype)


# At least MIN_TASKS tasks a layer, so that two cores share the work evenly although the second
# starts 20-100 us late (a sleeping thread's wake-up on these virtual machines); see numba_conv.
MIN_TASKS = 4


def _balanced_chunk(N, most):
    """Samples per chunk: at most `most`, in a multiple of MIN_TASKS chunks of equal size (but the
    last), so that 2 or 4 threads end together (measured: LeNet's second layer at batch 256 in six
    chunks of 51, 51, 51, 51, 51 and 1 sample left one thread idle for a whole chunk, 0.7 ms)."""
    n_chunks = -(-N // max(1, most))
    n_chunks = min(N, -(-n_chunks // MIN_TASKS) * MIN_TASKS)
    return -(-N // n_chunks)


_thread_scratch = threading.local()


def _scratch(role, shape, dtype):
    """A C-contiguous array of this shape, this thread's own, reused by every call: chunks of rows
    are megabytes, and a fresh array that size can cost its page faults every time (measured:
    LeNet's second layer, batch 256, backward on 2 threads 4.1 -> 2.7 ms with 16-sample chunks).
    Valid until the thread asks for the same role again; the memory stays with the thread, up to
    SCRATCH_KEEP_BYTES a role: larger arrays (a single sample of a huge image) are fresh each call,
    so that one big step does not hold its memory for the rest of the process."""
    buffers = _thread_scratch.__dict__
    size = math.prod(shape) * np.dtype(dtype).itemsize           # math.prod: np.prod costs 5 us
    if size > SCRATCH_KEEP_BYTES:
        return np.empty(shape, dtype=dtype)
    if role not in buffers or buffers[role].size < size:
        buffers[role] = np.empty(size, dtype=np.uint8)
    return buffers[role][:size].view(dtype).reshape(shape)


SCRATCH_KEEP_BYTES = 2**25


def _scratch_planes(role, shape, dtype):
    """_scratch for (16, rows, columns) arrays whose 16 planes a kernel writes or reads side by side:
    planes a multiple of 4 KB apart share the same L1 cache sets and evict each other (measured:
    storing one value to each of 16 planes of (64, 1600) float32 in turn, 3.8 ms; plane by plane,
    0.1 ms). So each plane starts 256 bytes further into the 4 KB cycle than the one before.
    Returns the planes (16, stride), C-contiguous, and the (16, rows, columns) view of them."""
    n_planes, plane = shape[0], shape[1] * shape[2]
    itemsize = np.dtype(dtype).itemsize
    stride = (-(-plane * itemsize // 4096) * 4096 + 256) // itemsize
    planes = _scratch(role, (n_planes * stride,), dtype).reshape(n_planes, stride)
    return planes, planes[:, :plane].reshape(shape)


def _sum_in_order(parts):
    """The chunks' (weight gradient, bias gradient) shares added in chunk order, whichever thread
    computed them: the order of additions, and so the bits, do not depend on the threads."""
    dw, db = parts[0]
    for dw_part, db_part in parts[1:]:
        dw, db = dw + dw_part, db + db_part
    return dw, db


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
