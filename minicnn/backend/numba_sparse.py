"""The backward of a convolution fused with ReLU and 2x2 max pool, from the pool's winners alone
(numba_conv calls it; see the comment below). Measurements: benchmarks/history.md, "Numba strategy"."""
import numpy as np
from numba import njit

from .numba_common import FAST, _fill
from .simd import LANES, row_fma, sum_rows


# After relu_pool=True the gradient of the convolution's output is zero but at the winner of each
# 2x2 window, and there only where the ReLU let the value through: at most a quarter of the
# positions. The wide-GEMM backward multiplies every zero (and the wrapped columns of the wide
# layout) twice, then scatters 150 shifted rows. Here the nonzero entries are listed once per chunk
# (_pooled_gradient_entries), and each adds what it touches: dw[o] += v * the input window under it
# (_sparse_weight_grad), the gradient window under it += v * w[o] (_sparse_input_grad), one kernel
# row per vector operation (simd.row_fma: KW <= LANES taps), each kernel row of the weight gradient
# summed over a channel's entries in registers (simd.sum_rows). numba_strategy decides where it is
# used: kernels 5 to LANES wide, with more input channels than the direct sums take (a first layer's
# dense dot products beat it).
# The sum skips products by zero, which are zero only when the other factor is finite: a chunk
# whose input holds inf or NaN (or any call whose weights do) goes by the GEMMs, where 0 * inf
# makes NaN as in torch.


@njit(**FAST)
def _pooled_gradient_entries(dy, y, idx, Wp, sample, at, value, start, zero):
    """List the nonzero entries of the unpooled gradient of a chunk: each window's winner where the
    ReLU let it through (y > 0 or NaN, as _unpool_plane), whatever its dy. Entry m has gradient
    value[m] at pixel oh*Wp + ow of sample n's wide plane, at[m] = n*sample + oh*Wp + ow; channel o
    owns the entries start[o] to start[o + 1] - 1. dy, y, idx (n, OC, OH//2, OW//2).
    Branch-free: every window is written, the count moves on only for the kept ones."""
    N, OC, PH, PW = dy.shape
    m = 0
    for o in range(OC):
        start[o] = m
        for n in range(N):
            for ph in range(PH):
                for pw in range(PW):
                    k = idx[n, o, ph, pw]
                    at[m] = n * sample + (2 * ph + (k >> 1)) * Wp + 2 * pw + (k & 1)
                    value[m] = dy[n, o, ph, pw]
                    m += np.int64(not (y[n, o, ph, pw] <= zero))
    start[OC] = m


@njit(**FAST)
def _sparse_weight_grad(xp, at, value, start, row_offsets, acc, dw, db, zero):
    """dw[o] += the sum over o's entries of value * the window of xp (n, C, Hp*Wp) whose corner is
    the entry, db[o] += the sum of the values, for dw (OC, C, KH, KW). Window row r = (c, kh) lies
    at row_offsets[r] = c*Hp*Wp + kh*Wp from the corner; acc (R*LANES,) sums each row's KW taps
    (simd.sum_rows: over all of o's entries in registers, then once into acc)."""
    OC, C, KH, KW = dw.shape
    x, R = xp.reshape(-1), row_offsets.size
    for o in range(OC):
        _fill(acc, zero)
        total = zero
        for m in range(start[o], start[o + 1]):
            total += value[m]
        db[o] += total
        for r in range(R):
            sum_rows(acc, r * LANES, x, at, value, start[o], start[o + 1], row_offsets[r], KW)
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    dw[o, c, kh, kw] += acc[(c * KH + kh) * LANES + kw]


@njit(**FAST)
def _sparse_input_grad(w_rows, at, value, start, row_offsets, dxp, KW):
    """dxp (n, C, Hp*Wp), zeroed here: the sum over entries of value * w[o] laid on the window whose
    corner is the entry. w_rows (OC, R, LANES): the kernel rows (c, kh) of w, LANES apart."""
    OC, R = w_rows.shape[0], row_offsets.size
    dx, w = dxp.reshape(-1), w_rows.reshape(-1)
    _fill(dx, 0)
    for o in range(OC):
        for m in range(start[o], start[o + 1]):
            v, corner = value[m], at[m]
            for r in range(R):
                row_fma(dx, corner + row_offsets[r], w, (o * R + r) * LANES, v, KW)


@njit(**FAST)
def backward_chunk(xp, dy, y, idx, w_rows, row_offsets, Wp, KW, dxp, zero):
    """(dw, db) of one chunk, and its padded input gradient into dxp unless dxp has no samples:
    the entries listed, then both sums (see the comment above). One compiled call a chunk (the
    Python glue of three calls cost 13 % of a chunk). xp, dxp (n, C, Hp*Wp); dy, y, idx
    (n, OC, OH//2, OW//2); w_rows, row_offsets from kernel_rows."""
    OC, C, R = dy.shape[1], xp.shape[1], row_offsets.size
    at, value = np.empty(dy.size, dtype=np.int64), np.empty(dy.size, dtype=dy.dtype)
    start = np.empty(OC + 1, dtype=np.int64)
    _pooled_gradient_entries(dy, y, idx, Wp, xp.shape[1] * xp.shape[2], at, value, start, zero)
    dw, db = np.zeros((OC, C, R // C, KW), dtype=dy.dtype), np.zeros(OC, dtype=dy.dtype)
    _sparse_weight_grad(xp, at, value, start, row_offsets, np.empty(R * LANES, dtype=dy.dtype), dw, db, zero)
    if dxp.shape[0] > 0:
        _sparse_input_grad(w_rows, at, value, start, row_offsets, dxp, KW)
    return dw, db


def kernel_rows(w, plane, Wp):
    """What every chunk's sparse backward shares: w (OC, C, KH, KW) as (OC, C*KH, LANES), each kernel
    row LANES apart and zeros after its KW taps, and where each row (c, kh) of a window lies from its
    corner in planes of `plane` pixels and rows of Wp."""
    OC, C, KH, KW = w.shape
    rows = np.zeros((OC, C * KH, LANES), dtype=w.dtype)
    rows[:, :, :KW] = w.reshape(OC, C * KH, KW)
    return rows, (np.arange(C)[:, None] * plane + np.arange(KH)[None, :] * Wp).reshape(-1)
