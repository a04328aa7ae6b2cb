"""Batch normalization on the Numba backend, channels in chunks on the cores; optionally with the
ReLU that follows it fused in (batchnorm_relu_*), or with a residual block's sum and ReLU
(batchnorm_add_relu_*: the sum as each value is written, and in backward the sum's gradient written
by each task just before it runs the plain kernel on it).

Training: statistics summed in float64 (REDUCE lets LLVM keep several partial sums in vector
registers: a fixed order still, so repeatable), then y = x * alpha + shift in x's dtype with alpha =
invstd * gamma, shift = beta - mean * alpha, as torch's CPU kernel computes it; backward recomputes
xhat from x (no copy of x's size is kept) and follows torch's formula. The eval-mode pass does
numpy_ops' operations in its order, so it gives the same bits without that version's four
temporaries of x's size.
"""
import numpy as np
from numba import njit

from . import numba_strategy, numpy_ops
from .numba_common import DIRECT, FAST, REDUCE, _by_channels
from .numba_elementwise import _relu_backward


@njit(**REDUCE)
def _bn_statistics(x, mean, c):
    """Channel c's mean into mean[c] (float64) and its biased variance returned, both sums in
    float64: the mean, then the squared deviations from it (the channel is in L2 by then)."""
    N, L = x.shape[0], x.shape[2]
    M = N * L
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
    mean[c] = m
    return ss / M


@njit(cache=True, fastmath={"contract"}, nogil=True)
def _bn_affine(v, alpha, shift):
    """v * alpha + shift in v's dtype, one fused multiply-add. Not inlined by Numba, so that its own
    flags hold wherever it is called: backward recomputes forward's pre-ReLU values with it, to the
    bit, instead of reading the output back from memory."""
    return v * alpha + shift


@njit(cache=True, nogil=True)
def _plus(h, r):
    """h + r in their dtype, no fast-math flag: a residual's sum, as add computes it, wherever it is
    inlined (never reassociated with or contracted into the affine step before it)."""
    return h + r


@njit(cache=True, inline="always")
def _rectified(y, relu, zero):
    """y, or 0 where relu and y <= 0 (NaN kept, as relu_forward)."""
    if relu and not ((y > zero) | (y != y)):
        return zero
    return y


@njit(**DIRECT)
def _bn_forward(x, gamma, beta, eps, y, mean, var, mean64, invstd64, alpha, shift, residual, relu, c_first, c_stop,
                short_row):
    """For channels [c_first, c_stop): the statistics, then y = x * alpha + shift with alpha =
    invstd * gamma and shift = beta - mean * alpha in x's dtype, as torch computes it (alpha and
    shift kept for backward), plus residual's value where residual is an array (else None: Numba
    compiles that case without the branch). Rows shorter than short_row go sample by sample through the channels
    (see _bn_backward), longer ones channel by channel (a channel's second and third passes then
    read L2)."""
    N, L = x.shape[0], x.shape[2]
    t = x.dtype.type
    zero = t(0)
    short = L < short_row
    if short:
        _bn_statistics_by_sample(x, mean64, invstd64, c_first, c_stop)
    for c in range(c_first, c_stop):
        v = invstd64[c] if short else _bn_statistics(x, mean64, c)     # invstd64 held the variance
        r = 1.0 / np.sqrt(v + eps)
        invstd64[c] = r
        mean[c], var[c] = mean64[c], v
        a = t(r * gamma[c])
        b = t(beta[c] - mean64[c] * r * gamma[c])
        alpha[c], shift[c] = a, b
        if not short:
            for n in range(N):
                _bn_output_row(x, residual, y, n, c, a, b, relu, zero)
    if short:
        for n in range(N):
            for c in range(c_first, c_stop):
                _bn_output_row(x, residual, y, n, c, alpha[c], shift[c], relu, zero)


@njit(cache=True, inline="always")
def _bn_output_row(x, residual, y, n, c, a, b, relu, zero):
    """Row (n, c) of the batch norm's output, x * alpha + shift in x's dtype (torch's form), plus
    residual's row unless residual is None (then rounded again, as add), rectified with relu."""
    if residual is None:
        for i in range(x.shape[2]):
            y[n, c, i] = _rectified(_bn_affine(x[n, c, i], a, b), relu, zero)
    else:
        for i in range(x.shape[2]):
            y[n, c, i] = _rectified(_plus(_bn_affine(x[n, c, i], a, b), residual[n, c, i]), relu, zero)


@njit(**REDUCE)
def _bn_statistics_by_sample(x, mean, variance, c_first, c_stop):
    """_bn_statistics for channels [c_first, c_stop) sample by sample: means into mean, biased
    variances into variance (both float64, summed row by row in sample order)."""
    N, L = x.shape[0], x.shape[2]
    M = N * L
    for c in range(c_first, c_stop):
        mean[c], variance[c] = 0.0, 0.0
    for n in range(N):
        for c in range(c_first, c_stop):
            s = 0.0
            for i in range(L):
                s += x[n, c, i]
            mean[c] += s
    for c in range(c_first, c_stop):
        mean[c] /= M
    for n in range(N):
        for c in range(c_first, c_stop):
            m, ss = mean[c], 0.0
            for i in range(L):
                d = x[n, c, i] - m
                ss += d * d
            variance[c] += ss
    for c in range(c_first, c_stop):
        variance[c] /= M


def _forward_train(x3, gamma, beta, eps, relu, residual3=None):
    x3 = np.ascontiguousarray(x3)
    if residual3 is not None:
        numpy_ops._check_same_array(x3, residual3)
        residual3 = np.ascontiguousarray(residual3)
    C, dtype = x3.shape[1], x3.dtype
    y = np.empty_like(x3)
    mean, var = np.empty(C, dtype=dtype), np.empty(C, dtype=dtype)
    mean64, invstd64 = np.empty(C), np.empty(C)
    alpha, shift = np.empty(C, dtype=dtype), np.empty(C, dtype=dtype)
    short_row = numba_strategy.current().batchnorm_short_row
    _by_channels(x3, lambda c_first, c_stop: _bn_forward(x3, gamma, beta, eps, y, mean, var, mean64, invstd64,
                                                        alpha, shift, residual3, relu, c_first, c_stop,
                                                        short_row))
    return y, mean, var, (x3, mean64, invstd64, alpha, shift, relu, y if residual3 is not None and relu else None)


def batchnorm_forward_train(x3, gamma, beta, eps):
    """As numpy_ops, in torch's form (statistics in float64, then x * alpha + shift in x's dtype);
    record: (x3, mean, invstd, alpha, shift, relu, summed output): backward recomputes xhat from x
    instead of keeping a copy of x's size (x is kept alive by the layer before anyway); the last is
    batchnorm_add_relu_forward_train's rectified output (its backward's mask), else None."""
    return _forward_train(x3, gamma, beta, eps, False)


def batchnorm_relu_forward_train(x3, gamma, beta, eps):
    """batchnorm_forward_train with the ReLU applied as each value is written (no second pass)."""
    return _forward_train(x3, gamma, beta, eps, True)


def batchnorm_add_relu_forward_train(x3, gamma, beta, eps, residual3, relu):
    """batchnorm_forward_train plus residual3 (and the ReLU, with relu) as each value is written: a
    residual block's last batch norm, sum and ReLU in one pass; the same bits as the three ops.
    The record keeps the output, whose zeros are the ReLU's mask for backward (as relu_backward's)."""
    return _forward_train(x3, gamma, beta, eps, bool(relu), residual3)


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


def eval_invstd(var, eps):
    """1 / sqrt(var + eps), as the eval-mode kernels take it (to the bit: the fused inference
    epilogue of numba_blocked takes it from here too)."""
    return 1 / np.sqrt(var + eps)


def batchnorm_forward_eval(x3, mean, var, eps, gamma, beta, keep_record):
    """numpy_ops.batchnorm_forward_eval without its four temporaries of x's size (fresh
    multi-megabyte arrays: FashionCNN's inference spent 60 % of its time in them)."""
    invstd = eval_invstd(var, eps)
    keep_xhat = bool(keep_record)
    x3 = np.ascontiguousarray(x3)
    y = np.empty_like(x3)
    xhat = np.empty_like(x3) if keep_xhat else np.empty((0, 0, 0), dtype=x3.dtype)
    _by_channels(x3, lambda c_first, c_stop: _bn_forward_eval(x3, mean, invstd, gamma, beta, y, xhat,
                                                             bool(keep_xhat), c_first, c_stop))
    return y, ((xhat, invstd) if keep_xhat else None)


@njit(**FAST)
def _bn_eval_in_place(x, mean, invstd, gamma, beta, relu, zero, c_first, c_stop):
    """_bn_forward_eval's output (the same operations) written over x, and with relu rectified as
    relu_forward does. Its own kernel: _bn_forward_eval with y = x and a ReLU branch ran MobileNetMNIST's
    inference 1.3-1.5x slower (216-243 -> 306-319 ms a pass at batch 1000)."""
    N, L = x.shape[0], x.shape[2]
    for n in range(N):
        for c in range(c_first, c_stop):
            m, r, g, b = mean[c], invstd[c], gamma[c], beta[c]
            row = x[n, c]
            if relu:
                for i in range(L):
                    v = (row[i] - m) * r * g + b
                    row[i] = v if (v > zero) | (v != v) else zero
            else:
                for i in range(L):
                    row[i] = (row[i] - m) * r * g + b


def normalize_chunk_eval(x3, mean, invstd, gamma, beta, relu):
    """normalize_eval_in_place's pass over x3 (n, C, L), C-contiguous, on the calling thread (a task's
    own samples: the caller shares the work out), with invstd = eval_invstd(var, eps) given."""
    _bn_eval_in_place(x3, mean, invstd, gamma, beta, bool(relu), x3.dtype.type(0), 0, x3.shape[1])


def normalize_eval_in_place(x3, mean, var, eps, gamma, beta, relu):
    """batchnorm_forward_eval (and relu_forward after it, with relu) over x3 (N, C, L), C-contiguous
    and the caller's own (a convolution's fresh output, for conv2d_batchnorm_eval): the same bits
    without a new array or a second pass."""
    invstd = eval_invstd(var, eps)
    _by_channels(x3, lambda c_first, c_stop: _bn_eval_in_place(x3, mean, invstd, gamma, beta, bool(relu),
                                                                x3.dtype.type(0), c_first, c_stop))


@njit(**REDUCE)
def _bn_backward(dy, x, mean, invstd, alpha, shift, gamma, relu, dx, dgamma, dbeta, c_first, c_stop):
    """torch's batch-norm backward per channel, the ReLU's gradient first where fused (0 where the
    output x * alpha + shift <= 0, as relu_backward; recomputed to the bit rather than read from the
    output: one array less to stream from memory, twice): with d = dy (masked) and xc = x - mean,
        sum_d, sum_dxc (summed in float64, row by row);  dgamma = sum_dxc * invstd;  dbeta = sum_d
        dx = (d - sum_d / M - xc * sum_dxc * invstd^2 / M) * invstd * gamma   (in dy's dtype)
    Both passes go sample by sample through the channels [c_first, c_stop), which lie side by side
    in memory: channel by channel, each of a channel's rows (49-784 values) started a new stream of
    cache misses, and rows of 196 values took twice as long as rows of 784. The mask is a select,
    not a branch, so the loops vectorize; and it is one loop with or without the ReLU (the output
    compared with 0, or with NaN: never true): with `relu` a branch around two loops, LLVM
    vectorized each its own way on some CPUs (AMD Zen 5: other partial sums, so the fused step's
    float64 gradients differed from the two layers' in the last bit)."""
    N, C, L = dy.shape
    M = N * L
    t = dy.dtype.type
    zero = t(0)
    floor = zero if relu else t(np.nan)                   # d = 0 where the output <= floor
    K = c_stop - c_first
    sum_d, sum_dxc = np.zeros(K), np.zeros(K)
    for n in range(N):
        for j in range(K):
            c = c_first + j
            m, a, b = t(mean[c]), alpha[c], shift[c]
            sb, sg = 0.0, 0.0
            for i in range(L):
                v = x[n, c, i]
                d = zero if _bn_affine(v, a, b) <= floor else dy[n, c, i]
                sb += d
                sg += d * (v - m)
            sum_d[j] += sb
            sum_dxc[j] += sg
    k, grad_mean, scale = np.empty(K, dy.dtype), np.empty(K, dy.dtype), np.empty(K, dy.dtype)
    for j in range(K):
        c, r = c_first + j, invstd[c_first + j]
        dbeta[c], dgamma[c] = sum_d[j], sum_dxc[j] * r
        k[j], grad_mean[j], scale[j] = t(sum_dxc[j] * r * r / M), t(sum_d[j] / M), t(r * gamma[c])
    for n in range(N):
        for j in range(K):
            c = c_first + j
            m, a, b, kj, gm, sj = t(mean[c]), alpha[c], shift[c], k[j], grad_mean[j], scale[j]
            for i in range(L):
                v = x[n, c, i]
                d = zero if _bn_affine(v, a, b) <= floor else dy[n, c, i]
                dx[n, c, i] = (d - gm - (v - m) * kj) * sj


@njit(**FAST)
def _sum_gradient(dy, y, dsum, c_first, c_stop):
    """The gradient of batchnorm_add_relu_forward_train's sum for channels [c_first, c_stop): relu_backward's
    kernel on the rectified output y, over each sample's rows of these channels (side by side)."""
    N, C, L = dy.shape
    flat_dy, flat_y, flat_dsum = dy.reshape(-1), y.reshape(-1), dsum.reshape(-1)
    zero = dy.dtype.type(0)
    for n in range(N):
        first, stop = (n * C + c_first) * L, (n * C + c_stop) * L
        _relu_backward(flat_dy[first:stop], flat_y[first:stop], flat_dsum[first:stop], zero)


def batchnorm_backward_train(dy3, record, gamma):
    x3, mean, invstd, alpha, shift, relu, _ = record           # (the last: the summed output, if rectified)
    dy3 = np.ascontiguousarray(dy3)
    C = dy3.shape[1]
    dx = np.empty_like(dy3)
    dgamma, dbeta = np.empty(C, dtype=dy3.dtype), np.empty(C, dtype=dy3.dtype)
    _by_channels(dy3, lambda c_first, c_stop: _bn_backward(dy3, x3, mean, invstd, alpha, shift, gamma, relu, dx,
                                                          dgamma, dbeta, c_first, c_stop))
    return dx, dgamma, dbeta


batchnorm_relu_backward_train = batchnorm_backward_train        # the record says whether to mask


def batchnorm_add_relu_backward_train(dy3, record, gamma):
    """As numpy_ops, in one run: with the ReLU, each task first writes its channels' sum gradient
    (relu_backward's rule on the output), then runs batchnorm_backward_train's kernel on it as it runs
    on relu_backward's output: the same bits (the mask inside that kernel's sums let LLVM vectorize
    them its own way, and float64 gradients differed in the last bit). Without it, dsum3 is dy3."""
    x3, mean, invstd, alpha, shift, relu, y = record
    dy3 = np.ascontiguousarray(dy3)
    C = dy3.shape[1]
    dx = np.empty_like(dy3)
    dsum = np.empty_like(dy3) if relu else dy3
    dgamma, dbeta = np.empty(C, dtype=dy3.dtype), np.empty(C, dtype=dy3.dtype)

    def task(c_first, c_stop):
        if relu:
            _sum_gradient(dy3, y, dsum, c_first, c_stop)
        _bn_backward(dsum, x3, mean, invstd, alpha, shift, gamma, False, dx, dgamma, dbeta, c_first, c_stop)

    _by_channels(dy3, task)
    return dx, dgamma, dbeta, dsum
