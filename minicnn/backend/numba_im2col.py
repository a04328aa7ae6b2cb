"""The im2col path on the Numba backend (strided convolutions) and its matrix products on the cores.

A layer's matrix product (Linear, the im2col convolution) is cut along the longer side of its result
into parts, each a task with single-threaded BLAS (backend.cores). Every task packs the whole of the
operand it shares, so cutting the short side costs more packing than it saves. The parts depend only
on the shapes: OpenBLAS's result for an element depends on how many rows and columns it was given,
so cutting by the thread count would make the bits depend on it. Small products are one task:
handing a task to a sleeping thread costs 20-100 us.
Index formulas (input row ih, kernel row kh, stride SH, padding PH): ih = oh * SH - PH + kh.
"""
import numpy as np
from numba import njit

from . import cores, im2col_conv, numba_strategy, numpy_ops
from .numba_common import FAST

output_size = im2col_conv.output_size


# ---------------------------------------------------------------- matrix products

def matmul(a, b):
    """a @ b, as numpy_ops.matmul, shared out to the cores when it is large."""
    if a.ndim != 2 or b.ndim != 2:
        with cores.one_blas_thread():
            return numpy_ops.matmul(a, b)
    strategy = numba_strategy.current()
    M, N = a.shape[0], b.shape[1]
    flops = 2 * M * a.shape[1] * N
    n_tasks = max(1, min(strategy.matmul_max_tasks, max(M, N) // 16, flops // strategy.matmul_task_flops))
    if n_tasks == 1 or a.shape[1] == 1:
        with cores.one_blas_thread():
            return numpy_ops.matmul(a, b)
    out = np.empty((M, N), dtype=np.result_type(a, b))
    step = -(-max(M, N) // n_tasks)

    def column_block(i):            # strided, still one BLAS call
        cols = slice(i * step, (i + 1) * step)
        np.matmul(a, b[:, cols], out=out[:, cols])

    def row_block(i):
        rows = slice(i * step, (i + 1) * step)
        np.matmul(a[rows], b, out=out[rows])

    cores.run(column_block if M < N else row_block, -(-max(M, N) // step))
    return out


def conv_backward_gemms(dy, col, W_col, has_bias, input_grad):
    """numpy_ops' three gradient products, on one BLAS thread (minicnn's threads share the cores)."""
    with cores.one_blas_thread():
        return numpy_ops._conv_backward_gemms(dy, col, W_col, has_bias, input_grad)


# ---------------------------------------------------------------- im2col and col2im

@njit(cache=True, inline="always")
def _taps_inside(w0, W, KW, DW):
    """The kernel columns [lo, hi) whose input column w0 + kw*DW lies in [0, W): a contiguous
    range, so the loops below copy it and zero-fill the rest without a test per tap."""
    lo = min(KW, max(0, -(w0 // DW)))                  # ceil(-w0 / DW) for w0 < 0
    hi = max(lo, min(KW, -((w0 - W) // DW)))           # ceil((W - w0) / DW)
    return lo, hi


@njit(**FAST)
def _im2col(x, col, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW):
    N, C, H, W = x.shape
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                row = (n * OH + oh) * OW + ow
                w0 = ow * SW - PW
                kw_lo, kw_hi = _taps_inside(w0, W, KW, DW)
                for c in range(C):
                    for kh in range(KH):
                        k0 = (c * KH + kh) * KW
                        ih = oh * SH - PH + kh * DH
                        if ih < 0 or ih >= H:
                            for kw in range(KW):
                                col[row, k0 + kw] = 0
                            continue
                        for kw in range(kw_lo):
                            col[row, k0 + kw] = 0
                        for kw in range(kw_lo, kw_hi):
                            col[row, k0 + kw] = x[n, c, ih, w0 + kw * DW]
                        for kw in range(kw_hi, KW):
                            col[row, k0 + kw] = 0


def im2col(x, kernel_size, stride, padding, dilation):
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH, DH), output_size(W, KW, SW, PW, DW)
    col = np.empty((N * OH * OW, C * KH * KW), dtype=x.dtype)
    _im2col(np.ascontiguousarray(x), col, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)
    return col


@njit(**FAST)
def _col2im(col, dx, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW):
    """Sample by sample, col read in memory order (the fast direction): the summation order is
    fixed. Taps in the padding are skipped by clipping the kernel-column range once per output pixel."""
    N, C, H, W = dx.shape
    for n in range(N):
        dx[n] = 0
        for oh in range(OH):
            for ow in range(OW):
                row = (n * OH + oh) * OW + ow
                w0 = ow * SW - PW
                kw_lo, kw_hi = _taps_inside(w0, W, KW, DW)
                for c in range(C):
                    for kh in range(KH):
                        ih = oh * SH - PH + kh * DH
                        if ih < 0 or ih >= H:
                            continue
                        k0 = (c * KH + kh) * KW
                        for kw in range(kw_lo, kw_hi):
                            dx[n, c, ih, w0 + kw * DW] += col[row, k0 + kw]


def col2im(col, x_shape, kernel_size, stride, padding, dilation):
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, SH, PH, DH), output_size(W, KW, SW, PW, DW)
    dx = np.empty(x_shape, dtype=col.dtype)
    _col2im(np.ascontiguousarray(col), dx, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)
    return dx
