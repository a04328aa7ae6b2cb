"""Max and average pooling on the Numba backend, a chunk of samples per task on the cores.

Backward scatters within a sample, in a fixed order, so results are repeatable bit for bit on any
number of threads. Index formulas (output row oh, kernel row kh, stride SH, padding PH):
    ih = oh * SH - PH + kh
"""
import numpy as np
from numba import njit

from . import im2col_conv
from . import numpy_ops as _reference
from .numba_common import FAST, REDUCE, _by_samples, _fill
from .numba_relu_pool import _first_max, _max_of_four

output_size = im2col_conv.output_size


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


def maxpool2d_forward(x, kernel_size, stride, padding):
    """As numpy_ops; record: (idx, x_shape, geometry), idx int8 (0..3) for 2x2 windows at stride 2."""
    geometry = (*kernel_size, *stride, *padding)
    KH, KW, SH, SW, PH, PW = geometry
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
    return y, (idx, x.shape, geometry)


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


def maxpool2d_backward(dy, record):
    idx, x_shape, (KH, KW, SH, SW, PH, PW) = record
    dx = np.empty(x_shape, dtype=dy.dtype)
    dy, zero = np.ascontiguousarray(dy), dy.dtype.type(0)
    if (KH, KW, SH, SW, PH, PW) == (2, 2, 2, 2, 0, 0):
        _by_samples(dx, lambda part: _maxpool_backward_2x2(dy[part], idx[part], dx[part], zero))
        return dx
    dummy = np.ones((1, 1), dtype=dy.dtype)
    _by_samples(dx, lambda part: _pool_backward(dy[part], idx[part], dummy, dx[part], KH, KW, SH, SW, PH, PW, True))
    return dx


def avgpool2d_backward(dy, record):
    """numpy_ops.avgpool2d_forward's record, the divisor spread to every window."""
    divisor, x_shape, (KH, KW, SH, SW, PH, PW) = record
    OH, OW = dy.shape[2:]
    divisor = np.broadcast_to(np.asarray(divisor, dtype=dy.dtype), (OH, OW)).copy()
    idx = np.zeros((1, 1, 1, 1), dtype=np.int64)
    dx = np.empty(x_shape, dtype=dy.dtype)
    dy = np.ascontiguousarray(dy)
    _by_samples(dx, lambda part: _pool_backward(dy[part], idx, divisor, dx[part], KH, KW, SH, SW, PH, PW, False))
    return dx


@njit(**REDUCE)
def _global_mean(x, y):
    """y (n, C): the mean of each plane of x (n, C, H*W), its sum kept in vector partial sums."""
    N, C, L = x.shape
    for n in range(N):
        for c in range(C):
            plane = x[n, c]
            total = plane.dtype.type(0)
            for i in range(L):
                total += plane[i]
            y[n, c] = total / plane.dtype.type(L)


@njit(**FAST)
def _global_mean_backward(dy, dx):
    """dx (n, C, H*W): each plane filled with its gradient dy (n, C) over H*W."""
    N, C, L = dx.shape
    for n in range(N):
        for c in range(C):
            _fill(dx[n, c], dy[n, c] / dy.dtype.type(L))


def adaptive_avgpool2d_forward(x, output_size):
    """As numpy_ops; global pooling ((1, 1), ResNet's and MobileNet's last step) as one pass of
    plane sums on the cores (NumPy's mean over two axes of small planes took 4x as long), any other
    size by NumPy's windows."""
    if tuple(output_size) != (1, 1):
        return _reference.adaptive_avgpool2d_forward(x, output_size)
    N, C, H, W = x.shape
    x3 = np.ascontiguousarray(x).reshape(N, C, H * W)
    y = np.empty((N, C), dtype=x.dtype)
    _by_samples(x3, lambda part: _global_mean(x3[part], y[part]))
    return y.reshape(N, C, 1, 1), (x.shape, (1, 1))


def adaptive_avgpool2d_backward(dy, record):
    (N, C, H, W), size = record
    if size != (1, 1):
        return _reference.adaptive_avgpool2d_backward(dy, record)
    dy2 = np.ascontiguousarray(dy).reshape(N, C)
    dx = np.empty((N, C, H * W), dtype=dy.dtype)
    _by_samples(dx, lambda part: _global_mean_backward(dy2[part], dx[part]))
    return dx.reshape(N, C, H, W)
