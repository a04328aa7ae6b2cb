"""The reference backend in plain NumPy: every op of the contract (backend/contract.py), readable
first, and the yardstick the faster backends are tested against.

Array layouts (shape letters: N batch, C channels, H/W height/width, KH/KW kernel, SH/SW
stride, PH/PW padding, OH/OW output height/width, K classes):

    x     (N, C, H, W)            images
    col   (N*OH*OW, C*KH*KW)      one row per output pixel, holding the window it sees
    idx   (N, C, OH, OW) int64    max-pool winner, flat index kh*KW + kw inside the window
    x3    (N, C, L)               batch-norm input seen as channels of L values each

Every function preserves the dtype of its floating inputs. Records (what a forward hands its
backward) are tuples, documented at each forward.
"""
import contextlib
import math
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view as _sliding_window_view

from . import im2col_conv
from .contract import ChainPlan

name = "numpy"
xp = np
host_read_interval = 1

# Column matrices larger than this are built a chunk of samples at a time (and rebuilt in backward
# instead of kept): AnimalNet's second layer alone would need 585 MB at batch 16.
_MAX_COL_BYTES = 64 * 2**20


def _windows(xpad, KH, KW, SH, SW, DH=1, DW=1):
    """View (N, C, OH, OW, KH, KW) of every window of a padded batch, without copying (a dilated
    window spans DH*(KH - 1) + 1 rows, of which every DH-th is a tap)."""
    span = (DH * (KH - 1) + 1, DW * (KW - 1) + 1)
    return _sliding_window_view(xpad, span, axis=(2, 3))[:, :, ::SH, ::SW, ::DH, ::DW]


def _pad(x, PH, PW, value=0):
    if PH == 0 and PW == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)), constant_values=value)


def _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW, DH=1, DW=1):
    """Adjoint of _windows: sum dwin (N, C, OH, OW, KH, KW) back onto (N, C, H, W).

    One strided add per kernel offset, so overlapping windows accumulate in a fixed order
    and the result is repeatable bit for bit.
    """
    N, C, H, W = x_shape
    OH, OW = dwin.shape[2:4]
    dxpad = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=dwin.dtype)
    for i in range(KH):
        for j in range(KW):
            top, left = i * DH, j * DW
            dxpad[:, :, top:top + SH * OH:SH, left:left + SW * OW:SW] += dwin[:, :, :, :, i, j]
    return np.ascontiguousarray(dxpad[:, :, PH:PH + H, PW:PW + W])


# ---------------------------------------------------------------- matrix products and convolution

def matmul(a, b):
    """a @ b. An inner dimension of 1 (a Linear layer's weight gradient at batch 1) is an outer
    product: OpenBLAS takes 1.0-1.6 ms for (512, 1) @ (1, 1600), broadcasting 0.1 ms; every
    element is one product either way, so the result is the same."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == 1 and b.shape[0] == 1:
        return a * b
    return a @ b


def im2col(x, kernel_size, stride, padding, dilation):
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    N, C = x.shape[:2]
    win = _windows(_pad(x, PH, PW), KH, KW, SH, SW, DH, DW)          # (N, C, OH, OW, KH, KW)
    OH, OW = win.shape[2:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(N * OH * OW, C * KH * KW)


def col2im(col, x_shape, kernel_size, stride, padding, dilation):
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    N, C, H, W = x_shape
    OH, OW = im2col_conv.output_size(H, KH, SH, PH, DH), im2col_conv.output_size(W, KW, SW, PW, DW)
    dwin = col.reshape(N, OH, OW, C, KH, KW).transpose(0, 3, 1, 2, 4, 5)
    return _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW, DH, DW)


def _conv_backward_gemms(dy, col, W_col, has_bias, input_grad):
    """dW = dy_rows.T @ col, db = column sums of dy_rows, dcol = dy_rows @ W_col, with dy_rows
    (n*L, OC) the pixels of dy (n, OC, OH, OW) as rows."""
    rows = dy.transpose(0, 2, 3, 1).reshape(-1, dy.shape[1])
    dW = rows.T @ col
    db = rows.sum(axis=0) if has_bias else None          # contiguous: faster than summing over NCHW
    dcol = rows @ W_col if input_grad else None
    return dW, db, dcol


def _rows_to_nchw(rows, b, n, OC, OH, OW):
    if b is not None:
        rows += b
    return rows.reshape(n, OH, OW, OC).transpose(0, 3, 1, 2)


_PRIMITIVES = im2col_conv.Primitives(im2col, col2im, matmul, _conv_backward_gemms, _rows_to_nchw, np)


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """im2col and one product per group (backend/im2col_conv.py); record: its Record."""
    return im2col_conv.forward(_PRIMITIVES, x, w, b, stride, padding, dilation, groups, _MAX_COL_BYTES)


def conv2d_backward(dy, record, w, input_grad, dw_may_wait):
    return im2col_conv.backward(_PRIMITIVES, dy, record, w, input_grad)          # dw final: nothing waits


def conv2d_relu_maxpool2d_forward(x, w, b, padding):
    """The three ops one after another; record: theirs."""
    y, conv = conv2d_forward(x, w, b, (1, 1), padding, (1, 1), 1)
    y, relu = relu_forward(y)
    y, pool = maxpool2d_forward(y, (2, 2), (2, 2), (0, 0))
    return y, (conv, relu, pool)


def conv2d_relu_maxpool2d_backward(dy, record, w, input_grad):
    conv, relu, pool = record
    return conv2d_backward(relu_backward(maxpool2d_backward(dy, pool), relu), conv, w, input_grad, False)


def conv2d_batchnorm_eval(x, w, b, stride, padding, dilation, groups, mean, var, eps, gamma, beta, relu, residual):
    return _conv2d_batchnorm_eval_by(sys.modules[__name__], x, w, b, stride, padding, dilation, groups, mean, var,
                                     eps, gamma, beta, relu, residual)


def _conv2d_batchnorm_eval_by(ops, x, w, b, stride, padding, dilation, groups, mean, var, eps, gamma, beta, relu,
                              residual):
    """conv2d_batchnorm_eval as the ops of the backend module ops, one after the other."""
    _check_residual(residual, x, w, stride, padding, dilation)
    y, _ = ops.conv2d_forward(x, w, b, stride, padding, dilation, groups)
    N, OC, OH, OW = y.shape
    y3, _ = ops.batchnorm_forward_eval(y.reshape(N, OC, OH * OW), mean, var, eps, gamma, beta, keep_record=False)
    return _sum_and_relu(ops, y3.reshape(y.shape), residual, relu)


def _check_residual(residual, x, w, stride, padding, dilation):
    """conv2d_batchnorm_eval's residual must be None or of the convolution's output shape (every
    backend checks it here, before computing anything)."""
    if residual is None:
        return
    (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
    shape = (x.shape[0], w.shape[0], im2col_conv.output_size(x.shape[2], w.shape[2], SH, PH, DH),
             im2col_conv.output_size(x.shape[3], w.shape[3], SW, PW, DW))
    if tuple(residual.shape) != shape:
        raise ValueError(f"conv2d_batchnorm_eval: the residual has shape {tuple(residual.shape)}, the "
                         f"convolution's output {shape}")


def _sum_and_relu(ops, y, residual, relu):
    """y + residual (when residual is an array, of y's shape) and then its ReLU (when relu), by ops'
    add and relu_forward: conv2d_batchnorm_eval's last steps."""
    if residual is not None:
        y = ops.add(y, residual)
    return ops.relu_forward(y)[0] if relu else y


# ---------------------------------------------------------------- pooling

def maxpool2d_forward(x, kernel_size, stride, padding):
    """The winner of a window is its first maximum, or where the window holds NaNs, its last NaN
    (torch's rule: a NaN wins over everything before it). record: (idx, x_shape, geometry)."""
    geometry = (*kernel_size, *stride, *padding)
    KH, KW, SH, SW, PH, PW = geometry
    win = _windows(_pad(x, PH, PW, value=-np.inf), KH, KW, SH, SW)
    N, C, OH, OW = win.shape[:4]
    flat = win.reshape(N, C, OH, OW, KH * KW)
    idx = flat.argmax(axis=-1)
    nan = np.isnan(flat)
    if nan.any():
        last_nan = KH * KW - 1 - nan[..., ::-1].argmax(axis=-1)
        idx = np.where(nan.any(axis=-1), last_nan, idx)
    y = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    return y, (idx, x.shape, geometry)


def maxpool2d_backward(dy, record):
    idx, x_shape, (KH, KW, SH, SW, PH, PW) = record
    offsets = np.arange(KH * KW).reshape(KH, KW)
    dwin = np.where(idx[..., None, None] == offsets, dy[..., None, None], 0).astype(dy.dtype)
    return _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW)


def avgpool2d_forward(x, kernel_size, stride, padding, count_include_pad):
    """record: (divisor, x_shape, geometry); the divisor a scalar, or (OH, OW) when the padding
    is not counted."""
    geometry = (*kernel_size, *stride, *padding)
    KH, KW, SH, SW, PH, PW = geometry
    win = _windows(_pad(x, PH, PW), KH, KW, SH, SW)
    divisor = _avgpool_divisor(x.shape, geometry, count_include_pad, x.dtype)
    return win.sum(axis=(4, 5)) / divisor, (divisor, x.shape, geometry)


def avgpool2d_backward(dy, record):
    divisor, x_shape, (KH, KW, SH, SW, PH, PW) = record
    share = (dy / divisor)[..., None, None]
    dwin = np.broadcast_to(share, dy.shape + (KH, KW))
    return _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW)


def _avgpool_divisor(x_shape, geometry, count_include_pad, dtype):
    KH, KW, SH, SW, PH, PW = geometry
    if count_include_pad or (PH == 0 and PW == 0):
        return dtype.type(KH * KW)
    ones = np.ones((1, 1) + tuple(x_shape[2:]), dtype=dtype)
    return _windows(_pad(ones, PH, PW), KH, KW, SH, SW).sum(axis=(4, 5))[0, 0]


def adaptive_avgpool2d_forward(x, output_size):
    """record: (x_shape, output_size)."""
    return _adaptive_avgpool2d_forward(np, x, output_size)


def adaptive_avgpool2d_backward(dy, record):
    return _adaptive_avgpool2d_backward(np, dy, record)


def _adaptive_windows(size, out):
    """[(start, stop)] of the out windows along an axis of length size (torch's floor and ceil)."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_avgpool2d_forward(xp, x, output_size):
    """For any array module xp (the GPU's uses it too): a mean per window, global pooling in one."""
    N, C, H, W = x.shape
    OH, OW = output_size
    if (OH, OW) == (1, 1):
        y = x.mean(axis=(2, 3), keepdims=True)
    else:
        y = xp.empty((N, C, OH, OW), dtype=x.dtype)
        for i, (h0, h1) in enumerate(_adaptive_windows(H, OH)):
            for j, (w0, w1) in enumerate(_adaptive_windows(W, OW)):
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y.astype(x.dtype, copy=False), (x.shape, (OH, OW))


def _adaptive_avgpool2d_backward(xp, dy, record):
    (N, C, H, W), (OH, OW) = record
    if (OH, OW) == (1, 1):
        return xp.ascontiguousarray(xp.broadcast_to(dy / dy.dtype.type(H * W), (N, C, H, W)))
    dx = xp.zeros((N, C, H, W), dtype=dy.dtype)
    for i, (h0, h1) in enumerate(_adaptive_windows(H, OH)):
        for j, (w0, w1) in enumerate(_adaptive_windows(W, OW)):
            dx[:, :, h0:h1, w0:w1] += (dy[:, :, i, j] / dy.dtype.type((h1 - h0) * (w1 - w0)))[:, :, None, None]
    return dx


def adaptive_maxpool2d_forward(x, output_size):
    """record: (x_shape, output_size, each window's winner as an index into its flattened window)."""
    return _adaptive_maxpool2d_forward(np, x, output_size)


def adaptive_maxpool2d_backward(dy, record):
    return _adaptive_maxpool2d_backward(np, dy, record)


def _adaptive_maxpool2d_forward(xp, x, output_size):
    """For any array module xp: per window, argmax (the first of equal maxima) and its value."""
    N, C, H, W = x.shape
    OH, OW = output_size
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)
    winners = xp.empty((N, C, OH, OW), dtype=xp.int64)
    for i, (h0, h1) in enumerate(_adaptive_windows(H, OH)):
        for j, (w0, w1) in enumerate(_adaptive_windows(W, OW)):
            window = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
            winners[:, :, i, j] = window.argmax(axis=2)
            y[:, :, i, j] = xp.take_along_axis(window, winners[:, :, i, j, None], axis=2)[:, :, 0]
    return y, (x.shape, (OH, OW), winners)


def _adaptive_maxpool2d_backward(xp, dy, record):
    (N, C, H, W), (OH, OW), winners = record
    dx = xp.zeros((N, C, H, W), dtype=dy.dtype)
    for i, (h0, h1) in enumerate(_adaptive_windows(H, OH)):
        for j, (w0, w1) in enumerate(_adaptive_windows(W, OW)):
            at_winner = xp.arange((h1 - h0) * (w1 - w0)) == winners[:, :, i, j, None]     # (N, C, window)
            dx[:, :, h0:h1, w0:w1] += xp.where(at_winner, dy[:, :, i, j, None], 0).reshape(N, C, h1 - h0, w1 - w0)
    return dx


# ---------------------------------------------------------------- batch normalization

def batchnorm_forward_train(x3, gamma, beta, eps):
    """record: (xhat (N, C, L), invstd (C,))."""
    mean = x3.mean(axis=(0, 2))
    var = x3.var(axis=(0, 2))
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x3 - mean[:, None]) * invstd[:, None]
    return xhat * gamma[:, None] + beta[:, None], mean, var, (xhat, invstd)


def batchnorm_backward_train(dy3, record, gamma):
    """dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)), M = N * L."""
    xhat, invstd = record
    M = dy3.shape[0] * dy3.shape[2]
    dbeta = dy3.sum(axis=(0, 2))
    dgamma = (dy3 * xhat).sum(axis=(0, 2))
    scale = (gamma * invstd / M)[:, None]
    dx = scale * (M * dy3 - dbeta[:, None] - xhat * dgamma[:, None])
    return dx, dgamma, dbeta


def batchnorm_relu_forward_train(x3, gamma, beta, eps):
    """The two ops one after another; record: theirs."""
    y3, mean, var, bn = batchnorm_forward_train(x3, gamma, beta, eps)
    y3, relu = relu_forward(y3)
    return y3, mean, var, (bn, relu)


def batchnorm_relu_backward_train(dy3, record, gamma):
    bn, relu = record
    return batchnorm_backward_train(relu_backward(dy3, relu), bn, gamma)


def batchnorm_add_relu_forward_train(x3, gamma, beta, eps, residual3, relu):
    """The ops one after another; record: (batch norm's record, relu_forward's or None)."""
    return _batchnorm_add_relu_forward_train_by(sys.modules[__name__], x3, gamma, beta, eps, residual3, relu)


def batchnorm_add_relu_backward_train(dy3, record, gamma):
    return _batchnorm_add_relu_backward_train_by(sys.modules[__name__], dy3, record, gamma)


def _batchnorm_add_relu_forward_train_by(ops, x3, gamma, beta, eps, residual3, relu):
    """batchnorm_add_relu_forward_train by ops' batchnorm_forward_train, add and relu_forward."""
    _check_same_array(x3, residual3)
    y3, mean, var, norm = ops.batchnorm_forward_train(x3, gamma, beta, eps)
    y3, rectified = ops.add(y3, residual3), None
    if relu:
        y3, rectified = ops.relu_forward(y3)
    return y3, mean, var, (norm, rectified)


def _batchnorm_add_relu_backward_train_by(ops, dy3, record, gamma):
    """Its gradients by ops' relu_backward and batchnorm_backward_train."""
    norm, rectified = record
    dsum3 = dy3 if rectified is None else ops.relu_backward(dy3, rectified)
    return (*ops.batchnorm_backward_train(dsum3, norm, gamma), dsum3)


def batchnorm_forward_eval(x3, mean, var, eps, gamma, beta, keep_record):
    """record: (xhat, invstd), or None."""
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x3 - mean[:, None]) * invstd[:, None]
    return xhat * gamma[:, None] + beta[:, None], ((xhat, invstd) if keep_record else None)


def batchnorm_backward_eval(dy3, record, gamma):
    """The layer is affine in x here: dx = dy * gamma * invstd."""
    xhat, invstd = record
    dx3 = dy3 * (gamma * invstd)[:, None]
    return dx3, (dy3 * xhat).sum(axis=(0, 2)), dy3.sum(axis=(0, 2))


def group_norm_forward(x4, gamma, beta, eps):
    """record: (xhat (N, G, C/G, L), invstd (N, G, 1, 1))."""
    return _group_norm_forward(np, x4, gamma, beta, eps)


def group_norm_backward(dy4, record, gamma):
    return _group_norm_backward(np, dy4, record, gamma)


def _group_norm_forward(xp, x4, gamma, beta, eps):
    """For any array module xp."""
    _, G, Cg, _ = x4.shape
    mean = x4.mean(axis=(2, 3), keepdims=True)
    invstd = 1 / xp.sqrt(x4.var(axis=(2, 3), keepdims=True) + x4.dtype.type(eps))
    xhat = (x4 - mean) * invstd
    return xhat * gamma.reshape(1, G, Cg, 1) + beta.reshape(1, G, Cg, 1), (xhat, invstd)


def _group_norm_backward(xp, dy4, record, gamma):
    xhat, invstd = record
    _, G, Cg, _ = dy4.shape
    dgamma = (dy4 * xhat).sum(axis=(0, 3)).reshape(-1)
    dbeta = dy4.sum(axis=(0, 3)).reshape(-1)
    dxhat = dy4 * gamma.reshape(1, G, Cg, 1)
    dx = invstd * (dxhat - dxhat.mean(axis=(2, 3), keepdims=True)
                   - xhat * (dxhat * xhat).mean(axis=(2, 3), keepdims=True))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- activations

def relu_forward(x):
    """record: y (y <= 0 exactly where x <= 0)."""
    y = np.maximum(x, 0)
    return y, y


def relu_backward(dy, record):
    """0 where y <= 0, else dy: torch's rule (0 at x = 0, dy at NaN)."""
    return np.where(record <= 0, 0, dy).astype(dy.dtype, copy=False)


def add(a, b):
    _check_same_array(a, b)
    return a + b


def add_relu_forward(a, b):
    """record: y, as relu_forward's."""
    return relu_forward(add(a, b))


def _check_same_array(a, b):
    """ValueError unless a and b have one shape and one dtype (the elementwise sums broadcast nothing)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"add: the two arrays must have one shape and dtype, got {tuple(a.shape)} {a.dtype} "
                         f"and {tuple(b.shape)} {b.dtype}")


def leaky_relu_forward(x, negative_slope):
    """record: the slope taken at each element (1 or negative_slope)."""
    slope = np.where(x > 0, x.dtype.type(1), x.dtype.type(negative_slope))
    return x * slope, slope


def leaky_relu_backward(dy, record):
    return dy * record


def sigmoid_forward(x):
    """record: y. exp(-|x|) never overflows; each side of 0 uses the form that cannot."""
    e = np.exp(-np.abs(x))
    y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
    return y, y


def sigmoid_backward(dy, record):
    return dy * record * (1 - record)


def tanh_forward(x):
    """record: y."""
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, record):
    return dy * (1 - record * record)


def silu_forward(x):
    """record: (x, sigmoid(x))."""
    s, _ = sigmoid_forward(x)
    return x * s, (x, s)


def silu_backward(dy, record):
    x, s = record
    return dy * s * (1 + x * (1 - s))


_GELU_BETA = math.sqrt(2 / math.pi)        # torch's kBeta
_GELU_KAPPA = 0.044715
_erf = np.frompyfunc(math.erf, 1, 1)       # Python's erf element by element: exact, slow, the reference


def _gelu_cdf(x):
    """Phi(x) = (1 + erf(x / sqrt(2))) / 2 in x's dtype (erf taken in float64)."""
    return (0.5 * (1 + _erf(x.astype(np.float64) * math.sqrt(0.5)).astype(np.float64))).astype(x.dtype)


def gelu_forward(x, approximate):
    """record: (x, approximate, tanh(inner) for 'tanh' or Phi(x) for 'none')."""
    if approximate == "tanh":
        t = np.tanh(x.dtype.type(_GELU_BETA) * (x + x.dtype.type(_GELU_KAPPA) * x * x * x))
        return x.dtype.type(0.5) * x * (1 + t), (x, approximate, t)
    cdf = _gelu_cdf(x)
    return x * cdf, (x, approximate, cdf)


def gelu_backward(dy, record):
    x, approximate, saved = record
    t = x.dtype.type
    if approximate == "tanh":          # torch's GeluBackward (tanh): left' + right'
        left_derivative = t(0.5) * (1 + saved)
        right_derivative = t(0.5) * x * (1 - saved * saved) * t(_GELU_BETA) * (1 + t(3 * _GELU_KAPPA) * x * x)
        return dy * (left_derivative + right_derivative)
    pdf = np.exp(t(-0.5) * x * x) * t(0.5 * math.sqrt(2 / math.pi))     # torch: exp(-x^2/2) / sqrt(2 pi)
    return dy * (saved + x * pdf)


def hardtanh_forward(x, min_val, max_val):
    """record: (x, min_val, max_val)."""
    t = x.dtype.type
    return np.minimum(np.maximum(x, t(min_val)), t(max_val)), (x, min_val, max_val)


def hardtanh_backward(dy, record):
    x, min_val, max_val = record
    return np.where((x > min_val) & (x < max_val), dy, 0).astype(dy.dtype, copy=False)


def _relu6_of_x_plus_3(x):
    """min(max(x + 3, 0), 6), torch's order of operations, in x's dtype."""
    t = x.dtype.type
    return np.minimum(np.maximum(x + t(3), t(0)), t(6))


_ONE_SIXTH = float(np.float32(1 / 6))     # torch's constant: 1/6 rounded to float32, in float64 too


def hardsigmoid_forward(x):
    """record: x."""
    return _relu6_of_x_plus_3(x) / x.dtype.type(6), x


def hardsigmoid_backward(dy, record):
    x = record
    return np.where((x > -3) & (x < 3), dy * dy.dtype.type(_ONE_SIXTH), 0).astype(dy.dtype, copy=False)


def hardswish_forward(x):
    """record: x."""
    return x * _relu6_of_x_plus_3(x) / x.dtype.type(6), x


def hardswish_backward(dy, record):
    x = record
    t = dy.dtype.type
    inside = dy * (x / t(3) + t(0.5))
    return np.where(x <= -3, t(0), np.where(x >= 3, dy, inside)).astype(dy.dtype, copy=False)


# ---------------------------------------------------------------- squeeze and excitation

def scale_channels(x, scale):
    return x * scale


def scale_channels_backward(dy, x, scale):
    return dy * scale, (dy * x).sum(axis=(2, 3), keepdims=True)


# ---------------------------------------------------------------- dropout

def dropout_forward(x, p, rng, cache):
    """record: the mask (0 or 1 / (1 - p), x's dtype), drawn from rng."""
    keep = rng.random(x.shape) >= p
    mask = keep.astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


def dropout_backward(dy, record):
    return dy * record


def channel_dropout_forward(x, p, rng, cache):
    """record: the mask (N, C, 1, 1)."""
    _, mask = dropout_forward(np.ones(x.shape[:2] + (1, 1), x.dtype), p, rng, cache)
    return x * mask, mask


# ---------------------------------------------------------------- softmax cross-entropy

def log_softmax(logits):
    return _log_softmax_forward(np, logits, 1)[0]


def softmax_forward(x, dim):
    """record: (y, dim)."""
    return _softmax_forward(np, x, dim)


def softmax_backward(dy, record):
    y, dim = record
    return y * (dy - (dy * y).sum(axis=dim, keepdims=True))


def log_softmax_forward(x, dim):
    """record: (y, dim)."""
    return _log_softmax_forward(np, x, dim)


def log_softmax_backward(dy, record):
    return _log_softmax_backward(np, dy, record)


def _softmax_forward(xp, x, dim):
    """For any array module xp."""
    e = xp.exp(x - x.max(axis=dim, keepdims=True))
    y = e / e.sum(axis=dim, keepdims=True)
    return y, (y, dim)


def _log_softmax_forward(xp, x, dim):
    shifted = x - x.max(axis=dim, keepdims=True)
    y = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
    return y, (y, dim)


def _log_softmax_backward(xp, dy, record):
    y, dim = record
    return dy - xp.exp(y) * dy.sum(axis=dim, keepdims=True)


def nll_loss_forward(logp, labels):
    """record: (labels, K, dtype)."""
    _check_labels(labels, logp.shape[1])
    return -logp[np.arange(len(labels)), labels], (labels, logp.shape[1], logp.dtype)


def nll_loss_backward(record, scale):
    return _nll_loss_backward(np, record, scale)


def _nll_loss_backward(xp, record, scale):
    labels, K, dtype = record
    dlogp = xp.zeros((len(labels), K), dtype=dtype)
    dlogp[xp.arange(len(labels)), labels] = -1
    return dlogp * scale


def _check_labels(labels, K):
    """ValueError naming the first label outside [0, K)."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= K):
        bad = labels[(labels < 0) | (labels >= K)]
        raise ValueError(f"labels must be in [0, {K}) for {K} classes, got {int(bad[0])}")


def softmax_cross_entropy_forward(logits, labels, label_smoothing):
    """record: (probs (N, K), labels, label_smoothing)."""
    _check_labels(labels, logits.shape[1])
    logp = log_softmax(logits)
    loss = -logp[np.arange(len(labels)), labels]
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * logp.mean(axis=1)
    return loss, (np.exp(logp), labels, label_smoothing)


def softmax_cross_entropy_backward(record, scale):
    probs, labels, label_smoothing = record
    K = probs.shape[1]
    dlogits = probs - label_smoothing / K if label_smoothing else probs.copy()
    dlogits[np.arange(len(labels)), labels] -= 1 - label_smoothing
    return dlogits * scale


def settle():
    """Nothing runs in the background here: every result is final when its op returns."""


def raise_pending_errors():
    """Labels are checked as they come on the CPU: nothing is ever pending."""


# ---------------------------------------------------------------- optimizer steps

def sgd_update(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
    for p, grad, buf in zip(params, grads, bufs):
        if weight_decay:
            grad = grad + weight_decay * p
        if momentum:
            if first:
                buf[...] = grad
            else:
                buf *= momentum
                buf += (1 - dampening) * grad
            grad = grad + momentum * buf if nesterov else buf
        p -= lr * grad


def adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2, eps, weight_decay,
                step, decoupled, amsgrad):
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    for i, (p, grad, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if weight_decay and decoupled:
            p *= 1 - lr * weight_decay
        elif weight_decay:
            grad = grad + weight_decay * p
        m += (1 - beta1) * (grad - m)
        v *= beta2
        v += (1 - beta2) * grad * grad
        if amsgrad:
            np.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
            v = max_exp_avg_sqs[i]
        p -= step_size * (m / (np.sqrt(v) / bias_correction2_sqrt + eps))


# ---------------------------------------------------------------- running a chain of layers

_INFERENCE_CHUNK = 256          # samples; 128 cost more in per-chunk Python than it saved in cache (history.md)


_plans = {}                 # (kinds, inference chunk) -> ChainPlan


def plan_chain(kinds):
    """Every layer by itself, but a ReLU followed by a max pool runs after it instead, on a quarter
    of the values (2x2 windows): max(relu(window)) = relu(max(window)) exactly (NaN included), and
    the gradient reaches the same pixel with the same value (the window's winner when its maximum is
    positive or NaN; nowhere when it is not, ReLU's derivative being 0 there). Inference runs in
    chunks of _INFERENCE_CHUNK samples: the intermediate activations of a chunk stay in the cache
    instead of being fresh memory the size of the whole batch."""
    key = (kinds, _INFERENCE_CHUNK)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) > 256:
            _plans.clear()
        plan = _plans[key] = ChainPlan(((None, (i,)) for i in _pool_before_relu(kinds)), inference_chunk=_INFERENCE_CHUNK)
    return plan


def _pool_before_relu(kinds):
    """The layer indices in run order: every (ReLU, max pool) pair swapped."""
    order = list(range(len(kinds)))
    for i in range(len(order) - 1):
        first, second = kinds[order[i]], kinds[order[i + 1]]
        if first == ("relu",) and second is not None and second[0] == "maxpool2d":
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def pass_scope():
    return contextlib.nullcontext()


def captured_step(model, loss_fn, optimizer):
    raise ValueError("a captured (CUDA-graph) training step needs the model on the GPU: model.to('cuda'), "
                     "a loader with device='cuda', and CuPy installed")
