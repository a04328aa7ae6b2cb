"""Convolutions on the Numba backend: the contract's conv2d_* ops.

The algorithm is chosen in one place, numba_strategy.conv_algorithms, and recorded in the record
that backward reads back:
    im2col     grouped convolutions (not depthwise), and inputs or filters with inf or NaN: the
               reference algorithm (im2col_conv) on Numba's primitives
    depthwise  one filter per channel (groups = in = out channels): numba_depthwise
    direct     few input channels: each output plane summed from shifted input planes
    pointwise  1x1 kernels without padding (at a stride, from the pixels they read): one GEMM per
               sample from x's planes, by BLAS or, for large ones, by the blocked sums
    gemm       more channels, and other strides and dilations: the same sums as one GEMM of rows
               gathered from the padded planes ("wide" at stride 1, strided runs otherwise)
    blocked    3x3 kernels at stride 1 or 2 with 4-64 channels (fused too, at stride 1):
               register-blocked direct sums (numba_blocked)
    winograd   3x3 kernels with more channels: Winograd's F(2x2, 3x3) (numba_winograd)
    sparse     backward of a fused conv + ReLU + pool from the pool's winners alone (numba_sparse)
Each stride-1 forward may fuse the ReLU and 2x2 max pool that follow (numba_relu_pool).
"""
import numpy as np
from numba import njit

from . import cores, im2col_conv, numba_strategy, numpy_ops
from . import numba_blocked, numba_depthwise, numba_norm, numba_sparse, numba_winograd
from .numba_common import (DIRECT, DOT, FAST, _add_in_order, _all_finite, _balanced_chunk, _copy, _crop_padding,
                           _defers_weight_grad, _fill, _input_grad, _pad_wide, _padded_wide, _rows_chunk, _scratch,
                           _sum_in_order)
from .numba_elementwise import relu_backward, relu_forward
from .numba_im2col import col2im, conv_backward_gemms, im2col, matmul
from .numba_pool import maxpool2d_backward, maxpool2d_forward
from .numba_relu_pool import _relu_pool_plane, _unpool_plane, _widen_relu_pool_grad

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



# The forward sweeps compute OUT_BLOCK output channels at once: each shifted input row is loaded
# once for all of them and their taps stay in registers (4 channels x 5 taps + 4 + 5 vectors fit
# AVX-512's 32 registers), so a sweep does 20 multiply-adds per 9 loads and 4 stores instead of
# 5 per 6 and 1 (5x faster). Weights and biases are padded with zero channels to a multiple of
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
    at batch 64: about 10 % faster)."""
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
# rows (C*KH*KW, n*L) holds, per tap k = (c, kh, kw), the shifted plane xp[n, c, kh*DH*Wp + kw*DW:][:L]
# (one contiguous copy each), and y_wide (OC, n*L) = W (OC, C*KH*KW) @ rows. Unlike im2col's
# short per-pixel runs, every copy is a whole shifted plane. A strided convolution has no wide
# layout (its taps are not shifts of one plane): its rows are the strided runs
# xp[n, c, (oh*SH + kh*DH)*Wp + kw*DW::SW][:OW], one per output row, packed without the wrapped
# columns (Wq = OW, L = OH*OW); the rest of the path is the same. Samples go in chunks that keep
# rows in the cache (the strategy's rows_chunk_bytes); rows are kept for backward only when one
# chunk holds the whole batch, else rebuilt there.

class _Rows:
    """Where the rows of the GEMM path come from: the padded planes xp (N, C, Hp*Wp) read by
    shifts (stride 1: the wide layout, Wq = Wp) or by strided runs (Wq = OW). Output pixel (oh, ow)
    of a sample is column oh*Wq + ow of its L columns."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation):
        N, C, H, W = x_shape
        KH, KW = w_shape[2], w_shape[3]
        (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
        self.KH, self.KW, self.SH, self.SW, self.DH, self.DW = KH, KW, SH, SW, DH, DW
        self.Wp = W + 2 * PW
        self.OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
        self.OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
        self.wide = SH == SW == 1
        self.Wq = self.Wp if self.wide else self.OW
        self.L = (self.OH - 1) * self.Wq + self.OW

    def gather(self, xp, rows):
        """rows (C*KH*KW, n*L) from the padded planes xp (n, C, Hp*Wp) of a chunk of samples."""
        if self.wide:
            _gather_rows(xp, rows, self.KH, self.KW, self.DH, self.DW, self.Wp, self.L)
        else:
            _gather_strided_rows(xp, rows, self.KH, self.KW, self.SH, self.SW, self.DH, self.DW,
                                 self.Wp, self.OH, self.OW)

    def scatter(self, drows, dxp):
        """dxp (n, C, Hp*Wp) = the adjoint of gather applied to drows (zeroed here first)."""
        if self.wide:
            _scatter_rows(drows, dxp, self.KH, self.KW, self.DH, self.DW, self.Wp, self.L)
        else:
            _scatter_strided_rows(drows, dxp, self.KH, self.KW, self.SH, self.SW, self.DH, self.DW,
                                  self.Wp, self.OH, self.OW)


@njit(**FAST)
def _gather_rows(xp, rows, KH, KW, DH, DW, Wp, L):
    n_samples, C = xp.shape[0], xp.shape[1]
    for n in range(n_samples):
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    shift = kh * DH * Wp + kw * DW
                    _copy(rows[(c * KH + kh) * KW + kw, n * L:(n + 1) * L], xp[n, c, shift:shift + L])


@njit(**FAST)
def _scatter_rows(drows, dxp, KH, KW, DH, DW, Wp, L):
    """The adjoint of _gather_rows, adding into dxp (zeroed here), sample by sample."""
    n_samples, C = dxp.shape[0], dxp.shape[1]
    for n in range(n_samples):
        dxp[n] = 0
        for c in range(C):
            for kh in range(KH):
                for kw in range(KW):
                    shift = kh * DH * Wp + kw * DW
                    src = drows[(c * KH + kh) * KW + kw, n * L:(n + 1) * L]
                    dst = dxp[n, c, shift:shift + L]
                    for i in range(L):
                        dst[i] += src[i]


@njit(**FAST)
def _gather_strided_rows(xp, rows, KH, KW, SH, SW, DH, DW, Wp, OH, OW):
    """rows[(c*KH + kh)*KW + kw, n*OH*OW + oh*OW + ow] = xp[n, c, (oh*SH + kh*DH)*Wp + ow*SW + kw*DW]."""
    n_samples, C = xp.shape[0], xp.shape[1]
    L = OH * OW
    for n in range(n_samples):
        for c in range(C):
            plane = xp[n, c]
            for kh in range(KH):
                for kw in range(KW):
                    row = rows[(c * KH + kh) * KW + kw, n * L:(n + 1) * L]
                    for oh in range(OH):
                        start = (oh * SH + kh * DH) * Wp + kw * DW
                        run, dst = plane[start:start + SW * (OW - 1) + 1:SW], row[oh * OW:(oh + 1) * OW]
                        for i in range(OW):
                            dst[i] = run[i]


@njit(**FAST)
def _scatter_strided_rows(drows, dxp, KH, KW, SH, SW, DH, DW, Wp, OH, OW):
    """The adjoint of _gather_strided_rows, adding into dxp (zeroed here), sample by sample in a
    fixed order (taps, then output rows)."""
    n_samples, C = dxp.shape[0], dxp.shape[1]
    L = OH * OW
    for n in range(n_samples):
        dxp[n] = 0
        for c in range(C):
            plane = dxp[n, c]
            for kh in range(KH):
                for kw in range(KW):
                    row = drows[(c * KH + kh) * KW + kw, n * L:(n + 1) * L]
                    for oh in range(OH):
                        start = (oh * SH + kh * DH) * Wp + kw * DW
                        run, src = plane[start:start + SW * (OW - 1) + 1:SW], row[oh * OW:(oh + 1) * OW]
                        for i in range(OW):
                            run[i] += src[i]


@njit(**FAST)
def _add_bias(y, b):
    """y (n, OC, L) += b[o] on every plane."""
    for n in range(y.shape[0]):
        for o in range(y.shape[1]):
            plane, bias = y[n, o], b[o]
            for i in range(plane.size):
                plane[i] += bias


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


# ---------------------------------------------------------------- the contract's ops

_PRIMITIVES = im2col_conv.Primitives(im2col, col2im, matmul, conv_backward_gemms, numpy_ops._rows_to_nchw, np)


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """As numpy_ops; the record is im2col_conv's Record, numba_depthwise's, a _PointwiseRecord or a
    _PlanesRecord. The 1x1 and the strided GEMMs multiply exactly im2col's pairs of values (torch's),
    and so do the blocked sums with finite weights, so an inf or NaN makes NaN where it does in
    torch. Other inputs or weights holding inf or NaN go by im2col: the wide layout's dropped
    positions would multiply an inf by zero, Winograd's transforms subtract infs."""
    forward, backward = numba_strategy.conv_algorithms(x.shape[1], w.shape, stride, padding, dilation, groups,
                                                       fused=False)
    if forward == "pointwise":
        return _pointwise_forward(x, w, b, stride)
    if forward == "blocked":
        if not _finite(w):
            return _by_im2col(x, w, b, stride, padding, dilation, groups)
        return _planes_forward(x, w, b, stride, padding, dilation, False, forward, backward)
    if forward == "depthwise":                    # its tasks check x (None: not finite)
        done = numba_depthwise.forward(x, w, b, stride, padding, dilation) if _finite(w) else None
        return _by_im2col(x, w, b, stride, padding, dilation, groups) if done is None else done
    exact_products = forward == "gemm" and tuple(stride) != (1, 1)
    if forward == "im2col" or not (exact_products or (_finite(x) and _finite(w))):
        return _by_im2col(x, w, b, stride, padding, dilation, groups)
    return _planes_forward(x, w, b, stride, padding, dilation, False, forward, backward)


def fused_batchnorm_eval(x, w, b, stride, padding, dilation, groups, mean, var, eps, gamma, beta, relu, residual):
    """conv2d_batchnorm_eval where the convolution's own tasks can normalize (and rectify) their
    output while it is in the cache (None otherwise, or when w holds inf or NaN): the blocked sums
    as they crop each row, from planes that stay each task's scratch; a 1x1 convolution on each task's
    samples right after their product (and at a stride, the pixels it reads copied in the same task);
    the direct sums (a model's first layers, x finite too) on each task's samples after their sums.
    A residual (an array of y's shape and dtype) is summed before the ReLU by the blocked sums only.
    No pass over y of its own (and by the blocked sums, no array for the planes)."""
    forward, backward = numba_strategy.conv_algorithms(x.shape[1], w.shape, stride, padding, dilation, groups,
                                                       fused=False)
    if forward not in ("blocked", "pointwise", "direct") or not _finite(w):
        return None
    if residual is not None and (forward != "blocked" or residual.dtype != x.dtype):
        return None
    if forward == "direct" and not _finite(x):           # conv2d_forward's im2col, then the pass
        return None
    invstd = numba_norm.eval_invstd(var, eps)
    if forward == "pointwise":
        return _pointwise_forward(x, w, b, stride, (mean, invstd, gamma, beta, bool(relu)))[0]
    if forward == "direct":
        return _planes_forward(x, w, b, stride, padding, dilation, False, forward, backward,
                               (mean, invstd, gamma, beta, bool(relu)))[0]
    return numba_blocked.forward(x, np.ascontiguousarray(w), b, stride[0], padding,
                                 normalize=(mean, invstd, gamma, beta, bool(relu), residual))[0]


def _by_im2col(x, w, b, stride, padding, dilation, groups):
    """The reference algorithm on Numba's primitives: its products are exactly torch's."""
    return im2col_conv.forward(_PRIMITIVES, x, w, b, stride, padding, dilation, groups,
                               numba_strategy.current().max_col_bytes)


def _finite(a):
    """Whether a holds no inf and no NaN (one compiled pass)."""
    return _all_finite(np.ascontiguousarray(a).reshape(-1))


def conv2d_backward(dy, record, w, input_grad, dw_may_wait):
    if record.algorithm == "composed":
        return _composed_backward(dy, record, w, input_grad)
    if record.algorithm == "im2col":
        return im2col_conv.backward(_PRIMITIVES, dy, record, w, input_grad)
    if record.algorithm == "depthwise":
        return numba_depthwise.backward(dy, record, w, input_grad)
    if record.algorithm == "pointwise":
        return _pointwise_backward(dy, record, w, input_grad, dw_may_wait)
    return _planes_backward(dy, record, w, input_grad, dw_may_wait)


def conv2d_relu_maxpool2d_forward(x, w, b, padding):
    """The convolution with the ReLU and 2x2 max pool applied to each output plane while it is in
    the cache: the full-size output is never stored. The same values, bit for bit, as the three ops
    one by one (pool first: max and ReLU commute), forward and backward, except by Winograd (another
    rounding) and with the sparse backward (another order of additions). The register-blocked sums
    pool as they crop, and their backward spreads dy to the winners first: bit for bit."""
    forward, backward = numba_strategy.conv_algorithms(x.shape[1], w.shape, (1, 1), padding, (1, 1), 1, fused=True)
    if not (_finite(x) and _finite(w)):                    # torch's NaNs: the three exact ops one by one
        return _composed_forward(x, w, b, padding)
    return _planes_forward(x, w, b, (1, 1), padding, (1, 1), True, forward, backward)


def conv2d_relu_maxpool2d_backward(dy, record, w, input_grad):
    if record.algorithm == "composed":
        return _composed_backward(dy, record, w, input_grad)
    return _planes_backward(dy, record, w, input_grad)


class _Composed:
    """The record of a fused step run as its three ops (an input or weights with inf or NaN)."""
    __slots__ = ("conv", "relu", "pool")
    algorithm = "composed"

    def __init__(self, conv, relu, pool):
        self.conv, self.relu, self.pool = conv, relu, pool


def _composed_forward(x, w, b, padding):
    y, conv = _by_im2col(x, w, b, (1, 1), padding, (1, 1), 1)
    y, relu = relu_forward(y)
    y, pool = maxpool2d_forward(y, (2, 2), (2, 2), (0, 0))
    return y, _Composed(conv, relu, pool)


def _composed_backward(dy, record, w, input_grad):
    dy = relu_backward(maxpool2d_backward(dy, record.pool), record.relu)
    return im2col_conv.backward(_PRIMITIVES, dy, record.conv, w, input_grad)


class _PlanesRecord:
    """What backward needs: its algorithm, the padded input planes xp, the rows of the GEMM when
    one task held the whole batch, after relu_pool (y, idx, OH, OW), and where the rows come from
    (a _Rows)."""
    __slots__ = ("algorithm", "xp", "rows", "pooled", "x_shape", "padding", "geometry", "has_bias")

    def __init__(self, algorithm, xp, rows, pooled, x_shape, padding, geometry, has_bias):
        self.algorithm, self.xp, self.rows, self.pooled = algorithm, xp, rows, pooled
        self.x_shape, self.padding, self.geometry, self.has_bias = x_shape, padding, geometry, has_bias


class _PointwiseRecord:
    """A 1x1 convolution's input planes x (N, C, OH*OW) (at a stride: the pixels it reads), whether
    it has a bias, the stride and the shape of the whole input."""
    __slots__ = ("x", "has_bias", "stride", "x_shape")
    algorithm = "pointwise"

    def __init__(self, x, has_bias, stride, x_shape):
        self.x, self.has_bias, self.stride, self.x_shape = x, has_bias, stride, x_shape


# ---------------------------------------------------------------- chunks of samples on the cores
# A chunk of samples is one task for the cores (backend.cores): the strategy's min_tasks at least, so
# that two cores share the work evenly although the second starts late, and for the GEMM paths at
# most rows_chunk_bytes of rows per chunk, so that a chunk's rows (reused for their own gradient) and
# dy stay in L2. Chunk sizes depend on the shapes alone, never on the thread count: a weight gradient
# is summed per chunk, then over chunks in order, so the chunk fixes its order of additions.

def _direct_chunk(N):
    return _balanced_chunk(N, numba_strategy.current().direct_max_chunk)


def _pointwise_forward(x, w, b, stride, normalize=None):
    """A 1x1 convolution without padding: y[n] (OC, OH*OW) = w (OC, C) @ x[n] (C, OH*OW), from x's
    planes (at a stride, from the planes of the pixels it reads, x[:, :, ::SH, ::SW], which each task
    copies for its samples first): by the register-blocked sums with one tap for large ones
    (numba_blocked), else straight into y's planes by BLAS. normalize=(mean, invstd, gamma, beta,
    relu), for inference: each task then normalizes (and rectifies) its samples' output in place, as
    normalize_eval_in_place would, while it is in the cache (the copied pixels are scratch, not kept)."""
    x_shape = x.shape
    x = np.ascontiguousarray(x)
    N, C = x.shape[:2]
    SH, SW = stride
    H, W = -(-x.shape[2] // SH), -(-x.shape[3] // SW)
    OC = w.shape[0]
    strided = (SH, SW) != (1, 1)
    if not strided:
        x3 = x.reshape(N, C, H * W)
    elif normalize is None:
        x3 = np.empty((N, C, H * W), dtype=x.dtype)            # the read pixels, kept for backward
    else:
        x3 = None                                              # inference: each task's are scratch
    w_col = np.ascontiguousarray(w).reshape(OC, C)
    y = np.empty((N, OC, H, W), dtype=x.dtype)
    y3 = y.reshape(N, OC, H * W)
    chunk = _rows_chunk(N, C * H * W * x.dtype.itemsize)
    blocked = numba_strategy.pointwise_by_blocked_sums(C, OC, H * W)

    def forward_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        read = x3[part] if x3 is not None else _scratch("pointwise read", (len(x[part]), C, H * W), x.dtype)
        if strided:
            _copy_strided(x[part], read.reshape(-1, C, H, W), SH, SW)
        if blocked:
            numba_blocked.pointwise_forward(read, w_col, b, y3, i * chunk)
        else:
            np.matmul(w_col, read, out=y3[part])
            if b is not None:
                _add_bias(y3[part], b)
        if normalize is not None:
            mean, invstd, gamma, beta, relu = normalize
            numba_norm.normalize_chunk_eval(y3[part], mean, invstd, gamma, beta, relu)

    if N:
        cores.run(forward_chunk, -(-N // chunk))
    return y, _PointwiseRecord(x3, b is not None, tuple(stride), x_shape)


@njit(**FAST)
def _copy_strided(x, sub, SH, SW):
    """sub[n, c, i, j] = x[n, c, i*SH, j*SW]."""
    N, C, OH, OW = sub.shape
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                src, dst = x[n, c, i * SH], sub[n, c, i]
                for j in range(OW):
                    dst[j] = src[j * SW]


@njit(**FAST)
def _spread_strided(sub, dx, SH, SW):
    """dx (n, C, H, W) = zero but dx[:, :, i*SH, j*SW] = sub[:, :, i, j]: the gradient of _copy_strided."""
    N, C, OH, OW = sub.shape
    for n in range(N):
        for c in range(C):
            plane = dx[n, c]
            for h in range(plane.shape[0]):
                _fill(plane[h], 0)
            for i in range(OH):
                src, dst = sub[n, c, i], plane[i * SH]
                for j in range(OW):
                    dst[j * SW] = src[j]


def _pointwise_backward(dy, record, w, input_grad, dw_may_wait=False):
    """Gradients of _pointwise_forward: dw = the sum over samples of dy[n] @ x[n].T (per chunk, then
    chunks in order), dx[n] = w.T @ dy[n], db = dy's sums. By the blocked sums with dx and
    dw_may_wait, dw's tasks may be deferred (cores.defer, as numba_blocked.backward's) and dw is
    final after cores.settle()."""
    x3 = record.x
    N, C, HW = x3.shape
    OC = w.shape[0]
    g3 = np.ascontiguousarray(dy).reshape(N, OC, HW)
    w_col = np.ascontiguousarray(w).reshape(OC, C)
    dx = np.empty(record.x_shape, dtype=dy.dtype) if input_grad else None
    strided = record.stride != (1, 1)
    chunk = _rows_chunk(N, C * HW * dy.dtype.itemsize)
    n_tasks = -(-N // chunk)
    no_bias = np.zeros(OC, dtype=dy.dtype)                 # a pass over dy saved where there is no bias
    blocked = numba_strategy.pointwise_by_blocked_sums(C, OC, HW)
    deferred = blocked and input_grad and _defers_weight_grad(dw_may_wait, N * (C + OC) * HW * dy.dtype.itemsize)
    dw_parts = [None] * n_tasks

    def weight_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        if blocked:
            dw_parts[i] = numba_blocked.pointwise_weight_grad(g3[part], x3[part])
        else:
            dw_parts[i] = np.matmul(g3[part], x3[part].transpose(0, 2, 1)).sum(axis=0)

    def backward_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        if not deferred:
            weight_chunk(i)
        db = g3[part].sum(axis=(0, 2)) if record.has_bias else no_bias
        if input_grad:                                     # at a stride: the read pixels' gradient, then spread
            read = _scratch("pointwise dx", (len(g3[part]), C, HW), dy.dtype) if strided else \
                dx.reshape(N, C, HW)[part]
            if blocked:
                numba_blocked.pointwise_input_grad(g3[part], w_col, read)
            else:
                np.matmul(w_col.T, g3[part], out=read)
            if strided:
                _spread_strided(read.reshape(read.shape[:2] + dy.shape[2:]), dx[part], *record.stride)
        return db

    if not N:
        return dx, np.zeros(w.shape, dtype=dy.dtype), np.zeros(OC, dtype=dy.dtype) if record.has_bias else None
    dw = np.empty((OC, C), dtype=dy.dtype)

    def total():
        _add_in_order(dw_parts, out=dw)

    if deferred:
        cores.defer(weight_chunk, n_tasks, total)
    db = _add_in_order(cores.run(backward_chunk, n_tasks))
    if not deferred:
        total()
    return dx, dw.reshape(w.shape), db if record.has_bias else None


def _planes_forward(x, w, b, stride, padding, dilation, relu_pool, forward, backward, normalize=None):
    """A convolution from the padded input planes by the given forward algorithm ('direct', 'gemm',
    'blocked' or 'winograd'; 'gemm' at any stride and dilation, 'blocked' at stride 1 or 2 (fused
    with relu_pool at 1), the others at stride 1 without dilation). x (N, C, H, W), w (OC, C, KH, KW), b (OC,) or None.
    Returns y (N, OC, OH, OW), or relu(maxpool(y)) (N, OC, OH//2, OW//2) with relu_pool, and a
    _PlanesRecord. normalize=(mean, invstd, gamma, beta, relu), for inference by the direct sums: each
    task normalizes (and rectifies) its samples' output in place, as _pointwise_forward's do."""
    PH, PW = padding
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    geometry = _Rows(x.shape, w.shape, stride, padding, dilation)
    Wp, Wq, L, OH, OW = geometry.Wp, geometry.Wq, geometry.L, geometry.OH, geometry.OW
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    if forward == "blocked" and relu_pool:
        y, xq, idx = numba_blocked.forward(x, w, b, 1, padding, relu_pool=True)
        return y, _PlanesRecord("blocked", xq, None, (y, idx, OH, OW), x.shape, padding, geometry, b is not None)
    if forward == "blocked":
        done = numba_blocked.forward(x, w, b, geometry.SH, padding)
        return done[0], _PlanesRecord("blocked", done[1], None, None, x.shape, padding, geometry, b is not None)
    bias = np.zeros(OC, dtype=x.dtype) if b is None else b
    zero = x.dtype.type(0)
    if relu_pool:
        y = np.empty((N, OC, OH // 2, OW // 2), dtype=x.dtype)
        idx = np.empty(y.shape, dtype=np.int8)             # the winner of each window, 0..3
        pooled = (y, idx, OH, OW)
    else:
        y, pooled = np.empty((N, OC, OH, OW), dtype=x.dtype), None
    if forward == "winograd":
        tiles = numba_winograd.Tiles(x.shape, PH, PW, pooled=relu_pool)
        xq = tiles.input_planes(x)
        numba_winograd.forward(x, xq, w, bias, y, idx if relu_pool else None, tiles, zero)
        return y, _PlanesRecord("winograd", xq, None, pooled, x.shape, padding, geometry, b is not None)
    direct = forward == "direct"
    xp = _padded_wide(x, PH, PW)
    w_col = w.reshape(OC, -1)
    chunk = _direct_chunk(N) if direct else _rows_chunk(N, w_col.shape[1] * L * x.dtype.itemsize)
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
            if normalize is not None:
                mean, invstd, gamma, beta, relu = normalize
                numba_norm.normalize_chunk_eval(y[part].reshape(-1, OC, OH * OW), mean, invstd, gamma, beta, relu)
        else:
            n = min(chunk, N - first)
            # one task keeps its rows for backward: a new array, not this thread's scratch
            rows = _scratch("rows", (w_col.shape[1], n * L), x.dtype) if n < N else \
                np.empty((w_col.shape[1], n * L), dtype=x.dtype)
            geometry.gather(xp[part], rows)
            y_wide = np.matmul(w_col, rows, out=_scratch("out", (OC, n * L), x.dtype))
            if relu_pool:
                _unwiden_relu_pool(y_wide, bias, y, idx, Wp, L, first, zero)
            else:
                _unwiden(y_wide, bias, y, Wq, first)
            return rows

    rows = cores.run(forward_chunk, n_tasks)[0] if N else None
    kept = rows if n_tasks == 1 and backward == "gemm" else None
    return y, _PlanesRecord(backward, xp, kept, pooled, x.shape, padding, geometry, b is not None)


def _planes_backward(dy, record, w, input_grad, dw_may_wait=False):
    """Gradients through _planes_forward by the record's backward algorithm: (dx or None, dw, db or
    None). dy has the shape of forward's y (pooled after relu_pool: the gradient then goes straight
    into the wide layout). The same chunks of samples as forward are the tasks; each returns its
    share of dw and db, added in chunk order."""
    r = record
    xp, kept_rows, pooled, method, geometry = r.xp, r.rows, r.pooled, r.algorithm, r.geometry
    (PH, PW), x_shape = r.padding, r.x_shape
    N, C, H, W = x_shape
    OC, _, KH, KW = w.shape
    if method == "blocked":
        return numba_blocked.backward(dy, xp, np.ascontiguousarray(w), x_shape, geometry.SH, r.padding, input_grad,
                                      r.has_bias, None if pooled is None else pooled[:2], dw_may_wait)
    if method == "winograd":
        tiles = numba_winograd.Tiles(x_shape, PH, PW, pooled=pooled is not None)
        dx, dw, db = numba_winograd.backward(np.ascontiguousarray(dy), xp, pooled, np.ascontiguousarray(w), x_shape,
                                             tiles, input_grad)
        return dx, dw, db if r.has_bias else None
    Wp, Wq, L = geometry.Wp, geometry.Wq, geometry.L
    dy, w, zero = np.ascontiguousarray(dy), np.ascontiguousarray(w), dy.dtype.type(0)
    direct = method == "direct"
    sparse = method == "sparse" and _all_finite(w.reshape(-1))
    kernel = numba_sparse.kernel_rows(w, xp.shape[2], Wp) if sparse else None
    no_gradient = np.empty((0,) + xp.shape[1:], dtype=dy.dtype)        # the sparse kernel's "no dx"
    w_col = w.reshape(OC, -1)
    chunk = _direct_chunk(N) if direct else N if kept_rows is not None else \
        _rows_chunk(N, w_col.shape[1] * L * dy.dtype.itemsize)
    n_tasks = -(-N // chunk)
    dxp = np.empty(xp.shape, dtype=dy.dtype) if input_grad else None      # padded wide planes
    dx = np.empty(x_shape, dtype=dy.dtype) if input_grad and (PH or PW) else None
    first_layer = direct and pooled is not None and not input_grad
    no_bias = np.zeros(OC, dtype=dy.dtype)                 # a pass over dy saved where there is no bias

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
            dw, db = numba_sparse.backward_chunk(xp[part], dy[part], pooled[0][part], pooled[1][part], *kernel,
                                                 Wp, KW, dxp[part] if input_grad else no_gradient, zero)
            if dx is not None:
                _crop_padding(dxp[part], dx[part], PH, PW, Wp)
            return dw, db
        g = _scratch("dy", (OC, n * L), dy.dtype)           # the wide layout, channel-major
        if pooled is None:
            _widen(dy[part], g.reshape(OC, n, L), Wq)
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
                geometry.gather(xp[part], rows)
            dw = np.ascontiguousarray((rows @ g.T).T).reshape(w.shape)   # rows @ g.T: 2x faster than g @ rows.T
            db = g.sum(axis=1) if r.has_bias else no_bias
            if input_grad:      # into the rows' own scratch when they are spent: half the cache footprint
                drows = np.matmul(w_col.T, g, out=rows if kept_rows is None else
                                  _scratch("drows", (w_col.shape[1], n * L), dy.dtype))
                geometry.scatter(drows, dxp[part])
        if dx is not None:
            _crop_padding(dxp[part], dx[part], PH, PW, Wp)
        return dw, db

    if N:
        dw, db = _sum_in_order(cores.run(backward_chunk, n_tasks))
    else:
        dw, db = np.zeros_like(w), np.zeros(OC, dtype=dy.dtype)
    return _input_grad(dxp, dx, x_shape), dw, db if r.has_bias else None
