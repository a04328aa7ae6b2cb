"""Reference primitives in plain NumPy: readable first, and the yardstick for faster backends.

Array layouts (shape letters: N batch, C channels, H/W height/width, KH/KW kernel, SH/SW
stride, PH/PW padding, OH/OW output height/width, K classes):

    x     (N, C, H, W)            images
    col   (N*OH*OW, C*KH*KW)      one row per output pixel, holding the window it sees
    idx   (N, C, OH, OW) int64    max-pool argmax, flat index kh*KW + kw inside the window
    x3    (N, C, L)               batch-norm input seen as channels of L values each

Every function preserves the dtype of its floating inputs.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

name = "numpy"
xp = np


def output_size(size, kernel, stride, padding):
    """Output length of a sliding window: floor((size + 2*padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _windows(xpad, KH, KW, SH, SW):
    """View (N, C, OH, OW, KH, KW) of every window of a padded batch, without copying."""
    return sliding_window_view(xpad, (KH, KW), axis=(2, 3))[:, :, ::SH, ::SW]


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


# ---------------------------------------------------------------- convolution

def im2col(x, KH, KW, SH, SW, PH, PW):
    """(N, C, H, W) -> col (N*OH*OW, C*KH*KW)."""
    N, C = x.shape[:2]
    win = _windows(_pad(x, PH, PW), KH, KW, SH, SW)          # (N, C, OH, OW, KH, KW)
    OH, OW = win.shape[2:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(N * OH * OW, C * KH * KW)


def matmul(a, b):
    """a @ b (a backend seam: the CUDA backend swaps in its own kernel inside graph captures).

    An inner dimension of 1 (a Linear layer's weight gradient at batch 1) is an outer product:
    OpenBLAS takes 1.0-1.6 ms for (512, 1) @ (1, 1600), broadcasting 0.1 ms; every element is
    one product either way, so the result is the same."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] == 1 and b.shape[0] == 1:
        return a * b
    return a @ b


def conv_backward_gemms(dy, col, W_col, bias, input_grad):
    """The convolution's gradient products from dy (n, OC, OH, OW) and forward's col (n*L, CKK):
    dW = dy_rows.T @ col, db = column sums of dy_rows, dcol = dy_rows @ W_col, with dy_rows
    (n*L, OC) the pixels of dy as rows. Returns (dW, db or None, dcol or None)."""
    rows = dy.transpose(0, 2, 3, 1).reshape(-1, dy.shape[1])
    dW = rows.T @ col
    db = rows.sum(axis=0) if bias else None            # contiguous: faster than summing over NCHW
    dcol = rows @ W_col if input_grad else None
    return dW, db, dcol


def col2im(col, x_shape, KH, KW, SH, SW, PH, PW):
    """Adjoint of im2col: col (N*OH*OW, C*KH*KW) -> (N, C, H, W), overlaps summed."""
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    dwin = col.reshape(N, OH, OW, C, KH, KW).transpose(0, 3, 1, 2, 4, 5)
    return _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW)


# ---------------------------------------------------------------- pooling

def maxpool2d_forward(x, KH, KW, SH, SW, PH, PW):
    """Returns y (N, C, OH, OW) and idx, the argmax of each window: the first maximum, or where a
    window holds NaNs, the last NaN (torch's rule: a NaN wins over everything before it)."""
    win = _windows(_pad(x, PH, PW, value=-np.inf), KH, KW, SH, SW)
    N, C, OH, OW = win.shape[:4]
    flat = win.reshape(N, C, OH, OW, KH * KW)
    idx = flat.argmax(axis=-1)
    nan = np.isnan(flat)
    if nan.any():
        last_nan = KH * KW - 1 - nan[..., ::-1].argmax(axis=-1)
        idx = np.where(nan.any(axis=-1), last_nan, idx)
    y = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    return y, idx


def maxpool2d_backward(dy, idx, x_shape, KH, KW, SH, SW, PH, PW):
    """Route each dy to the input pixel that won its window; overlapping windows add up."""
    offsets = np.arange(KH * KW).reshape(KH, KW)
    dwin = np.where(idx[..., None, None] == offsets, dy[..., None, None], 0).astype(dy.dtype)
    return _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW)


def avgpool2d_forward(x, KH, KW, SH, SW, PH, PW, count_include_pad=True):
    """Returns y (N, C, OH, OW) and the divisor (scalar, or (OH, OW) without padding counted)."""
    win = _windows(_pad(x, PH, PW), KH, KW, SH, SW)
    divisor = _avgpool_divisor(x.shape, KH, KW, SH, SW, PH, PW, count_include_pad, x.dtype)
    return win.sum(axis=(4, 5)) / divisor, divisor


def avgpool2d_backward(dy, divisor, x_shape, KH, KW, SH, SW, PH, PW):
    share = (dy / divisor)[..., None, None]
    dwin = np.broadcast_to(share, dy.shape + (KH, KW))
    return _scatter_windows(dwin, x_shape, KH, KW, SH, SW, PH, PW)


def _avgpool_divisor(x_shape, KH, KW, SH, SW, PH, PW, count_include_pad, dtype):
    if count_include_pad or (PH == 0 and PW == 0):
        return dtype.type(KH * KW)
    ones = np.ones((1, 1) + tuple(x_shape[2:]), dtype=dtype)
    return _windows(_pad(ones, PH, PW), KH, KW, SH, SW).sum(axis=(4, 5))[0, 0]


# ---------------------------------------------------------------- batch normalization

def batchnorm_forward_train(x3, gamma, beta, eps):
    """Normalize x3 (N, C, L) with its own per-channel statistics.

    Returns y (N, C, L), xhat (N, C, L), mean (C,), biased var (C,), invstd (C,).
    """
    mean = x3.mean(axis=(0, 2))
    var = x3.var(axis=(0, 2))
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x3 - mean[:, None]) * invstd[:, None]
    return xhat * gamma[:, None] + beta[:, None], xhat, mean, var, invstd


def batchnorm_forward_eval(x3, mean, invstd, gamma, beta, keep_xhat):
    """Normalize x3 (N, C, L) with given per-channel statistics (the running ones, in eval mode):
    y = (x - mean) * invstd * gamma + beta, in that order. Returns y and, when keep_xhat (a
    backward will follow), xhat = (x - mean) * invstd, else None."""
    xhat = (x3 - mean[:, None]) * invstd[:, None]
    return xhat * gamma[:, None] + beta[:, None], (xhat if keep_xhat else None)


def batchnorm_backward_train(dy3, xhat, invstd, gamma):
    """Gradients of batchnorm_forward_train: dx (N, C, L), dgamma (C,), dbeta (C,).

    dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)), M = N * L,
    the batch statistics being functions of x too.
    """
    M = dy3.shape[0] * dy3.shape[2]
    dbeta = dy3.sum(axis=(0, 2))
    dgamma = (dy3 * xhat).sum(axis=(0, 2))
    scale = (gamma * invstd / M)[:, None]
    dx = scale * (M * dy3 - dbeta[:, None] - xhat * dgamma[:, None])
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- softmax cross-entropy

def log_softmax(logits):
    """Row-wise log-softmax of (N, K), shifted by the row maximum so exp never overflows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Per-sample loss (N,) and softmax probabilities (N, K) of logits (N, K), labels (N,).

    With smoothing e the target is (1 - e) * onehot + e / K, as in torch.
    """
    logp = log_softmax(logits)
    loss = -logp[np.arange(len(labels)), labels]
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * logp.mean(axis=1)
    return loss, np.exp(logp)


def softmax_cross_entropy_backward(probs, labels, label_smoothing, scale):
    """dL/dlogits (N, K) = scale * (probs - target); scale is 1/N for a mean, 1 for a sum,
    or a per-sample (N, 1) array for unreduced losses."""
    K = probs.shape[1]
    target_weight = 1 - label_smoothing
    dlogits = probs - label_smoothing / K if label_smoothing else probs.copy()
    dlogits[np.arange(len(labels)), labels] -= target_weight
    return dlogits * scale


# ---------------------------------------------------------------- elementwise helpers

def relu_forward(x):
    """max(x, 0); NaN stays NaN, as in torch."""
    return np.maximum(x, 0)


def relu_backward(dy, y):
    """0 where the output y = relu(x) is <= 0, else dy: torch's rule (0 at x = 0, dy at NaN)."""
    return np.where(y <= 0, 0, dy).astype(dy.dtype, copy=False)


def dropout_mask(shape, p, dtype, rng):
    """Inverted-dropout multiplier: 0 with probability p, else 1 / (1 - p)."""
    keep = rng.random(shape) >= p
    return keep.astype(dtype) / dtype.type(1 - p)
