"""CUDA primitives on CuPy arrays: the same functions and signatures as numpy_ops, running the
kernels of the top-level kernels/ folder (shipped in the wheel as minicnn/kernels/).

One RawModule per .cu file, compiled by NVRTC at first use (CuPy caches the binary on disk),
with the float and double instantiations named through ``name_expressions``. Every launch
checks dtypes and C-contiguity itself (CuPy's RawKernel checks nothing), uses grid =
ceil(n / 256), and passes integers as int32/int64 and scalars as the array's dtype. GEMMs stay
in cuBLAS through CuPy's matmul.
"""
import os

import cupy as cp
import numpy as np

from . import numpy_ops

name = "cupy"
xp = cp
output_size = numpy_ops.output_size
BLOCK = 256

_KERNELS = {
    "im2col.cu": ["im2col", "col2im"],
    "pool.cu": ["maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward"],
    "batchnorm.cu": ["bn_forward_train", "bn_backward_train"],
    "softmax_ce.cu": ["softmax_ce_forward", "softmax_ce_backward"],
    "activation.cu": ["relu_forward", "relu_backward", "bias_relu"],
    "optim.cu": ["sgd_step", "adam_step"],
}
_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_modules = {}


def kernel_dir():
    """minicnn/kernels in an installed wheel, or the repository's kernels/ in a checkout."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(here, "kernels"), os.path.join(os.path.dirname(here), "kernels")):
        if os.path.isfile(os.path.join(candidate, "im2col.cu")):
            return candidate
    raise FileNotFoundError(f"minicnn: the CUDA sources (kernels/*.cu) are missing near {here}")


def _kernel(file, kernel, dtype):
    if file not in _modules:
        with open(os.path.join(kernel_dir(), file)) as f:
            source = f.read()
        names = [f"{k}<{t}>" for k in _KERNELS[file] for t in _TYPES.values()]
        _modules[file] = cp.RawModule(code=source, options=("-std=c++14",), name_expressions=names)
    return _modules[file].get_function(f"{kernel}<{_TYPES[np.dtype(dtype)]}>")


def _launch(file, kernel, dtype, total, args, threads=BLOCK, blocks=None):
    for a in args:
        if isinstance(a, cp.ndarray) and not a.flags.c_contiguous:
            raise ValueError(f"minicnn CUDA kernel {kernel}: got a non-contiguous array")
    if total == 0:
        return
    blocks = blocks if blocks is not None else (int(total) + threads - 1) // threads
    _kernel(file, kernel, dtype)((blocks,), (threads,), args)


def _i(*values):
    return [np.int32(v) for v in values]


def _check_float(*arrays):
    for a in arrays:
        if a.dtype not in _TYPES:
            raise TypeError(f"minicnn CUDA kernels take float32 or float64 arrays, got {a.dtype}")


# ---------------------------------------------------------------- convolution

def im2col(x, KH, KW, SH, SW, PH, PW):
    _check_float(x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    col = cp.empty((N * OH * OW, C * KH * KW), dtype=x.dtype)
    _launch("im2col.cu", "im2col", x.dtype, col.size,
            (x, col, np.int64(col.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)))
    return col


def col2im(col, x_shape, KH, KW, SH, SW, PH, PW):
    _check_float(col)
    col = cp.ascontiguousarray(col)
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    dx = cp.empty(x_shape, dtype=col.dtype)
    _launch("im2col.cu", "col2im", col.dtype, dx.size,
            (col, dx, np.int64(dx.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)))
    return dx


# ---------------------------------------------------------------- pooling

def maxpool2d_forward(x, KH, KW, SH, SW, PH, PW):
    _check_float(x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    y = cp.empty((N, C, OH, OW), dtype=x.dtype)
    idx = cp.empty((N, C, OH, OW), dtype=cp.int64)
    _launch("pool.cu", "maxpool_forward", x.dtype, y.size,
            (x, y, idx, np.int64(y.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)))
    return y, idx


def maxpool2d_backward(dy, idx, x_shape, KH, KW, SH, SW, PH, PW):
    dy = cp.ascontiguousarray(dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dx = cp.empty(x_shape, dtype=dy.dtype)
    _launch("pool.cu", "maxpool_backward", dy.dtype, dx.size,
            (dy, cp.ascontiguousarray(idx, dtype=cp.int64), dx, np.int64(dx.size),
             *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)))
    return dx


def avgpool2d_forward(x, KH, KW, SH, SW, PH, PW, count_include_pad=True):
    _check_float(x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    y = cp.empty((N, C, OH, OW), dtype=x.dtype)
    _launch("pool.cu", "avgpool_forward", x.dtype, y.size,
            (x, y, np.int64(y.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, int(count_include_pad))))
    return y, bool(count_include_pad)


def avgpool2d_backward(dy, count_include_pad, x_shape, KH, KW, SH, SW, PH, PW):
    """``count_include_pad`` is what avgpool2d_forward returned in the divisor's place."""
    dy = cp.ascontiguousarray(dy)
    N, C, H, W = x_shape
    OH, OW = dy.shape[2:]
    dx = cp.empty(x_shape, dtype=dy.dtype)
    _launch("pool.cu", "avgpool_backward", dy.dtype, dx.size,
            (dy, dx, np.int64(dx.size), *_i(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, int(count_include_pad))))
    return dx


# ---------------------------------------------------------------- batch normalization

def batchnorm_forward_train(x3, gamma, beta, eps):
    _check_float(x3)
    x3 = cp.ascontiguousarray(x3)
    N, C, L = x3.shape
    y, xhat = cp.empty_like(x3), cp.empty_like(x3)
    mean, var, invstd = (cp.empty(C, dtype=x3.dtype) for _ in range(3))
    _launch("batchnorm.cu", "bn_forward_train", x3.dtype, C,
            (x3, cp.ascontiguousarray(gamma), cp.ascontiguousarray(beta), x3.dtype.type(eps), *_i(N, C, L),
             y, xhat, mean, var, invstd), threads=256, blocks=C)
    return y, xhat, mean, var, invstd


def batchnorm_backward_train(dy3, xhat, invstd, gamma):
    dy3 = cp.ascontiguousarray(dy3)
    N, C, L = dy3.shape
    dx = cp.empty_like(dy3)
    dgamma, dbeta = cp.empty(C, dtype=dy3.dtype), cp.empty(C, dtype=dy3.dtype)
    _launch("batchnorm.cu", "bn_backward_train", dy3.dtype, C,
            (dy3, xhat, invstd, cp.ascontiguousarray(gamma), *_i(N, C, L), dx, dgamma, dbeta), threads=256, blocks=C)
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- softmax cross-entropy

def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - cp.log(cp.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    _check_float(logits)
    logits = cp.ascontiguousarray(logits)
    N, K = logits.shape
    loss, probs = cp.empty(N, dtype=logits.dtype), cp.empty_like(logits)
    _launch("softmax_ce.cu", "softmax_ce_forward", logits.dtype, N,
            (logits, cp.ascontiguousarray(labels, dtype=cp.int64), logits.dtype.type(label_smoothing), *_i(N, K),
             loss, probs))
    return loss, probs


def softmax_cross_entropy_backward(probs, labels, label_smoothing, scale):
    N, K = probs.shape
    scale = cp.ascontiguousarray(cp.asarray(scale, dtype=probs.dtype).reshape(-1))
    dlogits = cp.empty_like(probs)
    _launch("softmax_ce.cu", "softmax_ce_backward", probs.dtype, N * K,
            (probs, cp.ascontiguousarray(labels, dtype=cp.int64), probs.dtype.type(label_smoothing), scale,
             np.int32(1 if scale.size == N and scale.size > 1 else 0), *_i(N, K), dlogits))
    return dlogits


# ---------------------------------------------------------------- elementwise

def relu_forward(x):
    _check_float(x)
    x = cp.ascontiguousarray(x)
    y = cp.empty_like(x)
    _launch("activation.cu", "relu_forward", x.dtype, x.size, (x, y, np.int64(x.size)))
    return y


def relu_backward(dy, y):
    _check_float(dy, y)
    dy, y = cp.ascontiguousarray(dy), cp.ascontiguousarray(y)
    dx = cp.empty_like(dy)
    _launch("activation.cu", "relu_backward", dy.dtype, dy.size, (dy, y, dx, np.int64(dy.size)))
    return dx


def dropout_mask(shape, p, dtype, rng):
    """The mask is drawn on the host from minicnn's generator (so seeds mean the same on both
    devices) and copied over."""
    return cp.asarray(numpy_ops.dropout_mask(shape, p, np.dtype(dtype), rng))
