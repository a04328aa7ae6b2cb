"""Numba-compiled CPU primitives, the same functions and signatures as numpy_ops.

Each kernel is a plain single-threaded loop nest compiled by Numba. The cores are used by
cutting a layer's work into tasks (a chunk of samples each) that run on minicnn's own threads
(backend.cores): the stride-1 convolutions and large matrix products do this. Backward passes
that fold windows back onto the input (col2im, pooling) scatter-add within a sample, so the
order of additions is fixed and results are repeatable bit for bit, on any number of threads.
Index formulas (for input row ih, kernel row kh, stride SH, padding PH):
    ih = oh * SH - PH + kh        and conversely   oh = (ih + PH - kh) / SH  when it divides.
GEMMs stay in NumPy's BLAS, held to one thread per task (see cores for why).
"""
import math
import threading

import numpy as np
from numba import njit

from . import cores, numpy_ops
from .simd import LANES, row_fma, sum_rows

name = "numba"
xp = np
output_size = numpy_ops.output_size
dropout_mask = numpy_ops.dropout_mask
log_softmax = numpy_ops.log_softmax
FUSES_CONV_RELU_POOL = True      # conv2d_stride1_forward(relu_pool=True), see nn.fused
pass_scope = cores.one_blas_thread  # see backend.pass_scope

FAST = dict(cache=True, fastmath=False, nogil=True)
DIRECT = dict(FAST, fastmath={"contract"})        # multiply-adds may fuse into FMA instructions
DOT = dict(FAST, fastmath={"contract", "reassoc"})   # dot products may keep vector partial sums
# Batch-norm statistics sum in float64; in strict order every add waits for the one before (a
# 4-cycle chain per element: FashionCNN spent a quarter of its step there). 'reassoc' lets LLVM
# keep several partial sums in vector registers: a fixed order still, repeatable, not sequential.
REDUCE = dict(FAST, fastmath={"reassoc"})
# Stride-1 convolutions with at most DIRECT_MAX_CHANNELS input channels sum their taps in Numba
# loops (direct), forward and backward; wider ones through a GEMM. Forward sums them directly up to
# DIRECT_FORWARD_MAX_CHANNELS for kernel widths 3 and 5 (the widths with row kernels), four output
# channels per sweep; their backward still goes by the GEMM (or, fused with ReLU and pool, from the
# pool's winners: see "backward through ReLU and pool"). Measured on 2 Xeon cores (Emerald
# Rapids), batch 64, forward with ReLU and pool, direct / GEMM: 6 -> 16 channels 5x5 (LeNet) 0.64 /
# 0.98 ms, 10 -> 20 (ConvNet, unfused) 1.11 / 1.55, 16 -> 32 1.75 / 1.70, 32 -> 64 7.1 / 4.4.
# The direct backward kernels (one output channel at a time) lose to the GEMM from 6 channels on.
DIRECT_MAX_CHANNELS = 3
DIRECT_FORWARD_MAX_CHANNELS = 12
WINOGRAD = True          # wider 3x3 ones by Winograd's F(2x2, 3x3) (see its section), not the GEMM


# ---------------------------------------------------------------- matrix products

# A layer's matrix product (Linear, the im2col convolution) on the cores: the longer side of the
# result is cut into parts, each part a task with single-threaded BLAS. Every task packs the whole
# of the operand it shares, so cutting the short side costs more packing than it saves (measured on
# 2 AMD EPYC cores, MnistCNN's Linear(1600, 512) at batch 64, forward / input gradient: 16-row parts
# 0.88 / 1.04 ms, 64-column parts 0.57 / 0.57 ms; OpenBLAS's own 2 threads about 0.85 ms each).
# The parts depend only on the shapes: OpenBLAS's result for an element depends on how many rows
# and columns it was given, so cutting by the thread count would make the bits depend on it.
# Small products are one task: handing a task to a sleeping thread costs 20-100 us.
MATMUL_TASK_FLOPS = 2**23          # about 70 us of one core's float32 GEMM
MATMUL_MAX_TASKS = 8


def matmul(a, b):
    """a @ b, as numpy_ops.matmul, shared out to the cores when it is large."""
    if a.ndim != 2 or b.ndim != 2:
        with cores.one_blas_thread():
            return numpy_ops.matmul(a, b)
    M, N = a.shape[0], b.shape[1]
    flops = 2 * M * a.shape[1] * N
    n_tasks = max(1, min(MATMUL_MAX_TASKS, max(M, N) // 16, flops // MATMUL_TASK_FLOPS))
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


def conv_backward_gemms(dy, col, W_col, bias, input_grad):
    with cores.one_blas_thread():
        return numpy_ops.conv_backward_gemms(dy, col, W_col, bias, input_grad)


# ---------------------------------------------------------------- convolution

@njit(**FAST)
def _im2col(x, col, KH, KW, SH, SW, PH, PW, OH, OW):
    """Per output pixel, the kernel columns that land inside the image are [kw_lo, kw_hi): the
    inner loop copies that contiguous run and zero-fills the rest, with no test per tap."""
    N, C, H, W = x.shape
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                row = (n * OH + oh) * OW + ow
                w0 = ow * SW - PW
                kw_lo, kw_hi = max(0, -w0), min(KW, W - w0)
                for c in range(C):
                    for kh in range(KH):
                        k0 = (c * KH + kh) * KW
                        ih = oh * SH - PH + kh
                        if ih < 0 or ih >= H:
                            for kw in range(KW):
                                col[row, k0 + kw] = 0
                            continue
                        for kw in range(kw_lo):
                            col[row, k0 + kw] = 0
                        for kw in range(kw_lo, kw_hi):
                            col[row, k0 + kw] = x[n, c, ih, w0 + kw]
                        for kw in range(kw_hi, KW):
                            col[row, k0 + kw] = 0


def im2col(x, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    col = np.empty((N * OH * OW, C * KH * KW), dtype=x.dtype)
    _im2col(np.ascontiguousarray(x), col, KH, KW, SH, SW, PH, PW, OH, OW)
    return col


@njit(**FAST)
def _col2im(col, dx, KH, KW, SH, SW, PH, PW, OH, OW):
    """Sample by sample, col read in memory order (the fast direction): the summation order is
    fixed. Taps in the padding are skipped by clipping the kernel-column range once per output pixel."""
    N, C, H, W = dx.shape
    for n in range(N):
        dx[n] = 0
        for oh in range(OH):
            for ow in range(OW):
                row = (n * OH + oh) * OW + ow
                w0 = ow * SW - PW
                kw_lo, kw_hi = max(0, -w0), min(KW, W - w0)
                for c in range(C):
                    for kh in range(KH):
                        ih = oh * SH - PH + kh
                        if ih < 0 or ih >= H:
                            continue
                        k0 = (c * KH + kh) * KW
                        for kw in range(kw_lo, kw_hi):
                            dx[n, c, ih, w0 + kw] += col[row, k0 + kw]


def col2im(col, x_shape, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    dx = np.empty(x_shape, dtype=col.dtype)
    _col2im(np.ascontiguousarray(col), dx, KH, KW, SH, SW, PH, PW, OH, OW)
    return dx


# ---------------------------------------------------------------- stride-1 convolution: direct or wide GEMM
# For few input channels im2col is all overhead: LeNet's first layer copies each pixel 25 times
# into a column matrix that then feeds a 6-column GEMM. Here each output plane is accumulated
# directly as a sum of shifted input planes, one multiply-add sweep per kernel row (or per tap),
# four output planes at a time.
# The "wide" layout makes every sweep one contiguous, vectorizable loop: a padded input plane of
# width Wp is read as a flat vector, and output pixel (oh, ow) sits at i = oh*Wp + ow, so tap
# (kh, kw) reads xp[i + kh*Wp + kw] for all i at once. Positions ow >= OW (the last KW-1 of each
# wide row) wrap into the next row; they are computed, never used, and zero in the wide dy.
#     xp  (N, C, Hp*Wp)   y_wide (OH-1)*Wp + OW = L     valid outputs: i % Wp < OW
# Inner loops index array views with a plain range() counter: Numba then proves the index is
# non-negative and vectorizes; `a[off + i]` would keep a negative-index check and stay scalar.
# FMA contraction is on, so results may differ from mul-then-add in the last bit.

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


# The forward sweeps compute OUT_BLOCK output channels at once: each shifted input row is loaded
# once for all of them and their taps stay in registers (4 channels x 5 taps + 4 + 5 vectors fit
# AVX-512's 32 registers), so a sweep does 20 multiply-adds per 9 loads and 4 stores instead of
# 5 per 6 and 1. Measured on one Xeon core (Emerald Rapids), batch 64, forward with ReLU and pool:
# LeNet's second layer (6 -> 16 channels) 6.1 ms one channel at a time, 1.19 ms four at a time
# (1.73 ms by the wide GEMM). Weights and biases are padded with zero channels to a multiple of
# OUT_BLOCK (the padded channels are computed and dropped).
OUT_BLOCK = 4                # the sweeps below are written for four: not a tuning knob


def _blocked(w, b):
    """w (OC, C, KH, KW) and b (OC,) padded with zero output channels to a multiple of OUT_BLOCK."""
    OC = w.shape[0]
    padded = -(-OC // OUT_BLOCK) * OUT_BLOCK
    if padded == OC:
        return np.ascontiguousarray(w), np.ascontiguousarray(b)
    w4, b4 = np.zeros((padded,) + w.shape[1:], dtype=w.dtype), np.zeros(padded, dtype=b.dtype)
    w4[:OC], b4[:OC] = w, b
    return w4, b4


@njit(cache=True, inline="always")
def _sum_taps(acc, xp_n, w4, b4, Wp):
    """acc (4, L) = b4[j] + the sum over taps (c, kh, kw) of w4[j, c, kh, kw] * xp_n[c] shifted by
    kh*Wp + kw, in that order, for the 4 output channels j of w4 (4, C, KH, KW). The common kernel
    widths 3 and 5 add a whole kernel row per sweep (a third of the loads and stores of acc); other
    widths sweep once per tap. Each width is its own compiled function: with all three inlined
    into one loop nest LLVM kept the taps out of registers (LeNet's second layer 2.2x slower)."""
    if w4.shape[3] == 5:
        _sum_taps_of_5(acc, xp_n, w4, b4, Wp)
    elif w4.shape[3] == 3:
        _sum_taps_of_3(acc, xp_n, w4, b4, Wp)
    else:
        _sum_taps_any(acc, xp_n, w4, b4, Wp)


@njit(**DIRECT)
def _sum_taps_of_5(acc, xp_n, w4, b4, Wp):
    for j in range(4):
        _fill(acc[j], b4[j])
    for c in range(w4.shape[1]):
        for kh in range(w4.shape[2]):
            _add_row_of_5(acc, xp_n[c, kh * Wp:], w4[:, c, kh], acc.shape[1])


@njit(**DIRECT)
def _sum_taps_of_3(acc, xp_n, w4, b4, Wp):
    for j in range(4):
        _fill(acc[j], b4[j])
    for c in range(w4.shape[1]):
        for kh in range(w4.shape[2]):
            _add_row_of_3(acc, xp_n[c, kh * Wp:], w4[:, c, kh], acc.shape[1])


@njit(**DIRECT)
def _sum_taps_any(acc, xp_n, w4, b4, Wp):
    L = acc.shape[1]
    for j in range(4):
        a = acc[j]
        _fill(a, b4[j])
        for c in range(w4.shape[1]):
            for kh in range(w4.shape[2]):
                row = xp_n[c, kh * Wp:]
                for kw in range(w4.shape[3]):
                    tap, src = w4[j, c, kh, kw], row[kw:kw + L]
                    for i in range(L):
                        a[i] += tap * src[i]


@njit(cache=True, inline="always")
def _add_row_of_3(acc, row, w, L):
    """acc[j] += w[j, 0] * row[0:L] + w[j, 1] * row[1:1+L] + w[j, 2] * row[2:2+L], j = 0..3."""
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    s0, s1, s2 = row[0:L], row[1:1 + L], row[2:2 + L]
    k0, k1, k2, k3 = (w[0, 0], w[0, 1], w[0, 2]), (w[1, 0], w[1, 1], w[1, 2]), \
        (w[2, 0], w[2, 1], w[2, 2]), (w[3, 0], w[3, 1], w[3, 2])
    for i in range(L):
        v0, v1, v2 = s0[i], s1[i], s2[i]
        a0[i] = a0[i] + k0[0] * v0 + k0[1] * v1 + k0[2] * v2
        a1[i] = a1[i] + k1[0] * v0 + k1[1] * v1 + k1[2] * v2
        a2[i] = a2[i] + k2[0] * v0 + k2[1] * v1 + k2[2] * v2
        a3[i] = a3[i] + k3[0] * v0 + k3[1] * v1 + k3[2] * v2


@njit(cache=True, inline="always")
def _add_row_of_5(acc, row, w, L):
    """acc[j] += the sum over kw < 5 of w[j, kw] * row[kw:kw+L], in that order, j = 0..3."""
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    s0, s1, s2, s3, s4 = row[0:L], row[1:1 + L], row[2:2 + L], row[3:3 + L], row[4:4 + L]
    k0 = (w[0, 0], w[0, 1], w[0, 2], w[0, 3], w[0, 4])
    k1 = (w[1, 0], w[1, 1], w[1, 2], w[1, 3], w[1, 4])
    k2 = (w[2, 0], w[2, 1], w[2, 2], w[2, 3], w[2, 4])
    k3 = (w[3, 0], w[3, 1], w[3, 2], w[3, 3], w[3, 4])
    for i in range(L):
        v0, v1, v2, v3, v4 = s0[i], s1[i], s2[i], s3[i], s4[i]
        a0[i] = a0[i] + k0[0] * v0 + k0[1] * v1 + k0[2] * v2 + k0[3] * v3 + k0[4] * v4
        a1[i] = a1[i] + k1[0] * v0 + k1[1] * v1 + k1[2] * v2 + k1[3] * v3 + k1[4] * v4
        a2[i] = a2[i] + k2[0] * v0 + k2[1] * v1 + k2[2] * v2 + k2[3] * v3 + k2[4] * v4
        a3[i] = a3[i] + k3[0] * v0 + k3[1] * v1 + k3[2] * v2 + k3[3] * v3 + k3[4] * v4


@njit(**DIRECT)
def _direct_conv_forward(xp, w4, b4, y, Wp):
    """y (N, OC, OH, OW) from the padded wide planes xp (N, C, Hp*Wp); w4, b4 padded (_blocked)."""
    N, OC, OH, OW = y.shape
    L = (OH - 1) * Wp + OW
    acc = np.empty((4, L), dtype=y.dtype)
    for n in range(N):
        for o in range(0, OC, 4):
            _sum_taps(acc, xp[n], w4[o:o + 4], b4[o:o + 4], Wp)
            for j in range(min(4, OC - o)):
                for oh in range(OH):
                    _copy(y[n, o + j, oh], acc[j, oh * Wp:oh * Wp + OW])


@njit(**DIRECT)
def _direct_conv_relu_pool_forward(xp, w4, b4, y, idx, Wp, L, zero):
    """The direct forward with the 2x2 max pool and ReLU applied to each output plane while it is
    in the cache: y (N, OC, OH//2, OW//2) and the winners idx; the plane itself is never stored."""
    N, OC = y.shape[0], y.shape[1]
    acc = np.empty((4, L), dtype=y.dtype)
    for n in range(N):
        for o in range(0, OC, 4):
            _sum_taps(acc, xp[n], w4[o:o + 4], b4[o:o + 4], Wp)
            for j in range(min(4, OC - o)):
                _relu_pool_plane(acc[j], zero, Wp, y[n, o + j], idx[n, o + j], zero)


@njit(**DIRECT)
def _widen(dy, dyw, Wp):
    """dyw (OC, N, L): dy (N, OC, OH, OW) in the wide layout, zero where ow >= OW."""
    N, OC, OH, OW = dy.shape
    for n in range(N):
        for o in range(OC):
            row = dyw[o, n]
            _fill(row, 0)
            for oh in range(OH):
                _copy(row[oh * Wp:oh * Wp + OW], dy[n, o, oh])


@njit(**DOT)
def _direct_conv_weight_grad(xp, dyw, dw, db, Wp, zero):
    """dw[o, c, kh, kw] = sum over n of (sum over i of dy_wide[o, n, i] * xp[n, c, i + kh*Wp + kw]),
    db[o] = the sum of dy_wide[o]. 'reassoc' lets the dot products
    vectorize (a fixed order)."""
    N, OC = xp.shape[0], dw.shape[0]
    for o in range(OC):              # dw and db arrive zeroed
        for n in range(N):
            _add_weight_grad(dyw[o, n], xp[n], dw[o], db, o, Wp, zero)


@njit(**DOT)
def _direct_conv_weight_grad_pooled(xp, dy, y, idx, dw, db, Wp, L, zero):
    """_direct_conv_weight_grad from the pooled gradient dy (N, OC, OH//2, OW//2) of
    relu_pool=True: each wide gradient plane is built in a buffer that stays in L1 (_unpool_plane)
    and used at once, instead of being written to and read back from a 6 MB widened copy."""
    N, OC = xp.shape[0], dw.shape[0]
    for o in range(OC):              # dw and db arrive zeroed
        g = np.empty(L, dtype=dw.dtype)
        for n in range(N):
            _unpool_plane(g, dy[n, o], y[n, o], idx[n, o], Wp, zero)
            _add_weight_grad(g, xp[n], dw[o], db, o, Wp, zero)


@njit(cache=True, inline="always")
def _add_weight_grad(g, xp_n, dw_o, db, o, Wp, zero):
    """dw_o[c, kh, kw] += g . xp_n[c] shifted by kh*Wp + kw, db[o] += sum(g), for one sample: one
    gradient plane and one input plane stay in L1 while every tap reads them. Kernel widths 3 and 5
    take a kernel row's dot products in one sweep, reading g once for all (MnistCNN's first layer
    at batch 64: 1.46 -> 1.25-1.36 ms, min of 100, over runs)."""
    L = g.size
    total = zero
    for i in range(L):
        total += g[i]
    db[o] += total
    for c in range(dw_o.shape[0]):
        for kh in range(dw_o.shape[1]):
            row, d = xp_n[c, kh * Wp:], dw_o[c, kh]
            if d.size == 3:
                t0, t1, t2 = _dot_row_of_3(g, row[0:L], row[1:1 + L], row[2:2 + L], zero)
                d[0] += t0
                d[1] += t1
                d[2] += t2
                continue
            if d.size == 5:
                t0, t1, t2, t3, t4 = _dot_row_of_5(g, row[0:L], row[1:1 + L], row[2:2 + L],
                                                   row[3:3 + L], row[4:4 + L], zero)
                d[0] += t0
                d[1] += t1
                d[2] += t2
                d[3] += t3
                d[4] += t4
                continue
            for kw in range(d.size):
                src = row[kw:kw + L]
                total = zero
                for i in range(L):
                    total += g[i] * src[i]
                d[kw] += total


@njit(cache=True, inline="always")
def _dot_row_of_3(g, s0, s1, s2, zero):
    t0, t1, t2 = zero, zero, zero
    for i in range(g.size):
        t0 += g[i] * s0[i]
        t1 += g[i] * s1[i]
        t2 += g[i] * s2[i]
    return t0, t1, t2


@njit(cache=True, inline="always")
def _dot_row_of_5(g, s0, s1, s2, s3, s4, zero):
    t0, t1, t2, t3, t4 = zero, zero, zero, zero, zero
    for i in range(g.size):
        t0 += g[i] * s0[i]
        t1 += g[i] * s1[i]
        t2 += g[i] * s2[i]
        t3 += g[i] * s3[i]
        t4 += g[i] * s4[i]
    return t0, t1, t2, t3, t4


@njit(**DIRECT)
def _direct_conv_input_grad(dyw, w, dxp, Wp):
    """The adjoint of the forward sweep: each tap adds w * dy_wide into the padded plane dxp[n, c]
    at its shift (the caller cuts the padding off), sample by sample."""
    N, C = dxp.shape[0], dxp.shape[1]
    OC, _, KH, KW = w.shape
    L = dyw.shape[2]
    for n in range(N):
        for c in range(C):
            plane = dxp[n, c]
            _fill(plane, 0)
            for o in range(OC):
                g = dyw[o, n]
                for kh in range(KH):
                    for kw in range(KW):
                        tap, dst = w[o, c, kh, kw], plane[kh * Wp + kw:kh * Wp + kw + L]
                        for i in range(L):
                            dst[i] += tap * g[i]


# With more input channels the sum over taps is better left to BLAS, still in the wide layout:
# rows (C*KH*KW, n*L) holds, per tap k = (c, kh, kw), the shifted plane xp[n, c, kh*Wp + kw:][:L]
# (one contiguous copy each), and y_wide (OC, n*L) = W (OC, C*KH*KW) @ rows. Unlike im2col's
# short per-pixel runs, every copy is a whole shifted plane. Samples go in chunks that keep rows
# in the cache (ROWS_CHUNK_BYTES, below); rows are kept for backward only when one chunk holds the
# whole batch, else rebuilt there.

@njit(**FAST)
def _gather_rows(xp, rows, KH, KW, Wp, L):
    n_samples, C = xp.shape[0], xp.shape[1]
    for n in range(n_samples):
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    shift = kh * Wp + kw
                    _copy(rows[(c * KH + kh) * KW + kw, n * L:(n + 1) * L], xp[n, c, shift:shift + L])


@njit(**FAST)
def _scatter_rows(drows, dxp, KH, KW, Wp, L):
    """The adjoint of _gather_rows, adding into dxp (zeroed here), sample by sample."""
    n_samples, C = dxp.shape[0], dxp.shape[1]
    for n in range(n_samples):
        dxp[n] = 0
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    src = drows[(c * KH + kh) * KW + kw, n * L:(n + 1) * L]
                    dst = dxp[n, c, kh * Wp + kw:kh * Wp + kw + L]
                    for i in range(L):
                        dst[i] += src[i]


@njit(**FAST)
def _unwiden(y_wide, b, y, Wp, first):
    """y[first + n, o, oh, :] = y_wide[o, n*L + oh*Wp:][:OW] + b[o]: crop the wide rows to NCHW."""
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    L = (OH - 1) * Wp + OW
    n_samples = y_wide.shape[1] // L
    for n in range(n_samples):
        for o in range(OC):
            for oh in range(OH):
                src, dst = y_wide[o, n * L + oh * Wp:n * L + oh * Wp + OW], y[first + n, o, oh]
                for i in range(OW):
                    dst[i] = src[i] + b[o]


@njit(**FAST)
def _unwiden_relu_pool(y_wide, b, y, idx, Wp, L, first, zero):
    """_unwiden followed by the 2x2 max pool and ReLU: y[first + n, o] (OH//2, OW//2) and idx from
    the wide plane y_wide[o, n*L:(n+1)*L] + b[o], without storing the full-size output."""
    OC = y.shape[1]
    n_samples = y_wide.shape[1] // L
    for n in range(n_samples):
        for o in range(OC):
            _relu_pool_plane(y_wide[o, n * L:(n + 1) * L], b[o], Wp, y[first + n, o], idx[first + n, o], zero)


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


# The batch goes through a convolution in chunks of samples, each chunk one task for the cores
# (backend.cores): at least MIN_TASKS of them, so that two cores share the work evenly although the
# second starts 20-100 us late (a sleeping thread's wake-up on these virtual machines), and for the
# GEMM path at most ROWS_CHUNK_BYTES of rows per chunk. Measured on 2 AMD EPYC cores (per-core L2
# 1 MB, L3 32 MB), 2 threads, forward/backward ms by samples per chunk:
#     LeNet's second layer (OC 16), batch 64:   3: 0.47/1.17   8: 0.42/0.77   16: 0.38/0.69   32: 0.37/0.67
#     LeNet's second layer, batch 256:          3: 1.73/4.68   8: 1.44/2.97   16: 1.36/2.68   32: 1.25/2.61
#     MnistCNN's second layer (OC 64), 64:      4: 1.82/3.78   8: 1.80/3.59   16: 1.71/3.48   22: 2.21/4.59
#     MnistCNN's second layer, 256:             8: 7.45/15.0   16: 7.17/14.3   32: 7.06/15.7   43: 7.60/16.5
#     MnistCNN's first layer (direct), 256:     8: 2.08/2.11   16: 1.99/2.04   32: 1.97/2.00   64: 2.01/2.03
# On 2 Xeon cores (Emerald Rapids, per-core L2 2 MB) the backward of LeNet's second layer (forward
# now direct), interleaved A/B against 4 MB chunks: 1 MB 0.94-1.01x the time at batch 64 (8 samples
# a chunk), 0.84-0.86x at batch 256 (11 samples); 512 KB 0.94/0.88-0.93x; 2 MB 0.99/0.91-0.94x:
# a chunk's rows (reused for their own gradient) and dy then stay in L2. Chunk sizes depend on the
# shapes alone, never on the thread count: the first layer's weight gradient is summed per chunk,
# then over chunks, so the chunk fixes its order of additions. Rows are kept for backward when one
# chunk holds the whole batch, else rebuilt there.
ROWS_CHUNK_BYTES = 2**20
MIN_TASKS = 4
DIRECT_MAX_CHUNK = 32


def _chunk(n_rows, L, N, itemsize, max_bytes):
    """Samples per chunk of the wide-GEMM path: n_rows * L * itemsize bytes of rows each."""
    budget = min(max_bytes, ROWS_CHUNK_BYTES)
    return _balanced_chunk(N, budget // max(n_rows * L * itemsize, 1))


def _direct_chunk(N):
    return _balanced_chunk(N, DIRECT_MAX_CHUNK)


def _balanced_chunk(N, most):
    """Samples per chunk: at most `most`, in a multiple of MIN_TASKS chunks of equal size (but the
    last), so that 2 or 4 threads end together (measured: LeNet's second layer at batch 256 in six
    chunks of 51, 51, 51, 51, 51 and 1 sample left one thread idle for a whole chunk, 0.7 ms)."""
    n_chunks = -(-N // max(1, most))
    n_chunks = min(N, -(-n_chunks // MIN_TASKS) * MIN_TASKS)
    return -(-N // n_chunks)


def conv2d_stride1_forward(x, w, b, PH, PW, max_bytes, relu_pool=False):
    """Stride-1 convolution in the wide layout. x (N, C, H, W), w (OC, C, KH, KW), b (OC,) or None.
    Returns y (N, OC, OH, OW) and what conv2d_stride1_backward needs.

    relu_pool=True fuses the ReLU and 2x2 max pool (stride 2) that follow the convolution: y is
    relu(maxpool(conv(x))) (N, OC, OH//2, OW//2), each output plane pooled while it is in the
    cache; the full-size output is never stored. The same values, bit for bit, as the three
    layers run one by one (pool first: max and ReLU commute, see nn.module._pool_before_activation).
    Chunks of samples are tasks for the cores (backend.cores), each writing its own samples."""
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    Hp, Wp = H + 2 * PH, W + 2 * PW
    OH, OW = Hp - KH + 1, Wp - KW + 1
    L = (OH - 1) * Wp + OW
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    bias = np.zeros(OC, dtype=x.dtype) if b is None else b
    zero = x.dtype.type(0)
    if relu_pool:
        y = np.empty((N, OC, OH // 2, OW // 2), dtype=x.dtype)
        idx = np.empty(y.shape, dtype=np.int8)             # the winner of each window, 0..3
        pooled = (y, idx, OH, OW)
    else:
        y, pooled = np.empty((N, OC, OH, OW), dtype=x.dtype), None
    if WINOGRAD and KH == KW == 3 and C > DIRECT_MAX_CHANNELS:
        tiles = _WinogradTiles(x.shape, PH, PW, pooled=relu_pool)
        xq = tiles.input_planes(x)
        _winograd_forward(x, xq, w, bias, y, idx if relu_pool else None, tiles, zero)
        return y, (xq, None, pooled, "winograd")
    direct = C <= DIRECT_MAX_CHANNELS or (C <= DIRECT_FORWARD_MAX_CHANNELS and KW in (3, 5))
    xp = _padded_wide(x, PH, PW)
    w_col = w.reshape(OC, -1)
    chunk = _direct_chunk(N) if direct else _chunk(w_col.shape[1], L, N, x.dtype.itemsize, max_bytes)
    n_tasks = -(-N // chunk)
    if direct:
        w4, b4 = _blocked(w, bias)

    def forward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        if PH or PW:
            _pad_wide(x[part], xp[part], PH, PW, Wp)
        if direct and relu_pool:
            _direct_conv_relu_pool_forward(xp[part], w4, b4, y[part], idx[part], Wp, L, zero)
        elif direct:
            _direct_conv_forward(xp[part], w4, b4, y[part], Wp)
        else:
            n = min(chunk, N - first)
            # one task keeps its rows for backward: a new array, not this thread's scratch
            rows = _scratch("rows", (w_col.shape[1], n * L), x.dtype) if n < N else \
                np.empty((w_col.shape[1], n * L), dtype=x.dtype)
            _gather_rows(xp[part], rows, KH, KW, Wp, L)
            y_wide = np.matmul(w_col, rows, out=_scratch("out", (OC, n * L), x.dtype))
            if relu_pool:
                _unwiden_relu_pool(y_wide, bias, y, idx, Wp, L, first, zero)
            else:
                _unwiden(y_wide, bias, y, Wp, first)
            return rows

    rows = cores.run(forward_chunk, n_tasks)[0]
    # a direct forward may have a GEMM backward
    backward = "direct" if C <= DIRECT_MAX_CHANNELS else "sparse" if relu_pool and _uses_sparse_backward(KW) else "gemm"
    return y, (xp, rows if n_tasks == 1 and backward == "gemm" else None, pooled, backward)


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


def conv2d_stride1_backward(dy, saved, w, x_shape, PH, PW, max_bytes, input_grad=True):
    """Gradients of conv2d_stride1_forward: (dx or None, dw, db). dy has the shape of its y (the
    pooled shape after relu_pool=True: the gradient then goes straight into the wide layout).
    The same chunks of samples as forward are the tasks; each returns its share of dw and db,
    added in chunk order."""
    xp, kept_rows, pooled, method = saved
    N, C, H, W = x_shape
    OC, _, KH, KW = w.shape
    if method == "winograd":
        tiles = _WinogradTiles(x_shape, PH, PW, pooled=pooled is not None)
        return _winograd_backward(np.ascontiguousarray(dy), xp, pooled, np.ascontiguousarray(w), x_shape,
                                  tiles, input_grad)
    Wp = W + 2 * PW
    OH, OW = (dy.shape[2], dy.shape[3]) if pooled is None else pooled[2:]
    L = (OH - 1) * Wp + OW
    dy, w, zero = np.ascontiguousarray(dy), np.ascontiguousarray(w), dy.dtype.type(0)
    direct = method == "direct"
    sparse = method == "sparse" and _all_finite(w.reshape(-1))
    kernel = _sparse_kernel(w, xp.shape[2], Wp) if sparse else None
    w_col = w.reshape(OC, -1)
    chunk = _direct_chunk(N) if direct else N if kept_rows is not None else \
        _chunk(w_col.shape[1], L, N, dy.dtype.itemsize, max_bytes)
    n_tasks = -(-N // chunk)
    dxp = np.empty(xp.shape, dtype=dy.dtype) if input_grad else None      # padded wide planes
    dx = np.empty(x_shape, dtype=dy.dtype) if input_grad and (PH or PW) else None
    first_layer = direct and pooled is not None and not input_grad

    def backward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        n = min(chunk, N - first)
        if direct:                       # the direct kernels add into zeroed gradients
            dw, db = np.zeros_like(w), np.zeros(OC, dtype=dy.dtype)
        if first_layer:                  # a model's first layer: no widened copy at all
            y, idx = pooled[0][part], pooled[1][part]
            _direct_conv_weight_grad_pooled(xp[part], dy[part], y, idx, dw, db, Wp, L, zero)
            return dw, db
        if sparse and _all_finite(xp[part].reshape(-1)):
            no_gradient = np.empty((0,) + xp.shape[1:], dtype=dy.dtype)
            dw, db = _sparse_backward_chunk(xp[part], dy[part], pooled[0][part], pooled[1][part], *kernel, Wp, KW,
                                            dxp[part] if input_grad else no_gradient, zero)
            if dx is not None:
                _crop_padding(dxp[part], dx[part], PH, PW, Wp)
            return dw, db
        g = _scratch("dy", (OC, n * L), dy.dtype)           # the wide layout, channel-major
        if pooled is None:
            _widen(dy[part], g.reshape(OC, n, L), Wp)
        else:
            _widen_relu_pool_grad(dy[part], pooled[0][part], pooled[1][part], g.reshape(OC, n, L), Wp, zero)
        if direct:
            _direct_conv_weight_grad(xp[part], g.reshape(OC, n, L), dw, db, Wp, zero)
            if input_grad:
                _direct_conv_input_grad(g.reshape(OC, n, L), w, dxp[part], Wp)
        else:
            rows = kept_rows
            if rows is None:
                rows = _scratch("rows", (w_col.shape[1], n * L), dy.dtype)
                _gather_rows(xp[part], rows, KH, KW, Wp, L)
            dw = np.ascontiguousarray((rows @ g.T).T).reshape(w.shape)   # rows @ g.T: 2x faster than g @ rows.T
            db = g.sum(axis=1)
            if input_grad:      # into the rows' own scratch when they are spent: half the cache footprint
                drows = np.matmul(w_col.T, g, out=rows if kept_rows is None else
                                  _scratch("drows", (w_col.shape[1], n * L), dy.dtype))
                _scatter_rows(drows, dxp[part], KH, KW, Wp, L)
        if dx is not None:
            _crop_padding(dxp[part], dx[part], PH, PW, Wp)
        return dw, db

    dw, db = _sum_in_order(cores.run(backward_chunk, n_tasks))
    return _input_grad(dxp, dx, x_shape), dw, db


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


# ---------------------------------------------------------------- backward through ReLU and pool: the winners only
# After relu_pool=True the gradient of the convolution's output is zero but at the winner of each
# 2x2 window, and there only where the ReLU let the value through: at most a quarter of the
# positions. The wide-GEMM backward multiplies every zero (and the wrapped columns of the wide
# layout) twice, then scatters 150 shifted rows. Here the nonzero entries are listed once per chunk
# (_pooled_gradient_entries), and each adds what it touches: dw[o] += v * the input window under it
# (_sparse_weight_grad), the gradient window under it += v * w[o] (_sparse_input_grad), one kernel
# row per vector operation (simd.row_fma: KW <= LANES taps). Measured on 2 Xeon vCPUs (Emerald
# Rapids), LeNet's second layer (6 -> 16 channels 5x5) on real MNIST, the whole backward: 1.05 ms
# against 1.41 ms by the GEMMs at batch 64, 3.9-4.5 against 5.2-8.4 ms at 256. A chunk of 8 samples
# (2,296 entries, 61 % of the windows alive) on one core: listing 14 us, weight gradient 77 us,
# input gradient 67 us (30 row operations an entry each, ~1 ns apiece). Entry by entry, each row
# of the sums is touched once per entry: row by row (every entry's update of one row in a row),
# each update waited ~30 cycles for the one before, since a masked store does not forward to the
# next load. A model's first layer (one channel: 3 or 5 rows an entry) keeps its dense dot
# products: sparse there took 1.3-1.4x their time (1.1x LeNet's, 1.3x MnistCNN's with sum_rows).
# The sum skips products by zero, which are zero only when the other factor is finite: a chunk
# whose input holds inf or NaN (or any call whose weights do) goes by the GEMMs, where 0 * inf
# makes NaN as in torch. Kernels 3 wide go by Winograd or the direct sum instead: with 3 of 8 lanes
# busy the sparse sum has little left to gain (estimated, not measured), hence the least width.
SPARSE_MIN_KERNEL_WIDTH = 5


def _uses_sparse_backward(KW):
    return SPARSE_MIN_KERNEL_WIDTH <= KW <= LANES


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


@njit(**REDUCE)
def _all_finite(a):
    """Whether the 1-D array a holds no inf and no NaN (v * 0 is 0 exactly for finite v, else NaN).
    Callers pass flat views: one compiled function for every shape."""
    total = a.dtype.type(0)
    for i in range(a.size):
        total += a[i] * 0
    return total == 0


@njit(**FAST)
def _sparse_backward_chunk(xp, dy, y, idx, w_rows, row_offsets, Wp, KW, dxp, zero):
    """(dw, db) of one chunk, and its padded input gradient into dxp unless dxp has no samples:
    the entries listed, then both sums (see the section's comment). One compiled call a chunk (the
    Python glue of three calls cost 13 % of a chunk). xp, dxp (n, C, Hp*Wp); dy, y, idx
    (n, OC, OH//2, OW//2); w_rows, row_offsets from _sparse_kernel."""
    OC, C, R = dy.shape[1], xp.shape[1], row_offsets.size
    at, value = np.empty(dy.size, dtype=np.int64), np.empty(dy.size, dtype=dy.dtype)
    start = np.empty(OC + 1, dtype=np.int64)
    _pooled_gradient_entries(dy, y, idx, Wp, xp.shape[1] * xp.shape[2], at, value, start, zero)
    dw, db = np.zeros((OC, C, R // C, KW), dtype=dy.dtype), np.zeros(OC, dtype=dy.dtype)
    _sparse_weight_grad(xp, at, value, start, row_offsets, np.empty(R * LANES, dtype=dy.dtype), dw, db, zero)
    if dxp.shape[0] > 0:
        _sparse_input_grad(w_rows, at, value, start, row_offsets, dxp, KW)
    return dw, db


def _sparse_kernel(w, plane, Wp):
    """What every chunk's sparse backward shares: w (OC, C, KH, KW) as (OC, C*KH, LANES), each kernel
    row LANES apart and zeros after its KW taps, and where each row (c, kh) of a window lies from its
    corner in planes of `plane` pixels and rows of Wp."""
    OC, C, KH, KW = w.shape
    rows = np.zeros((OC, C * KH, LANES), dtype=w.dtype)
    rows[:, :, :KW] = w.reshape(OC, C * KH, KW)
    return rows, (np.arange(C)[:, None] * plane + np.arange(KH)[None, :] * Wp).reshape(-1)


# ---------------------------------------------------------------- 3x3 convolution: Winograd F(2x2, 3x3)
# A 2x2 block of a 3x3 convolution's output comes from a 4x4 block of input, and Winograd's
# algorithm gets it with 16 multiplications per input channel instead of 36:
#     Y (2x2) = A^T [ (G w G^T) * (B^T d B) ] A        (* elementwise; w 3x3, d the 4x4 input tile)
#     B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
#           [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
#           [0 -1  1  0]         [1/2 -1/2  1/2]
#           [0  1  0 -1]         [ 0    0    1 ]
# Summed over channels, each of the 16 positions of the 4x4 transformed tiles is one GEMM:
# M[k] (OC, tiles) = U[k] (OC, C) @ V[k] (C, tiles), U = G w G^T, V = B^T d B. Alone, the tiles
# cover the output (an odd-sized one is clipped, its input planes one zero row or column longer).
# Fused with the 2x2 pool that follows, the output tiles are the pool's windows: each tile becomes
# one pooled value at once, and only the tiles the pool keeps are computed (the last row and
# column of an odd-sized output are dropped by the pool). MnistCNN's second layer: 2.4x fewer
# multiply-adds than the direct sum and 3.2x fewer than the wide-GEMM path (which also computes
# the wrapped columns and the unpooled row and column); FashionCNN's step (three unfused 3x3
# convolutions) 32.3 -> 24.0 ms at batch 64. Backward runs the adjoints: the tile gradient
# Z = A g A^T (g the tile's 2x2 of dy, or dy at the pool window's winner), dU[k] = Z[k] @ V[k].T,
# dV[k] = U[k].T @ Z[k], dw = G^T dU G and dx = the sum of B dV B^T over overlapping tiles. Every transform has only 0, +-1 and +-1/2 as
# coefficients and the code writes only the nonzero terms, so NaN reaches exactly the outputs
# whose window holds it, as in the direct sum. The values differ from the direct sum in rounding.

@njit(**FAST)
def _winograd_weights(w, U):
    """U (16, OC, C) = G w[o, c] G^T for every 3x3 filter (position k = 4*i + j of the 4x4)."""
    OC, C = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    t = np.empty((4, 3), dtype=w.dtype)
    for o in range(OC):
        for c in range(C):
            g = w[o, c]
            for b in range(3):                      # t = G g: the rows
                t[0, b] = g[0, b]
                t[1, b] = half * (g[0, b] + g[1, b] + g[2, b])
                t[2, b] = half * (g[0, b] - g[1, b] + g[2, b])
                t[3, b] = g[2, b]
            for i in range(4):                      # U = t G^T: the columns
                U[4 * i + 0, o, c] = t[i, 0]
                U[4 * i + 1, o, c] = half * (t[i, 0] + t[i, 1] + t[i, 2])
                U[4 * i + 2, o, c] = half * (t[i, 0] - t[i, 1] + t[i, 2])
                U[4 * i + 3, o, c] = t[i, 2]


@njit(**FAST)
def _winograd_weights_grad(dU, dw):
    """dw (OC, C, 3, 3) = G^T dU[:, o, c] G: the adjoint of _winograd_weights."""
    OC, C = dw.shape[0], dw.shape[1]
    half = dw.dtype.type(0.5)
    f = np.empty((3, 4), dtype=dw.dtype)
    for o in range(OC):
        for c in range(C):
            for j in range(4):                      # f = G^T dU: the rows
                u0, u1, u2, u3 = dU[j, o, c], dU[4 + j, o, c], dU[8 + j, o, c], dU[12 + j, o, c]
                f[0, j] = u0 + half * (u1 + u2)
                f[1, j] = half * (u1 - u2)
                f[2, j] = half * (u1 + u2) + u3
            for a in range(3):                      # dw = f G: the columns
                dw[o, c, a, 0] = f[a, 0] + half * (f[a, 1] + f[a, 2])
                dw[o, c, a, 1] = half * (f[a, 1] - f[a, 2])
                dw[o, c, a, 2] = half * (f[a, 1] + f[a, 2]) + f[a, 3]


@njit(cache=True, inline="always")
def _bt_rows(r0, r1, r2, r3):
    """B^T applied to a column of four values (the input transform's 1-D step)."""
    return r0 - r2, r1 + r2, r2 - r1, r1 - r3


@njit(cache=True, inline="always")
def _b_rows(v0, v1, v2, v3):
    """B applied to four values: the adjoint of _bt_rows."""
    return v0, v1 - v2 + v3, v1 + v2 - v0, -v3


@njit(**FAST)
def _winograd_input(xp, V, Wp, TH, TW):
    """V (16, C, T) = B^T d B for the 4x4 input tile d at (2*th, 2*tw) of each padded plane
    xp[n, c] (wide, row length Wp); tile t = (n*TH + th)*TW + tw. Plain scalars throughout, so
    the 16 values of a tile stay in registers."""
    N, C = xp.shape[0], xp.shape[1]
    for c in range(C):                    # c outer: V[k, c] is written in order
        for n in range(N):
            plane = xp[n, c]
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    top = 2 * th * Wp + 2 * tw
                    # B^T d: each column of the tile
                    a0, a1, a2, a3 = _bt_rows(plane[top], plane[top + Wp], plane[top + 2 * Wp], plane[top + 3 * Wp])
                    b0, b1, b2, b3 = _bt_rows(plane[top + 1], plane[top + Wp + 1], plane[top + 2 * Wp + 1], plane[top + 3 * Wp + 1])
                    c0, c1, c2, c3 = _bt_rows(plane[top + 2], plane[top + Wp + 2], plane[top + 2 * Wp + 2], plane[top + 3 * Wp + 2])
                    d0, d1, d2, d3 = _bt_rows(plane[top + 3], plane[top + Wp + 3], plane[top + 2 * Wp + 3], plane[top + 3 * Wp + 3])
                    # (B^T d) B: each row i = (a_i, b_i, c_i, d_i)
                    V[0, c, t], V[1, c, t], V[2, c, t], V[3, c, t] = _bt_rows(a0, b0, c0, d0)
                    V[4, c, t], V[5, c, t], V[6, c, t], V[7, c, t] = _bt_rows(a1, b1, c1, d1)
                    V[8, c, t], V[9, c, t], V[10, c, t], V[11, c, t] = _bt_rows(a2, b2, c2, d2)
                    V[12, c, t], V[13, c, t], V[14, c, t], V[15, c, t] = _bt_rows(a3, b3, c3, d3)


@njit(**FAST)
def _winograd_input_grad(dV, dxp, Wp, TH, TW):
    """dxp (N, C, Hp*Wp), zeroed here: the sum over tiles of B dV[:, c, t] B^T added at the tile's
    4x4 window (the adjoint of _winograd_input). Tiles overlap; each sample's are added in order."""
    N, C = dxp.shape[0], dxp.shape[1]
    for c in range(C):                    # c outer: dV[k, c] is read in order
        for n in range(N):
            plane = dxp[n, c]
            for i in range(plane.size):
                plane[i] = 0
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    # dV B^T: each row i of the 4x4 gradient
                    a0, b0, c0, d0 = _b_rows(dV[0, c, t], dV[1, c, t], dV[2, c, t], dV[3, c, t])
                    a1, b1, c1, d1 = _b_rows(dV[4, c, t], dV[5, c, t], dV[6, c, t], dV[7, c, t])
                    a2, b2, c2, d2 = _b_rows(dV[8, c, t], dV[9, c, t], dV[10, c, t], dV[11, c, t])
                    a3, b3, c3, d3 = _b_rows(dV[12, c, t], dV[13, c, t], dV[14, c, t], dV[15, c, t])
                    top = 2 * th * Wp + 2 * tw
                    for s, (e0, e1, e2, e3) in enumerate(((a0, a1, a2, a3), (b0, b1, b2, b3),
                                                          (c0, c1, c2, c3), (d0, d1, d2, d3))):
                        r0, r1, r2, r3 = _b_rows(e0, e1, e2, e3)     # B (dV B^T): each column s
                        plane[top + s] += r0
                        plane[top + Wp + s] += r1
                        plane[top + 2 * Wp + s] += r2
                        plane[top + 3 * Wp + s] += r3


@njit(**FAST)
def _winograd_output_relu_pool(M, M_row, b, y, idx, first, zero):
    """y[first + n, o, th, tw] = relu(max of the 2x2 output tile A^T M[:, o, t] A + b[o]) and idx its
    winner (0..3), with the rule of _maxpool_forward_2x2 (first maximum; a NaN wins). As in
    _relu_pool_plane, a whole row M[:, o, :] is swept assuming no NaN (_max_of_four: a loop LLVM
    vectorizes) and redone by the exact tournament if it held one."""
    OC, TH, TW = y.shape[1], y.shape[2], y.shape[3]
    per_sample = TH * TW
    n_samples = M_row // per_sample
    for o in range(OC):                   # o outer: M[k, o] is read in order
        bias = b[o]
        for n in range(n_samples):
            y_n, idx_n = y[first + n, o].reshape(per_sample), idx[first + n, o].reshape(per_sample)
            start = o * M_row + n * per_sample
            m = _rows_of_16(M, start, start + per_sample)
            saw_nan = False
            for j in range(per_sample):
                v0, v1, v2, v3 = _winograd_tile(m, j, bias)
                best, k, nan = _max_of_four(v0, v1, v2, v3)
                saw_nan |= nan
                y_n[j] = max(zero, best)
                idx_n[j] = np.int8(k)
            if not saw_nan:
                continue
            for j in range(per_sample):
                v0, v1, v2, v3 = _winograd_tile(m, j, bias)
                top_best, top_k = _first_max(v0, 0, v1, 1)
                bottom_best, bottom_k = _first_max(v2, 2, v3, 3)
                best, k = _first_max(top_best, top_k, bottom_best, bottom_k)
                y_n[j] = best if (best > zero) | (best != best) else zero
                idx_n[j] = k


@njit(**FAST)
def _winograd_output(M, M_row, b, y, first):
    """y[first + n, o] = the 2x2 output tiles A^T M[:, o, t] A + b[o], the last row and column of
    tiles clipped to an odd-sized output."""
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    per_sample = TH * TW
    n_samples = M_row // per_sample
    for o in range(OC):
        bias = b[o]
        for n in range(n_samples):
            start = o * M_row + n * per_sample
            m = _rows_of_16(M, start, start + per_sample)
            out = y[first + n, o]
            for th in range(TH):
                for tw in range(TW):
                    v0, v1, v2, v3 = _winograd_tile(m, th * TW + tw, bias)
                    out[2 * th, 2 * tw] = v0
                    if 2 * tw + 1 < OW:
                        out[2 * th, 2 * tw + 1] = v1
                    if 2 * th + 1 < OH:
                        out[2 * th + 1, 2 * tw] = v2
                        if 2 * tw + 1 < OW:
                            out[2 * th + 1, 2 * tw + 1] = v3


@njit(**FAST)
def _winograd_tile_grad(dy, Z, db, TH, TW):
    """Z (16, OC, T) = A g A^T for every output tile's gradient g (2x2, zero past an odd-sized
    output's last row or column): the rows h_i = (g_0, g_0 + g_1, g_0 - g_1, -g_1) for each of the
    tile's two columns, then the same on the columns. db[o] += the sum of dy."""
    N, OC, OH, OW = dy.shape
    zero = dy.dtype.type(0)
    for o in range(OC):                   # o outer: Z[k, o] is written in order
        total = zero
        for n in range(N):
            g = dy[n, o]
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    r, c = 2 * th, 2 * tw
                    g00 = g[r, c]
                    g01 = g[r, c + 1] if c + 1 < OW else zero
                    g10 = g[r + 1, c] if r + 1 < OH else zero
                    g11 = g[r + 1, c + 1] if (r + 1 < OH) & (c + 1 < OW) else zero
                    total += (g00 + g01) + (g10 + g11)
                    a0, a1, a2, a3 = g00, g00 + g10, g00 - g10, -g10        # column 0 of the tile
                    b0, b1, b2, b3 = g01, g01 + g11, g01 - g11, -g11        # column 1
                    Z[0, o, t], Z[1, o, t], Z[2, o, t], Z[3, o, t] = a0, a0 + b0, a0 - b0, -b0
                    Z[4, o, t], Z[5, o, t], Z[6, o, t], Z[7, o, t] = a1, a1 + b1, a1 - b1, -b1
                    Z[8, o, t], Z[9, o, t], Z[10, o, t], Z[11, o, t] = a2, a2 + b2, a2 - b2, -b2
                    Z[12, o, t], Z[13, o, t], Z[14, o, t], Z[15, o, t] = a3, a3 + b3, a3 - b3, -b3
        db[o] += total


@njit(cache=True, inline="always")
def _rows_of_16(P, start, stop):
    """The 16 planes' columns [start, stop) of P (16, plane stride): contiguous 1-D views, which
    Numba indexes without stride arithmetic (a 3-D view of the staggered planes it cannot)."""
    return (P[0, start:stop], P[1, start:stop], P[2, start:stop], P[3, start:stop],
            P[4, start:stop], P[5, start:stop], P[6, start:stop], P[7, start:stop],
            P[8, start:stop], P[9, start:stop], P[10, start:stop], P[11, start:stop],
            P[12, start:stop], P[13, start:stop], P[14, start:stop], P[15, start:stop])


@njit(cache=True, inline="always")
def _winograd_tile(m, j, bias):
    """The 2x2 output tile A^T m[:, j] A + bias, as (top left, top right, bottom left, bottom right)."""
    # A^T m: row 0 = m0 + m1 + m2, row 1 = m1 - m2 - m3 (m_i the i-th row of the 4x4), per column
    a0 = m[0][j] + m[4][j] + m[8][j]
    a1 = m[1][j] + m[5][j] + m[9][j]
    a2 = m[2][j] + m[6][j] + m[10][j]
    a3 = m[3][j] + m[7][j] + m[11][j]
    c0 = m[4][j] - m[8][j] - m[12][j]
    c1 = m[5][j] - m[9][j] - m[13][j]
    c2 = m[6][j] - m[10][j] - m[14][j]
    c3 = m[7][j] - m[11][j] - m[15][j]
    return a0 + a1 + a2 + bias, a1 - a2 - a3 + bias, c0 + c1 + c2 + bias, c1 - c2 - c3 + bias


@njit(**FAST)
def _winograd_pooled_grad(dy, y, idx, Z, db):
    """Z (16, OC, T) = A g A^T for each output tile's gradient g (2x2): dy at the window's winner
    where the ReLU let it through (y > 0 or NaN, as _relu_backward), zero elsewhere. With the
    winner at (r, s), A g A^T = g * outer(a_r, a_s), a_r = (1 - r, 1, 1 - 2r, -r): (1, 1, 1, 0) for
    the top row, (0, 1, -1, -1) for the bottom one; the same for columns. db[o] += the sum of g."""
    N, OC, TH, TW = dy.shape
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    for o in range(OC):                   # o outer: Z[k, o] is written in order
        total = zero
        for n in range(N):
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    g = dy[n, o, th, tw]                 # loaded first: a select, not a branch
                    g = zero if y[n, o, th, tw] <= zero else g
                    total += g
                    k = idx[n, o, th, tw]
                    r, s = dy.dtype.type(k >> 1), dy.dtype.type(k & 1)
                    g0, g1, g2, g3 = g * (one - r), g, g * (one - r - r), -g * r
                    s0, s2, s3 = one - s, one - s - s, -s
                    Z[0, o, t], Z[1, o, t], Z[2, o, t], Z[3, o, t] = g0 * s0, g0, g0 * s2, g0 * s3
                    Z[4, o, t], Z[5, o, t], Z[6, o, t], Z[7, o, t] = g1 * s0, g1, g1 * s2, g1 * s3
                    Z[8, o, t], Z[9, o, t], Z[10, o, t], Z[11, o, t] = g2 * s0, g2, g2 * s2, g2 * s3
                    Z[12, o, t], Z[13, o, t], Z[14, o, t], Z[15, o, t] = g3 * s0, g3, g3 * s2, g3 * s3
        db[o] += total


def _winograd_chunk(C, OC, T, N, itemsize):
    """Samples per task: at least MIN_TASKS tasks, at most WINOGRAD_CHUNK_BYTES of V and M."""
    per_sample = 16 * (C + OC) * T * itemsize
    return _balanced_chunk(N, WINOGRAD_CHUNK_BYTES // max(per_sample, 1))


# A chunk's V and M (or Z) planes stay in L2: MnistCNN's training step on 2 Xeon cores (per-core
# L2 2 MB), interleaved A/B against 1 MB chunks (6 samples at batch 64): 512 KB 1.06x the time at
# batch 64 and 1.10x at 256, 2 MB 1.02x at 256, 4 MB 1.05x and 1.10x; FashionCNN on par.
WINOGRAD_CHUNK_BYTES = 2**20


class _WinogradTiles:
    """Where the 2x2 output tiles lie. Fused with the pool, the tiles are the pool's windows
    (TH, TW) = (OH//2, OW//2); alone, they cover the whole output, (ceil(OH/2), ceil(OW/2)), and an
    odd output needs the padded input planes one row or column longer (Hq, Wq), zero there."""

    def __init__(self, x_shape, PH, PW, pooled):
        N, C, H, W = x_shape
        OH, OW = H + 2 * PH - 2, W + 2 * PW - 2
        self.PH, self.PW, self.OH, self.OW = PH, PW, OH, OW
        self.TH, self.TW = (OH // 2, OW // 2) if pooled else (-(-OH // 2), -(-OW // 2))
        self.Hq, self.Wq = max(H + 2 * PH, 2 * self.TH + 2), max(W + 2 * PW, 2 * self.TW + 2)
        self.padded = (self.Hq, self.Wq) != (H, W)        # else the input planes are x itself

    def input_planes(self, x):
        """The array forward's chunks pad x into (N, C, Hq*Wq), or x itself as planes."""
        N, C = x.shape[0], x.shape[1]
        if self.padded:
            return np.empty((N, C, self.Hq * self.Wq), dtype=x.dtype)
        return x.reshape(N, C, self.Hq * self.Wq)


def _winograd_forward(x, xq, w, bias, y, idx, tiles, zero):
    """y = the 3x3 convolution of x (and with idx, its ReLU and 2x2 pool) by Winograd F(2x2, 3x3),
    in chunks of samples on the cores; xq receives the padded input planes for backward."""
    N, C = x.shape[0], x.shape[1]
    OC = w.shape[0]
    T1 = tiles.TH * tiles.TW                                  # tiles per sample
    U = np.empty((16, OC, C), dtype=x.dtype)
    _winograd_weights(w, U)
    chunk = _winograd_chunk(C, OC, T1, N, x.dtype.itemsize)

    def forward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        T = min(chunk, N - first) * T1
        if tiles.padded:
            _pad_wide(x[part], xq[part], tiles.PH, tiles.PW, tiles.Wq)
        V = _scratch_planes("winograd V", (16, C, T), x.dtype)[1]
        _winograd_input(xq[part], V, tiles.Wq, tiles.TH, tiles.TW)
        M_planes, M = _scratch_planes("winograd M", (16, OC, T), x.dtype)
        np.matmul(U, V, out=M)
        if idx is None:
            _winograd_output(M_planes, T, bias, y, first)
        else:
            _winograd_output_relu_pool(M_planes, T, bias, y, idx, first, zero)

    cores.run(forward_chunk, -(-N // chunk))


def _winograd_backward(dy, xq, pooled, w, x_shape, tiles, input_grad):
    """Gradients of _winograd_forward: (dx or None, dw, db). pooled is forward's (y, idx, OH, OW)
    when it was fused with ReLU and pool, else None."""
    N, C, H, W = x_shape
    OC = w.shape[0]
    T1 = tiles.TH * tiles.TW
    U = np.empty((16, OC, C), dtype=dy.dtype)
    _winograd_weights(w, U)
    U_t = U.transpose(0, 2, 1)
    chunk = _winograd_chunk(C, OC, T1, N, dy.dtype.itemsize)
    dxq = np.empty(xq.shape, dtype=dy.dtype) if input_grad else None
    dx = np.empty(x_shape, dtype=dy.dtype) if input_grad and tiles.padded else None

    def backward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        T = min(chunk, N - first) * T1
        db = np.zeros(OC, dtype=dy.dtype)
        Z = _scratch_planes("winograd Z", (16, OC, T), dy.dtype)[1]
        if pooled is None:
            _winograd_tile_grad(dy[part], Z, db, tiles.TH, tiles.TW)
        else:
            _winograd_pooled_grad(dy[part], pooled[0][part], pooled[1][part], Z, db)
        V = _scratch_planes("winograd V", (16, C, T), dy.dtype)[1]
        _winograd_input(xq[part], V, tiles.Wq, tiles.TH, tiles.TW)
        dU = np.matmul(Z, V.transpose(0, 2, 1))
        if input_grad:
            dV = np.matmul(U_t, Z, out=V)                      # V is not needed any more
            _winograd_input_grad(dV, dxq[part], tiles.Wq, tiles.TH, tiles.TW)
            if dx is not None:
                _crop_padding(dxq[part], dx[part], tiles.PH, tiles.PW, tiles.Wq)
        return dU, db

    dU, db = _sum_in_order(cores.run(backward_chunk, -(-N // chunk)))
    dw = np.empty(w.shape, dtype=dy.dtype)
    _winograd_weights_grad(dU, dw)
    return _input_grad(dxq, dx, x_shape), dw, db


# ---------------------------------------------------------------- ReLU and 2x2 max pool fused into a convolution
# The epilogue and its adjoint for conv2d_stride1_forward(relu_pool=True). A plane here is one
# output channel of one sample in the wide layout: pixel (oh, ow) at oh*Wp + ow.

@njit(cache=True, inline="always")
def _relu_pool_plane(src, bias, Wp, y, idx, zero):
    """y (OH//2, OW//2) = relu of the maximum of each 2x2 window of the wide plane src + bias, and
    idx its winner (0..3): the same tournament as _maxpool_forward_2x2 (the first maximum wins, a
    NaN wins over everything before it) and the same ReLU as _relu.
    The sweep assumes no NaN, which lets LLVM vectorize it (_max_of_four), and max(0, v) turns
    -0.0 into 0 as _relu does. If any tap was NaN, the plane is redone by _relu_pool_plane_exact.
    3x faster than the exact sweep alone (MnistCNN's first layer)."""
    PW = y.shape[1]
    saw_nan = False
    for ph in range(y.shape[0]):
        top = src[2 * ph * Wp:2 * ph * Wp + 2 * PW]
        bottom = src[(2 * ph + 1) * Wp:(2 * ph + 1) * Wp + 2 * PW]
        y_row, idx_row = y[ph], idx[ph]
        for pw in range(PW):
            best, k, nan = _max_of_four(top[2 * pw] + bias, top[2 * pw + 1] + bias,
                                        bottom[2 * pw] + bias, bottom[2 * pw + 1] + bias)
            saw_nan |= nan
            y_row[pw] = max(zero, best)
            idx_row[pw] = np.int8(k)
    if saw_nan:
        _relu_pool_plane_exact(src, bias, Wp, y, idx, zero)


@njit(cache=True, inline="always")
def _max_of_four(a0, a1, a2, a3):
    """The maximum of a 2x2 window (a0 a1 / a2 a3), the index of its first occurrence, and whether
    any tap is NaN (then both are meaningless and the caller redoes the window exactly). Built for
    vectorizing: max(a, b) keeps a unless b > a, the index comes from integer arithmetic, and no
    (value, index) pair is ever selected as a whole (that kept the loops scalar)."""
    top_k, bottom_k = np.int32(a1 > a0), np.int32(2) + np.int32(a3 > a2)
    top_best, bottom_best = max(a0, a1), max(a2, a3)
    bottom_wins = np.int32(bottom_best > top_best)
    nan = (a0 != a0) | (a1 != a1) | (a2 != a2) | (a3 != a3)
    return max(top_best, bottom_best), top_k + bottom_wins * (bottom_k - top_k), nan


@njit(cache=True, inline="always")
def _relu_pool_plane_exact(src, bias, Wp, y, idx, zero):
    """_relu_pool_plane for planes with NaN: the tournament of _first_max, one window at a time."""
    for ph in range(y.shape[0]):
        top, bottom = src[2 * ph * Wp:], src[(2 * ph + 1) * Wp:]
        for pw in range(y.shape[1]):
            top_best, top_k = _first_max(top[2 * pw] + bias, 0, top[2 * pw + 1] + bias, 1)
            bottom_best, bottom_k = _first_max(bottom[2 * pw] + bias, 2, bottom[2 * pw + 1] + bias, 3)
            best, k = _first_max(top_best, top_k, bottom_best, bottom_k)
            y[ph, pw] = best if (best > zero) | (best != best) else zero
            idx[ph, pw] = k


@njit(**FAST)
def _widen_relu_pool_grad(dy, y, idx, dyw, Wp, zero):
    """dyw (OC, N, L): every wide gradient plane from the pooled gradient (_unpool_plane)."""
    N, OC = dy.shape[0], dy.shape[1]
    for n in range(N):
        for o in range(OC):
            _unpool_plane(dyw[o, n], dy[n, o], y[n, o], idx[n, o], Wp, zero)


@njit(cache=True, inline="always")
def _unpool_plane(g, dy, y, idx, Wp, zero):
    """g (L,): the gradient of one wide output plane from its pooled gradient dy (OH//2, OW//2):
    each window's winner idx gets dy where the ReLU let it through (y > 0 or NaN, as
    _relu_backward), every other position zero. dy is loaded before the test, so that LLVM selects
    instead of branching: the ReLU's verdict is a coin toss no predictor learns (MnistCNN's first
    layer, 346k windows at batch 64: 0.93 -> 0.41 ms on one Xeon core)."""
    _fill(g, zero)
    for ph in range(dy.shape[0]):
        for pw in range(dy.shape[1]):
            k, value = idx[ph, pw], dy[ph, pw]
            g[(2 * ph + (k >> 1)) * Wp + 2 * pw + (k & 1)] = zero if y[ph, pw] <= zero else value


# ---------------------------------------------------------------- elementwise-by-sample work on the cores

# Pooling and batch norm on the cores: per-sample (or per-channel) kernels run on chunks of samples
# (or channels), each its own task; the chunks write disjoint parts, so results are the same bits
# as one call. Tensors under SPLIT_BYTES stay one task (a handover costs 20-50 us).
SPLIT_BYTES = 2**18


def _by_samples(a, body):
    """body(part) for slices part of a's first axis, on the cores when a is large."""
    N = a.shape[0]
    chunk = N if a.nbytes < SPLIT_BYTES else _balanced_chunk(N, N)
    cores.run(lambda i: body(slice(i * chunk, (i + 1) * chunk)), -(-N // chunk))


def _by_channels(a, body):
    """body(c_first, c_stop) for ranges of a's channels (axis 1), on the cores when a is large."""
    C = a.shape[1]
    chunk = C if a.nbytes < SPLIT_BYTES else _balanced_chunk(C, C)
    cores.run(lambda i: body(i * chunk, min(C, (i + 1) * chunk)), -(-C // chunk))


# ---------------------------------------------------------------- pooling

@njit(**FAST)
def _maxpool_forward(x, y, idx, KH, KW, SH, SW, PH, PW):
    """The window's rows and columns are clipped to the image instead of testing every tap
    (padding is -inf, so it never wins). torch's rule: the first maximum wins ties, and a NaN wins
    over everything before it (so the last NaN of a window wins)."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                h0 = oh * SH - PH
                kh_lo, kh_hi = max(0, -h0), min(KH, H - h0)
                for ow in range(OW):
                    w0 = ow * SW - PW
                    kw_lo, kw_hi = max(0, -w0), min(KW, W - w0)
                    best = x[n, c, h0 + kh_lo, w0 + kw_lo]
                    best_k = kh_lo * KW + kw_lo
                    for kh in range(kh_lo, kh_hi):
                        for kw in range(kw_lo, kw_hi):
                            v = x[n, c, h0 + kh, w0 + kw]
                            if v > best or v != v:
                                best, best_k = v, kh * KW + kw
                    y[n, c, oh, ow] = best
                    idx[n, c, oh, ow] = best_k


@njit(cache=True, inline="always")
def _first_max(a, ka, b, kb):
    """The winner of a before b: b if it is larger or NaN."""
    b_wins = (b > a) | (b != b)                        # bitwise: no branches to mispredict
    return (b, kb) if b_wins else (a, ka)


@njit(**FAST)
def _maxpool_forward_2x2(x, y, idx):
    """The common case, 2x2 windows at stride 2 without padding, with the same rule as the general
    kernel (the first maximum, or the last NaN). As in _relu_pool_plane, each plane is swept
    assuming no NaN (_max_of_four: ties and signed zeros go to the first tap) and redone by the
    _first_max tournament if it held a NaN."""
    N, C = x.shape[0], x.shape[1]
    OH, OW = y.shape[2], y.shape[3]
    for p in range(N * C):
        n, c = p // C, p % C
        saw_nan = False
        for oh in range(OH):
            top, bottom = x[n, c, 2 * oh], x[n, c, 2 * oh + 1]
            y_row, idx_row = y[n, c, oh], idx[n, c, oh]
            for ow in range(OW):
                best, k, nan = _max_of_four(top[2 * ow], top[2 * ow + 1], bottom[2 * ow], bottom[2 * ow + 1])
                saw_nan |= nan
                y_row[ow] = best
                idx_row[ow] = np.int8(k)
        if not saw_nan:
            continue
        for oh in range(OH):
            top, bottom = x[n, c, 2 * oh], x[n, c, 2 * oh + 1]
            y_row, idx_row = y[n, c, oh], idx[n, c, oh]
            for ow in range(OW):
                top_best, top_k = _first_max(top[2 * ow], 0, top[2 * ow + 1], 1)
                bottom_best, bottom_k = _first_max(bottom[2 * ow], 2, bottom[2 * ow + 1], 3)
                y_row[ow], idx_row[ow] = _first_max(top_best, top_k, bottom_best, bottom_k)


def maxpool2d_forward(x, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    if (KH, KW, SH, SW, PH, PW) == (2, 2, 2, 2, 0, 0):
        idx = np.empty((N, C, OH, OW), dtype=np.int8)       # 0..3: an eighth of int64's memory traffic
        x = np.ascontiguousarray(x)
        _by_samples(x, lambda part: _maxpool_forward_2x2(x[part], y[part], idx[part]))
    else:
        idx = np.empty((N, C, OH, OW), dtype=np.int64)
        x = np.ascontiguousarray(x)
        _by_samples(x, lambda part: _maxpool_forward(x[part], y[part], idx[part], KH, KW, SH, SW, PH, PW))
    return y, idx


@njit(**FAST)
def _pool_backward(dy, idx, divisor, dx, KH, KW, SH, SW, PH, PW, use_idx):
    """Scatter per sample: max pooling sends dy to the pixel idx names,
    average pooling shares dy / divisor over the window."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    for n in range(N):
        dx[n] = 0
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    g = dy[n, c, oh, ow]
                    if use_idx:
                        k = idx[n, c, oh, ow]
                        dx[n, c, oh * SH - PH + k // KW, ow * SW - PW + k % KW] += g
                        continue
                    share = g / divisor[oh, ow]
                    for kh in range(KH):
                        ih = oh * SH - PH + kh
                        for kw in range(KW):
                            iw = ow * SW - PW + kw
                            if 0 <= ih < H and 0 <= iw < W:
                                dx[n, c, ih, iw] += share


@njit(**FAST)
def _maxpool_backward_2x2(dy, idx, dx, zero):
    """2x2 windows at stride 2 do not overlap: every input pixel is written once, dy where its
    window's idx names it, else zero, with no separate zero fill (but for an odd last row/column)."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    for p in range(N * C):
        n, c = p // C, p % C
        if 2 * OH < H or 2 * OW < W:
            _fill(dx[n, c].reshape(-1), zero)
        for oh in range(OH):
            top, bottom = dx[n, c, 2 * oh], dx[n, c, 2 * oh + 1]
            g_row, k_row = dy[n, c, oh], idx[n, c, oh]
            for j in range(2 * OW):             # input columns, in memory order
                g, k = g_row[j >> 1], k_row[j >> 1]
                top[j] = g if k == (j & 1) else zero
                bottom[j] = g if k == 2 + (j & 1) else zero


def maxpool2d_backward(dy, idx, x_shape, KH, KW, SH, SW, PH, PW):
    dx = np.empty(x_shape, dtype=dy.dtype)
    dy, zero = np.ascontiguousarray(dy), dy.dtype.type(0)
    if (KH, KW, SH, SW, PH, PW) == (2, 2, 2, 2, 0, 0):
        _by_samples(dx, lambda part: _maxpool_backward_2x2(dy[part], idx[part], dx[part], zero))
        return dx
    dummy = np.ones((1, 1), dtype=dy.dtype)
    _by_samples(dx, lambda part: _pool_backward(dy[part], idx[part], dummy, dx[part], KH, KW, SH, SW, PH, PW, True))
    return dx


def avgpool2d_forward(x, KH, KW, SH, SW, PH, PW, count_include_pad=True):
    return numpy_ops.avgpool2d_forward(x, KH, KW, SH, SW, PH, PW, count_include_pad)


def avgpool2d_backward(dy, divisor, x_shape, KH, KW, SH, SW, PH, PW):
    OH, OW = dy.shape[2:]
    divisor = np.broadcast_to(np.asarray(divisor, dtype=dy.dtype), (OH, OW)).copy()
    idx = np.zeros((1, 1, 1, 1), dtype=np.int64)
    dx = np.empty(x_shape, dtype=dy.dtype)
    dy = np.ascontiguousarray(dy)
    _by_samples(dx, lambda part: _pool_backward(dy[part], idx, divisor, dx[part], KH, KW, SH, SW, PH, PW, False))
    return dx


# ---------------------------------------------------------------- batch normalization

@njit(**REDUCE)
def _bn_forward(x, gamma, beta, eps, y, xhat, mean, var, invstd, c_first, c_stop):
    N, C, L = x.shape
    M = N * L
    for c in range(c_first, c_stop):
        s = 0.0
        for n in range(N):
            for i in range(L):
                s += x[n, c, i]
        m = s / M
        ss = 0.0
        for n in range(N):
            for i in range(L):
                d = x[n, c, i] - m
                ss += d * d
        v = ss / M
        r = 1.0 / np.sqrt(v + eps)
        mean[c], var[c], invstd[c] = m, v, r
        for n in range(N):
            for i in range(L):
                h = (x[n, c, i] - m) * r
                xhat[n, c, i] = h
                y[n, c, i] = h * gamma[c] + beta[c]


def batchnorm_forward_train(x3, gamma, beta, eps):
    x3 = np.ascontiguousarray(x3)
    C, dtype = x3.shape[1], x3.dtype
    y, xhat = np.empty_like(x3), np.empty_like(x3)
    mean, var, invstd = (np.empty(C, dtype=dtype) for _ in range(3))
    _by_channels(x3, lambda c_first, c_stop: _bn_forward(x3, gamma, beta, eps, y, xhat, mean, var, invstd,
                                                        c_first, c_stop))
    return y, xhat, mean, var, invstd


@njit(**FAST)
def _bn_forward_eval(x, mean, invstd, gamma, beta, y, xhat, keep_xhat, c_first, c_stop):
    """numpy_ops.batchnorm_forward_eval in one pass (the same operations in the same order, so the
    same bits), xhat written only when kept."""
    N, L = x.shape[0], x.shape[2]
    for n in range(N):
        for c in range(c_first, c_stop):
            m, r, g, b = mean[c], invstd[c], gamma[c], beta[c]
            src, dst = x[n, c], y[n, c]
            if keep_xhat:
                h = xhat[n, c]
                for i in range(L):
                    v = (src[i] - m) * r
                    h[i] = v
                    dst[i] = v * g + b
            else:
                for i in range(L):
                    dst[i] = (src[i] - m) * r * g + b


def batchnorm_forward_eval(x3, mean, invstd, gamma, beta, keep_xhat):
    """numpy_ops.batchnorm_forward_eval without its four temporaries of x's size (FashionCNN's
    inference at batch 128 spent 39 of 65 ms in them, with fresh multi-megabyte arrays each)."""
    x3 = np.ascontiguousarray(x3)
    y = np.empty_like(x3)
    xhat = np.empty_like(x3) if keep_xhat else np.empty((0, 0, 0), dtype=x3.dtype)
    _by_channels(x3, lambda c_first, c_stop: _bn_forward_eval(x3, mean, invstd, gamma, beta, y, xhat,
                                                             bool(keep_xhat), c_first, c_stop))
    return y, (xhat if keep_xhat else None)


@njit(**REDUCE)
def _bn_backward(dy, xhat, invstd, gamma, dx, dgamma, dbeta, c_first, c_stop):
    N, C, L = dy.shape
    M = N * L
    for c in range(c_first, c_stop):
        sb, sg = 0.0, 0.0
        for n in range(N):
            for i in range(L):
                sb += dy[n, c, i]
                sg += dy[n, c, i] * xhat[n, c, i]
        dbeta[c], dgamma[c] = sb, sg
        scale = gamma[c] * invstd[c] / M
        for n in range(N):
            for i in range(L):
                dx[n, c, i] = scale * (M * dy[n, c, i] - sb - xhat[n, c, i] * sg)


def batchnorm_backward_train(dy3, xhat, invstd, gamma):
    dy3 = np.ascontiguousarray(dy3)
    C = dy3.shape[1]
    dx = np.empty_like(dy3)
    dgamma, dbeta = np.empty(C, dtype=dy3.dtype), np.empty(C, dtype=dy3.dtype)
    _by_channels(dy3, lambda c_first, c_stop: _bn_backward(dy3, xhat, invstd, gamma, dx, dgamma, dbeta,
                                                          c_first, c_stop))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- softmax cross-entropy

@njit(**FAST)
def _softmax_ce(logits, labels, smoothing, loss, probs):
    N, K = logits.shape
    for n in range(N):
        m = logits[n, 0]
        for k in range(1, K):
            m = max(m, logits[n, k])
        total = 0.0
        for k in range(K):
            total += np.exp(logits[n, k] - m)
        log_total = np.log(total)
        mean_logp = 0.0
        for k in range(K):
            logp = logits[n, k] - m - log_total
            probs[n, k] = np.exp(logp)
            mean_logp += logp
        nll = -(logits[n, labels[n]] - m - log_total)
        loss[n] = (1 - smoothing) * nll - smoothing * mean_logp / K if smoothing else nll


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    logits = np.ascontiguousarray(logits)
    loss = np.empty(len(logits), dtype=logits.dtype)
    probs = np.empty_like(logits)
    _softmax_ce(logits, labels.astype(np.int64, copy=False), float(label_smoothing), loss, probs)
    return loss, probs


softmax_cross_entropy_backward = numpy_ops.softmax_cross_entropy_backward


# ---------------------------------------------------------------- elementwise

# zero comes in with the arrays' dtype: a literal 0 would make each select float64 and keep
# the loop scalar; bitwise | (no short-circuit branch) lets it vectorize.

@njit(cache=True, nogil=True)
def _relu(x, y, zero):
    for i in range(x.size):
        v = x[i]
        y[i] = v if (v > zero) | (v != v) else zero


@njit(cache=True, nogil=True)
def _relu_backward(dy, y, dx, zero):
    for i in range(dy.size):
        dx[i] = zero if y[i] <= zero else dy[i]


def relu_forward(x):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu(x.reshape(-1), y.reshape(-1), x.dtype.type(0))
    return y


def relu_backward(dy, y):
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = np.empty_like(dy)
    _relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1), dy.dtype.type(0))
    return dx


# ---------------------------------------------------------------- optimizer step

@njit(cache=True, nogil=True)
def _sgd_step(p, grad, buf, lr, momentum, undamped, weight_decay, nesterov, first):
    for i in range(p.size):
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p[i]
        if momentum != 0:
            b = g if first else momentum * buf[i] + undamped * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        p[i] = p[i] - lr * g


# Parameters this large are updated in parts on the cores (an update is elementwise: the parts
# change nothing but the speed; MnistCNN's 819,200-weight layer: 0.14 -> 0.11 ms on 2 cores).
SGD_PART = 2**17


def sgd_step(p, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD update of p (and of the momentum buffer buf) in place, in one pass over memory: the
    operations and their order of optim.SGD._update, so results are the same bit for bit. The
    hyper-parameters are cast to p's dtype first, as NumPy does with Python scalars (an integer
    literal like the 1 of 1 - dampening would make Numba compute in float64)."""
    t = p.dtype.type
    p, grad, buf = p.reshape(-1), np.ascontiguousarray(grad).reshape(-1), buf.reshape(-1)
    args = (t(lr), t(momentum), t(1 - dampening), t(weight_decay), bool(nesterov), bool(first))
    if p.size <= SGD_PART:
        _sgd_step(p, grad, buf, *args)
        return

    def update(i):
        part = slice(i * SGD_PART, (i + 1) * SGD_PART)
        _sgd_step(p[part], grad[part], buf[part], *args)

    cores.run(update, -(-p.size // SGD_PART))
