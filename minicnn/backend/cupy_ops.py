"""The CuPy backend: the contract's ops (backend/contract.py) on CuPy arrays, running the kernels of
kernels/*.cu (loaded by cupy_kernels), cuBLAS for matrix products, CuPy's own elementwise kernels
where one expression is all an op is; the optimizer steps are in cupy_optim, the captured training
step in cuda_graph.
"""
import contextlib
import sys

import cupy as cp
import numpy as np

from . import cupy_labels, cupy_optim, im2col_conv
from . import numpy_ops as _reference
from .cupy_kernels import capturing as _capturing
from .cupy_kernels import check_float as _check_float
from .cupy_kernels import int32s as _i
from .cupy_kernels import kernel as _kernel
from .cupy_kernels import launch as _launch

name = "cupy"
xp = cp
host_read_interval = 50          # a host read waits for the GPU: fit sums on the device in between

_output_size = im2col_conv.output_size


# ---------------------------------------------------------------- matrix products

_own_gemm = False     # True: every product through kernels/gemm.cu (tests compare graph and eager runs)


def _use_own_gemm(flag):
    """Multiply with kernels/gemm.cu even outside CUDA-graph captures; returns the previous setting."""
    global _own_gemm
    previous, _own_gemm = _own_gemm, bool(flag)
    return previous


def matmul(a, b):
    """a @ b for 2-D or 3-D (batched, broadcast) operands: cuBLAS normally; kernels/gemm.cu while
    a CUDA graph is captured (CuPy refuses cuBLAS calls then) or after _use_own_gemm(True)."""
    if not (_own_gemm or _capturing()):
        return a @ b
    _check_float(a, b)
    if a.dtype != b.dtype or a.ndim not in (2, 3) or b.ndim not in (2, 3) or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"minicnn gemm: cannot multiply {a.dtype} {a.shape} by {b.dtype} {b.shape}")
    batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
    for x in (a, b):
        if x.ndim == 3 and x.shape[0] not in (1, batch):
            raise ValueError(f"minicnn gemm: batch sizes {a.shape} and {b.shape} do not broadcast")
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    item = a.dtype.itemsize
    a_b = a.strides[0] // item if a.ndim == 3 and a.shape[0] > 1 else 0
    b_b = b.strides[0] // item if b.ndim == 3 and b.shape[0] > 1 else 0
    c = cp.empty((batch, M, N), dtype=a.dtype)
    grid = ((N + 63) // 64, (M + 63) // 64, batch)
    if c.size:
        _kernel("gemm.cu", "gemm", a.dtype)(grid, (256,), (
            a, b, c, *_i(M, N, K), np.int64(a_b), np.int64(a.strides[-2] // item), np.int64(a.strides[-1] // item),
            np.int64(b_b), np.int64(b.strides[-2] // item), np.int64(b.strides[-1] // item)))
    return c if (a.ndim == 3 or b.ndim == 3) else c[0]


# ---------------------------------------------------------------- convolution

def im2col(x, kernel_size, stride, padding, dilation):
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    _check_float(x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = _output_size(H, KH, SH, PH, DH), _output_size(W, KW, SW, PW, DW)
    col = cp.empty((N * OH * OW, C * KH * KW), dtype=x.dtype)
    _launch("im2col.cu", "im2col", x.dtype, col.size,
            (x, col, np.int64(col.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, DH, DW)))
    return col


def col2im(col, x_shape, kernel_size, stride, padding, dilation):
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    _check_float(col)
    col = cp.ascontiguousarray(col)
    N, C, H, W = x_shape
    OH, OW = _output_size(H, KH, SH, PH, DH), _output_size(W, KW, SW, PW, DW)
    dx = cp.empty(x_shape, dtype=col.dtype)
    _launch("im2col.cu", "col2im", col.dtype, dx.size,
            (col, dx, np.int64(dx.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, DH, DW)))
    return dx


def _rows_to_nchw(rows, bias, n, OC, OH, OW):
    """The convolution's epilogue: rows (n*OH*OW, OC) from the GEMM -> y (n, OC, OH, OW) + bias, one launch."""
    _check_float(rows)
    rows = cp.ascontiguousarray(rows)
    L = OH * OW
    y = cp.empty((n, OC, L), dtype=rows.dtype)
    b = np.uint64(0) if bias is None else cp.ascontiguousarray(bias)    # a null pointer
    _launch("im2col.cu", "rows_to_nchw", rows.dtype, y.size, (rows, b, y, np.int64(y.size), *_i(OC, L)))
    return y.reshape(n, OC, OH, OW)


def _conv_backward_gemms(dy, col, W_col, has_bias, input_grad):
    """The convolution's three gradient products from dy (n, OC, OH, OW) and the column matrix col
    (n*L, CKK). dW = sum over samples of dy[i] (OC, L) @ col[i] (L, CKK): one batched product
    straight from NCHW (one product with K = n*L, what the CPU does, gives cuBLAS a 32 x 9 result to
    reduce over 700,000 terms: 15 ms for MnistCNN's first layer at batch 1024); db = sum of dy over
    samples and pixels; dcol = dy rows @ W_col."""
    n, OC = dy.shape[:2]
    L = dy.shape[2] * dy.shape[3]
    dy3 = cp.ascontiguousarray(dy).reshape(n, OC, L)
    col3 = col.reshape(n, L, col.shape[1])
    per_sample = OC * col3.shape[2] * dy.dtype.itemsize
    chunk = max(1, min(n, (64 * 2**20) // max(per_sample, 1)))   # bound the (chunk, OC, CKK) products
    dW = None
    for start in range(0, n, chunk):
        part = matmul(dy3[start:start + chunk], col3[start:start + chunk]).sum(axis=0)
        dW = part if dW is None else dW + part
    db = dy3.sum(axis=(0, 2)) if has_bias else None
    dcol = None
    if input_grad:
        rows = dy3.transpose(0, 2, 1).reshape(-1, OC)
        dcol = matmul(rows, W_col)
    return dW, db, dcol


_PRIMITIVES = im2col_conv.Primitives(im2col, col2im, matmul, _conv_backward_gemms, _rows_to_nchw, cp)
_MAX_COL_BYTES = 64 * 2**20


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """im2col, one product per group (cuBLAS), the epilogue kernel: backend/im2col_conv.py."""
    return im2col_conv.forward(_PRIMITIVES, x, w, b, stride, padding, dilation, groups, _MAX_COL_BYTES)


def conv2d_backward(dy, record, w, input_grad, dw_may_wait):
    return im2col_conv.backward(_PRIMITIVES, dy, record, w, input_grad)          # dw final: nothing waits


def conv2d_relu_maxpool2d_forward(x, w, b, padding):
    """The three ops one after another (the plan never fuses here); record: theirs."""
    y, conv = conv2d_forward(x, w, b, (1, 1), padding, (1, 1), 1)
    y, relu = relu_forward(y)
    y, pool = maxpool2d_forward(y, (2, 2), (2, 2), (0, 0))
    return y, (conv, relu, pool)


def conv2d_relu_maxpool2d_backward(dy, record, w, input_grad):
    conv, relu, pool = record
    return conv2d_backward(relu_backward(maxpool2d_backward(dy, pool), relu), conv, w, input_grad, False)


# ---------------------------------------------------------------- pooling

def conv2d_batchnorm_eval(x, w, b, stride, padding, dilation, groups, mean, var, eps, gamma, beta, relu, residual):
    """The ops one after the other (numpy_ops)."""
    return _reference._conv2d_batchnorm_eval_by(sys.modules[__name__], x, w, b, stride, padding, dilation, groups,
                                                mean, var, eps, gamma, beta, relu, residual)


def maxpool2d_forward(x, kernel_size, stride, padding):
    """record: (idx int64, x_shape, geometry)."""
    geometry = (*kernel_size, *stride, *padding)
    KH, KW, SH, SW, PH, PW = geometry
    _check_float(x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = _output_size(H, KH, SH, PH), _output_size(W, KW, SW, PW)
    y = cp.empty((N, C, OH, OW), dtype=x.dtype)
    idx = cp.empty((N, C, OH, OW), dtype=cp.int64)
    _launch("pool.cu", "maxpool_forward", x.dtype, y.size,
            (x, y, idx, np.int64(y.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)))
    return y, (idx, x.shape, geometry)


def maxpool2d_backward(dy, record):
    idx, x_shape, (KH, KW, SH, SW, PH, PW) = record
    dy = cp.ascontiguousarray(dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dx = cp.empty(x_shape, dtype=dy.dtype)
    _launch("pool.cu", "maxpool_backward", dy.dtype, dx.size,
            (dy, idx, dx, np.int64(dx.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)))
    return dx


def avgpool2d_forward(x, kernel_size, stride, padding, count_include_pad):
    """record: (count_include_pad, x_shape, geometry): the kernels count the divisor themselves."""
    geometry = (*kernel_size, *stride, *padding)
    KH, KW, SH, SW, PH, PW = geometry
    _check_float(x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = _output_size(H, KH, SH, PH), _output_size(W, KW, SW, PW)
    y = cp.empty((N, C, OH, OW), dtype=x.dtype)
    _launch("pool.cu", "avgpool_forward", x.dtype, y.size,
            (x, y, np.int64(y.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, int(count_include_pad))))
    return y, (bool(count_include_pad), x.shape, geometry)


def avgpool2d_backward(dy, record):
    count_include_pad, x_shape, (KH, KW, SH, SW, PH, PW) = record
    dy = cp.ascontiguousarray(dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dx = cp.empty(x_shape, dtype=dy.dtype)
    _launch("pool.cu", "avgpool_backward", dy.dtype, dx.size,
            (dy, dx, np.int64(dx.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, int(count_include_pad))))
    return dx


def adaptive_avgpool2d_forward(x, output_size):
    """numpy_ops' windows on CuPy arrays (a mean each; global pooling in one)."""
    return _reference._adaptive_avgpool2d_forward(cp, x, output_size)


def adaptive_avgpool2d_backward(dy, record):
    return _reference._adaptive_avgpool2d_backward(cp, dy, record)


def adaptive_maxpool2d_forward(x, output_size):
    """numpy_ops' windows on CuPy arrays (an argmax each)."""
    return _reference._adaptive_maxpool2d_forward(cp, x, output_size)


def adaptive_maxpool2d_backward(dy, record):
    return _reference._adaptive_maxpool2d_backward(cp, dy, record)


# ---------------------------------------------------------------- batch normalization

def batchnorm_forward_train(x3, gamma, beta, eps):
    """record: (xhat, invstd)."""
    _check_float(x3)
    x3 = cp.ascontiguousarray(x3)
    N, C, L = x3.shape
    y, xhat = cp.empty_like(x3), cp.empty_like(x3)
    mean, var, invstd = (cp.empty(C, dtype=x3.dtype) for _ in range(3))
    _launch("batchnorm.cu", "bn_forward_train", x3.dtype, C,
            (x3, cp.ascontiguousarray(gamma), cp.ascontiguousarray(beta), x3.dtype.type(eps), *_i(N, C, L),
             y, xhat, mean, var, invstd), threads=256, blocks=C)
    return y, mean, var, (xhat, invstd)


def batchnorm_backward_train(dy3, record, gamma):
    xhat, invstd = record
    dy3 = cp.ascontiguousarray(dy3)
    N, C, L = dy3.shape
    dx = cp.empty_like(dy3)
    dgamma, dbeta = cp.empty(C, dtype=dy3.dtype), cp.empty(C, dtype=dy3.dtype)
    _launch("batchnorm.cu", "bn_backward_train", dy3.dtype, C,
            (dy3, xhat, invstd, cp.ascontiguousarray(gamma), *_i(N, C, L), dx, dgamma, dbeta), threads=256, blocks=C)
    return dx, dgamma, dbeta


def batchnorm_relu_forward_train(x3, gamma, beta, eps):
    """The two ops one after another (the plan never fuses here); record: theirs."""
    y3, mean, var, bn = batchnorm_forward_train(x3, gamma, beta, eps)
    y3, relu = relu_forward(y3)
    return y3, mean, var, (bn, relu)


def batchnorm_relu_backward_train(dy3, record, gamma):
    bn, relu = record
    return batchnorm_backward_train(relu_backward(dy3, relu), bn, gamma)


def batchnorm_add_relu_forward_train(x3, gamma, beta, eps, residual3, relu):
    """The ops one after another, as numpy_ops composes them."""
    return _reference._batchnorm_add_relu_forward_train_by(sys.modules[__name__], x3, gamma, beta, eps, residual3,
                                                           relu)


def batchnorm_add_relu_backward_train(dy3, record, gamma):
    return _reference._batchnorm_add_relu_backward_train_by(sys.modules[__name__], dy3, record, gamma)


def batchnorm_forward_eval(x3, mean, var, eps, gamma, beta, keep_record):
    """numpy_ops' formula in CuPy's elementwise kernels; record: (xhat, invstd) or None."""
    invstd = 1 / cp.sqrt(var + eps)
    xhat = (x3 - mean[:, None]) * invstd[:, None]
    return xhat * gamma[:, None] + beta[:, None], ((xhat, invstd) if keep_record else None)


batchnorm_backward_eval = _reference.batchnorm_backward_eval       # operators and sums only: CuPy's


def group_norm_forward(x4, gamma, beta, eps):
    """numpy_ops' formulas on CuPy arrays."""
    return _reference._group_norm_forward(cp, x4, gamma, beta, eps)


def group_norm_backward(dy4, record, gamma):
    return _reference._group_norm_backward(cp, dy4, record, gamma)


# ---------------------------------------------------------------- activations

def relu_forward(x):
    """record: y."""
    _check_float(x)
    x = cp.ascontiguousarray(x)
    y = cp.empty_like(x)
    _launch("activation.cu", "relu_forward", x.dtype, x.size, (x, y, np.int64(x.size)))
    return y, y


def relu_backward(dy, record):
    _check_float(dy, record)
    dy, y = cp.ascontiguousarray(dy), cp.ascontiguousarray(record)
    dx = cp.empty_like(dy)
    _launch("activation.cu", "relu_backward", dy.dtype, dy.size, (dy, y, dx, np.int64(dy.size)))
    return dx


def add(a, b):
    _check_float(a, b)
    _reference._check_same_array(a, b)
    return a + b


def add_relu_forward(a, b):
    """record: y, as relu_forward's (two kernels: the sum, then the ReLU)."""
    return relu_forward(add(a, b))


def leaky_relu_forward(x, negative_slope):
    slope = cp.where(x > 0, x.dtype.type(1), x.dtype.type(negative_slope))
    return x * slope, slope


leaky_relu_backward = _reference.leaky_relu_backward               # dy * slope


def sigmoid_forward(x):
    e = cp.exp(-cp.abs(x))
    y = cp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
    return y, y


sigmoid_backward = _reference.sigmoid_backward


def tanh_forward(x):
    y = cp.tanh(x)
    return y, y


tanh_backward = _reference.tanh_backward


def silu_forward(x):
    s, _ = sigmoid_forward(x)
    return x * s, (x, s)


silu_backward = _reference.silu_backward                         # operators only


def gelu_forward(x, approximate):
    """numpy_ops' formulas; erf from cupyx.scipy.special."""
    if approximate == "tanh":
        t = cp.tanh(x.dtype.type(_reference._GELU_BETA) * (x + x.dtype.type(_reference._GELU_KAPPA) * x * x * x))
        return x.dtype.type(0.5) * x * (1 + t), (x, approximate, t)
    from cupyx.scipy.special import erf
    cdf = (0.5 * (1 + erf(x.astype(cp.float64) * np.sqrt(0.5)))).astype(x.dtype)
    return x * cdf, (x, approximate, cdf)


def gelu_backward(dy, record):
    x, approximate, saved = record
    t = x.dtype.type
    if approximate == "tanh":
        left_derivative = t(0.5) * (1 + saved)
        right_derivative = t(0.5) * x * (1 - saved * saved) * t(_reference._GELU_BETA) * \
            (1 + t(3 * _reference._GELU_KAPPA) * x * x)
        return dy * (left_derivative + right_derivative)
    pdf = cp.exp(t(-0.5) * x * x) * t(0.5 * np.sqrt(2 / np.pi))
    return dy * (saved + x * pdf)


def hardtanh_forward(x, min_val, max_val):
    t = x.dtype.type
    return cp.minimum(cp.maximum(x, t(min_val)), t(max_val)), (x, min_val, max_val)


def hardtanh_backward(dy, record):
    x, min_val, max_val = record
    return cp.where((x > min_val) & (x < max_val), dy, dy.dtype.type(0))


def hardsigmoid_forward(x):
    t = x.dtype.type
    return cp.minimum(cp.maximum(x + t(3), t(0)), t(6)) / t(6), x


def hardsigmoid_backward(dy, record):
    x = record
    return cp.where((x > -3) & (x < 3), dy * dy.dtype.type(_reference._ONE_SIXTH), dy.dtype.type(0))


def hardswish_forward(x):
    t = x.dtype.type
    return x * cp.minimum(cp.maximum(x + t(3), t(0)), t(6)) / t(6), x


def hardswish_backward(dy, record):
    x = record
    t = dy.dtype.type
    return cp.where(x <= -3, t(0), cp.where(x >= 3, dy, dy * (x / t(3) + t(0.5))))


# ---------------------------------------------------------------- squeeze and excitation

scale_channels = _reference.scale_channels                       # operators only: CuPy's kernels
scale_channels_backward = _reference.scale_channels_backward


# ---------------------------------------------------------------- dropout

def dropout_forward(x, p, rng, cache):
    """y = x * mask, the mask drawn on the GPU from a {seed, counter} state in device memory (kept in
    cache, seeded once from rng), advanced on the GPU afterwards: every call, and every replay of a
    captured graph, draws anew. record: the mask."""
    _check_float(x)
    state = cache.get("cupy")
    if state is None:
        state = cache["cupy"] = cp.asarray(np.array([int(rng.integers(2**63)), 0], dtype=np.uint64))
    x = cp.ascontiguousarray(x)
    y, mask = cp.empty_like(x), cp.empty_like(x)
    _launch("dropout.cu", "dropout_forward", x.dtype, x.size,
            (x, y, mask, np.int64(x.size), np.float64(p), x.dtype.type(1 / (1 - p)), state))
    _kernel("dropout.cu", "rng_advance", None)((1,), (1,), (state,))
    return y, mask


dropout_backward = _reference.dropout_backward                     # dy * mask


def channel_dropout_forward(x, p, rng, cache):
    """The mask (N, C, 1, 1) by dropout_forward's kernel on ones (the same device generator)."""
    _, mask = dropout_forward(cp.ones(x.shape[:2] + (1, 1), x.dtype), p, rng, cache)
    return x * mask, mask


# ---------------------------------------------------------------- softmax cross-entropy

def log_softmax(logits):
    return _reference._log_softmax_forward(cp, logits, 1)[0]


def softmax_cross_entropy_forward(logits, labels, label_smoothing):
    """As numpy_ops. Labels are checked by the kernel itself, which sets a flag on the device: no
    reductions and no waiting (cupy_labels: the error comes at the next call or at
    raise_pending_errors, which fit calls whenever it reads its totals). record: (probs, labels,
    label_smoothing)."""
    _check_float(logits)
    cupy_labels.check_last()
    logits = cp.ascontiguousarray(logits)
    N, K = logits.shape
    labels = cp.ascontiguousarray(labels, dtype=cp.int64)
    loss, probs = cp.empty(N, dtype=logits.dtype), cp.empty_like(logits)
    _launch("softmax_ce.cu", "softmax_ce_forward", logits.dtype, N,
            (logits, labels, logits.dtype.type(label_smoothing), *_i(N, K), loss, probs, cupy_labels.flag()))
    cupy_labels.launched(labels, K)
    return loss, (probs, labels, label_smoothing)


def softmax_cross_entropy_backward(record, scale):
    probs, labels, label_smoothing = record
    N, K = probs.shape
    if isinstance(scale, (int, float)):           # one scale for every row: a cached device scalar
        scale = cupy_optim.cached_table((float(scale),), probs.dtype)
    scale = cp.ascontiguousarray(cp.asarray(scale, dtype=probs.dtype).reshape(-1))
    dlogits = cp.empty_like(probs)
    _launch("softmax_ce.cu", "softmax_ce_backward", probs.dtype, N * K,
            (probs, labels, probs.dtype.type(label_smoothing), scale,
             np.int32(1 if scale.size == N and scale.size > 1 else 0), *_i(N, K), dlogits))
    return dlogits


def softmax_forward(x, dim):
    return _reference._softmax_forward(cp, x, dim)


softmax_backward = _reference.softmax_backward                   # operators only


def log_softmax_forward(x, dim):
    return _reference._log_softmax_forward(cp, x, dim)


def log_softmax_backward(dy, record):
    return _reference._log_softmax_backward(cp, dy, record)


def nll_loss_forward(logp, labels):
    """As numpy_ops, the labels checked at once (the host waits for the check; NLLLoss is the rarer
    loss here: the cross-entropy's kernel checks without waiting)."""
    _check_float(logp)
    labels = cp.asarray(labels, dtype=cp.int64)
    K = logp.shape[1]
    bad = labels[(labels < 0) | (labels >= K)]
    if bad.size:
        raise ValueError(f"labels must be in [0, {K}) for {K} classes, got {int(bad[0])}")
    return -logp[cp.arange(len(labels)), labels], (labels, K, logp.dtype)


def nll_loss_backward(record, scale):
    return _reference._nll_loss_backward(cp, record, scale)


raise_pending_errors = cupy_labels.raise_pending_errors
settle = _reference.settle                  # the stream orders the work; a host read waits for it


# ---------------------------------------------------------------- optimizer steps

sgd_update = cupy_optim.sgd_update
adam_update = cupy_optim.adam_update


# ---------------------------------------------------------------- running a chain of layers

def plan_chain(kinds):
    """The reference order (a ReLU after its max pool), batches whole: chunks would only multiply
    the kernel launches."""
    plan = _reference.plan_chain(kinds)
    return _reference.ChainPlan(plan.steps, inference_chunk=0)


def pass_scope():
    return contextlib.nullcontext()


def captured_step(model, loss_fn, optimizer):
    """A cuda_graph.CudaGraphStep for the model (on the GPU)."""
    if not all(isinstance(p.data, cp.ndarray) for p in model.parameters()):
        raise ValueError("cuda_graph=True needs the whole model on the GPU (model.to('cuda'))")
    from .cuda_graph import CudaGraphStep
    return CudaGraphStep(model, loss_fn, optimizer)
