"""Batch normalization on the Numba backend: one pass per channel, channels in chunks on the cores.

Statistics are summed in float64 (REDUCE lets LLVM keep several partial sums in vector registers:
a fixed order still, so repeatable). The eval-mode pass does numpy_ops' operations in its order,
so it gives the same bits without that version's four temporaries of x's size.
"""
import numpy as np
from numba import njit

from .numba_common import FAST, REDUCE, _by_channels


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
    """As numpy_ops (statistics summed in float64); record: (xhat, invstd)."""
    x3 = np.ascontiguousarray(x3)
    C, dtype = x3.shape[1], x3.dtype
    y, xhat = np.empty_like(x3), np.empty_like(x3)
    mean, var, invstd = (np.empty(C, dtype=dtype) for _ in range(3))
    _by_channels(x3, lambda c_first, c_stop: _bn_forward(x3, gamma, beta, eps, y, xhat, mean, var, invstd,
                                                        c_first, c_stop))
    return y, mean, var, (xhat, invstd)


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


def batchnorm_forward_eval(x3, mean, var, eps, gamma, beta, keep_record):
    """numpy_ops.batchnorm_forward_eval without its four temporaries of x's size (fresh
    multi-megabyte arrays: FashionCNN's inference spent 60 % of its time in them)."""
    invstd = 1 / np.sqrt(var + eps)
    keep_xhat = bool(keep_record)
    x3 = np.ascontiguousarray(x3)
    y = np.empty_like(x3)
    xhat = np.empty_like(x3) if keep_xhat else np.empty((0, 0, 0), dtype=x3.dtype)
    _by_channels(x3, lambda c_first, c_stop: _bn_forward_eval(x3, mean, invstd, gamma, beta, y, xhat,
                                                             bool(keep_xhat), c_first, c_stop))
    return y, ((xhat, invstd) if keep_xhat else None)


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


def batchnorm_backward_train(dy3, record, gamma):
    xhat, invstd = record
    dy3 = np.ascontiguousarray(dy3)
    C = dy3.shape[1]
    dx = np.empty_like(dy3)
    dgamma, dbeta = np.empty(C, dtype=dy3.dtype), np.empty(C, dtype=dy3.dtype)
    _by_channels(dy3, lambda c_first, c_stop: _bn_backward(dy3, xhat, invstd, gamma, dx, dgamma, dbeta,
                                                          c_first, c_stop))
    return dx, dgamma, dbeta
