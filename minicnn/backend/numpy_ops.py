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


def _windows(xpad, KH, KW, SH, SW):
    """View (N, C, OH, OW, KH, KW) of every window of a padded batch, without copying."""
    return _sliding_window_view(xpad, (KH, KW), axis=(2, 3))[:, :, ::SH, ::SW]


def _pad(x, PH, PW, value=0):
    if PH == 0 and PW == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)), constant_values=value)


def _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW):
    """Adjoint of _windows: sum dwin (N, C, OH, OW, KH, KW) back onto (N, C, H, W).

    One strided add per kernel offset, so overlapping windows accumulate in a fixed order
    and the result is repeatable bit for bit.
    """
    N, C, H, W = x_shape
    OH, OW = dwin.shape[2:4]
    dxpad = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=dwin.dtype)
    for i in range(KH):
        for j in range(KW):
            dxpad[:, :, i:i + SH * OH:SH, j:j + SW * OW:SW] += dwin[:, :, :, :, i, j]
    return np.ascontiguousarray(dxpad[:, :, PH:PH + H, PW:PW + W])


# ---------------------------------------------------------------- matrix products and convolution

def matmul(a, b):
    """a @ b. An inner dimension of 1 (a Linear layer's weight gradient at batch 1) is an outer
    product: OpenBLAS takes 1.0-1.6 ms for (512, 1) @ (1, 1600), broadcasting 0.1 ms; every
    element is one product either way, so the result is the same."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == 1 and b.shape[0] == 1:
        return a * b
    return a @ b


def im2col(x, kernel_size, stride, padding):
    (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
    N, C = x.shape[:2]
    win = _windows(_pad(x, PH, PW), KH, KW, SH, SW)          # (N, C, OH, OW, KH, KW)
    OH, OW = win.shape[2:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(N * OH * OW, C * KH * KW)


def col2im(col, x_shape, kernel_size, stride, padding):
    (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
    N, C, H, W = x_shape
    OH, OW = im2col_conv.output_size(H, KH, SH, PH), im2col_conv.output_size(W, KW, SW, PW)
    dwin = col.reshape(N, OH, OW, C, KH, KW).transpose(0, 3, 1, 2, 4, 5)
    return _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW)


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


def conv2d_forward(x, w, b, stride, padding):
    """im2col and one product (backend/im2col_conv.py); record: its Record."""
    return im2col_conv.forward(_PRIMITIVES, x, w, b, stride, padding, _MAX_COL_BYTES)


def conv2d_backward(dy, record, w, input_grad):
    return im2col_conv.backward(_PRIMITIVES, dy, record, w, input_grad)


def conv2d_relu_maxpool2d_forward(x, w, b, padding):
    """The three ops one after another; record: theirs."""
    y, conv = conv2d_forward(x, w, b, (1, 1), padding)
    y, relu = relu_forward(y)
    y, pool = maxpool2d_forward(y, (2, 2), (2, 2), (0, 0))
    return y, (conv, relu, pool)


def conv2d_relu_maxpool2d_backward(dy, record, w, input_grad):
    conv, relu, pool = record
    return conv2d_backward(relu_backward(maxpool2d_backward(dy, pool), relu), conv, w, input_grad)


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


# ---------------------------------------------------------------- activations

def relu_forward(x):
    """record: y (y <= 0 exactly where x <= 0)."""
    y = np.maximum(x, 0)
    return y, y


def relu_backward(dy, record):
    """0 where y <= 0, else dy: torch's rule (0 at x = 0, dy at NaN)."""
    return np.where(record <= 0, 0, dy).astype(dy.dtype, copy=False)


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


# ---------------------------------------------------------------- dropout

def dropout_forward(x, p, rng, cache):
    """record: the mask (0 or 1 / (1 - p), x's dtype), drawn from rng."""
    keep = rng.random(x.shape) >= p
    mask = keep.astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


def dropout_backward(dy, record):
    return dy * record


# ---------------------------------------------------------------- softmax cross-entropy

def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


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

_INFERENCE_CHUNK = 128


def plan_chain(kinds):
    """Every layer by itself, but a ReLU followed by a max pool runs after it instead, on a quarter
    of the values (2x2 windows): max(relu(window)) = relu(max(window)) exactly (NaN included), and
    the gradient reaches the same pixel with the same value (the window's winner when its maximum is
    positive or NaN; nowhere when it is not, ReLU's derivative being 0 there). Inference runs in
    chunks of _INFERENCE_CHUNK samples: the intermediate activations of a chunk stay in the cache
    instead of being fresh memory the size of the whole batch."""
    return ChainPlan(((None, (i,)) for i in _pool_before_relu(kinds)), inference_chunk=_INFERENCE_CHUNK)


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
