"""Numba-compiled CPU primitives, the same functions and signatures as numpy_ops.

Each kernel is a plain loop nest compiled by Numba, parallel over the batch (prange over N, or
over channels for batch-norm reductions). Backward passes that fold windows back onto the input
(col2im, pooling) scatter-add, but each thread owns whole samples, so no two threads write the
same element and the order of additions is fixed: results are repeatable bit for bit.
Index formulas (for input row ih, kernel row kh, stride SH, padding PH):
    ih = oh * SH - PH + kh        and conversely   oh = (ih + PH - kh) / SH  when it divides.
GEMMs stay in NumPy's BLAS.

Threads: on the 2-core machines we measure on, OpenBLAS's threads keep spinning after a GEMM
while Numba's OpenMP threads start the next kernel; the two pools then fight over the cores and a
LeNet training step took 73 ms instead of 13 ms. BLAS threads and Numba threads together must not
exceed the cores, and the big GEMMs gain more from threads than these memory-bound loops do, so
Numba runs its kernels on one thread (set MINICNN_NUMBA_THREADS to change that).
"""
import os

import numba
import numpy as np
from numba import njit, prange

from . import numpy_ops

name = "numba"
xp = np
output_size = numpy_ops.output_size
dropout_mask = numpy_ops.dropout_mask
log_softmax = numpy_ops.log_softmax

FAST = dict(parallel=True, cache=True, fastmath=False, nogil=True)
numba.set_num_threads(min(numba.config.NUMBA_NUM_THREADS, int(os.environ.get("MINICNN_NUMBA_THREADS", 1))))


# ---------------------------------------------------------------- convolution

@njit(**FAST)
def _im2col(x, col, KH, KW, SH, SW, PH, PW, OH, OW):
    """Per output pixel, the kernel columns that land inside the image are [kw_lo, kw_hi): the
    inner loop copies that contiguous run and zero-fills the rest, with no test per tap."""
    N, C, H, W = x.shape
    for n in prange(N):
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
    """Each thread owns whole samples, so its scatter never meets another thread's writes, and
    col is read in memory order (the fast direction); the summation order is fixed. Taps in the
    padding are skipped by clipping the kernel-column range once per output pixel."""
    N, C, H, W = dx.shape
    for n in prange(N):
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


# ---------------------------------------------------------------- pooling

@njit(**FAST)
def _maxpool_forward(x, y, idx, KH, KW, SH, SW, PH, PW):
    """The window's rows and columns are clipped to the image instead of testing every tap
    (padding is -inf, so it never wins); the first maximum wins ties, a NaN wins over numbers."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for n in prange(N):
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
                            if v > best or (v != v and best == best):
                                best, best_k = v, kh * KW + kw
                    y[n, c, oh, ow] = best
                    idx[n, c, oh, ow] = best_k


def maxpool2d_forward(x, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    idx = np.empty((N, C, OH, OW), dtype=np.int64)
    _maxpool_forward(np.ascontiguousarray(x), y, idx, KH, KW, SH, SW, PH, PW)
    return y, idx


@njit(**FAST)
def _pool_backward(dy, idx, divisor, dx, KH, KW, SH, SW, PH, PW, use_idx):
    """Scatter per sample (threads own samples): max pooling sends dy to the pixel idx names,
    average pooling shares dy / divisor over the window."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    for n in prange(N):
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


def maxpool2d_backward(dy, idx, x_shape, KH, KW, SH, SW, PH, PW):
    dx = np.empty(x_shape, dtype=dy.dtype)
    dummy = np.ones((1, 1), dtype=dy.dtype)
    _pool_backward(np.ascontiguousarray(dy), idx, dummy, dx, KH, KW, SH, SW, PH, PW, True)
    return dx


def avgpool2d_forward(x, KH, KW, SH, SW, PH, PW, count_include_pad=True):
    return numpy_ops.avgpool2d_forward(x, KH, KW, SH, SW, PH, PW, count_include_pad)


def avgpool2d_backward(dy, divisor, x_shape, KH, KW, SH, SW, PH, PW):
    OH, OW = dy.shape[2:]
    divisor = np.broadcast_to(np.asarray(divisor, dtype=dy.dtype), (OH, OW)).copy()
    idx = np.zeros((1, 1, 1, 1), dtype=np.int64)
    dx = np.empty(x_shape, dtype=dy.dtype)
    _pool_backward(np.ascontiguousarray(dy), idx, divisor, dx, KH, KW, SH, SW, PH, PW, False)
    return dx


# ---------------------------------------------------------------- batch normalization

@njit(**FAST)
def _bn_forward(x, gamma, beta, eps, y, xhat, mean, var, invstd):
    N, C, L = x.shape
    M = N * L
    for c in prange(C):
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
    _bn_forward(x3, gamma, beta, eps, y, xhat, mean, var, invstd)
    return y, xhat, mean, var, invstd


@njit(**FAST)
def _bn_backward(dy, xhat, invstd, gamma, dx, dgamma, dbeta):
    N, C, L = dy.shape
    M = N * L
    for c in prange(C):
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
    _bn_backward(dy3, xhat, invstd, gamma, dx, dgamma, dbeta)
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- softmax cross-entropy

@njit(**FAST)
def _softmax_ce(logits, labels, smoothing, loss, probs):
    N, K = logits.shape
    for n in prange(N):
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

@njit(**FAST)
def _relu(x, y, mask):
    flat_x, flat_y, flat_m = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    for i in prange(flat_x.size):
        v = flat_x[i]
        flat_m[i] = v > 0
        flat_y[i] = v if v > 0 else (v if v != v else 0)


def relu_forward(x):
    if not x.flags.c_contiguous:
        return numpy_ops.relu_forward(x)
    y = np.empty_like(x)
    mask = np.empty(x.shape, dtype=np.bool_)
    _relu(x, y, mask)
    return y, mask
