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
import cupyx
import numpy as np

from . import numpy_ops

name = "cupy"
xp = cp
output_size = numpy_ops.output_size
batchnorm_forward_eval = numpy_ops.batchnorm_forward_eval    # elementwise: CuPy's own kernels
BLOCK = 256

_KERNELS = {           # file -> kernels templated on T (instantiated for float and double)
    "im2col.cu": ["im2col", "col2im", "rows_to_nchw"],
    "pool.cu": ["maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward"],
    "batchnorm.cu": ["bn_forward_train", "bn_backward_train"],
    "softmax_ce.cu": ["softmax_ce_forward", "softmax_ce_backward"],
    "activation.cu": ["relu_forward", "relu_backward", "bias_relu"],
    "optim.cu": ["sgd_multi", "adam_multi"],
    "dropout.cu": ["dropout_forward"],
    "gemm.cu": ["gemm"],
}
_PLAIN_KERNELS = {"dropout.cu": ["rng_advance"]}      # file -> kernels without a type parameter
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
        names = [f"{k}<{t}>" for k in _KERNELS[file] for t in _TYPES.values()] + _PLAIN_KERNELS.get(file, [])
        _modules[file] = cp.RawModule(code=source, options=("-std=c++14",), name_expressions=names)
    if dtype is None:
        return _modules[file].get_function(kernel)
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


# ---------------------------------------------------------------- matrix products

_own_gemm = False     # True: every product through kernels/gemm.cu (tests compare graph and eager runs)


def use_own_gemm(flag):
    """Multiply with kernels/gemm.cu even outside CUDA-graph captures; returns the previous setting."""
    global _own_gemm
    previous, _own_gemm = _own_gemm, bool(flag)
    return previous


def matmul(a, b):
    """a @ b for 2-D or 3-D (batched, broadcast) operands: cuBLAS normally; kernels/gemm.cu while
    a CUDA graph is captured (CuPy refuses cuBLAS calls then) or when use_own_gemm(True)."""
    if not (_own_gemm or capturing()):
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


def conv_backward_gemms(dy, col, W_col, bias, input_grad):
    """The convolution's three gradient products on the GPU, from dy (n, OC, OH, OW) and the
    column matrix col (n*L, CKK) of forward. dW = sum over samples of dy[i] (OC, L) @ col[i]
    (L, CKK): one batched product straight from NCHW (one product with K = n*L, what the
    CPU does, gives cuBLAS a 32 x 9 result to reduce over 700,000 terms, 15 ms for MnistCNN's
    first layer at batch 1024); db = sum of dy over samples and pixels; dcol = dy rows @ W_col.
    Returns (dW (OC, CKK), db or None, dcol or None)."""
    n, OC = dy.shape[:2]
    dy3 = cp.ascontiguousarray(dy).reshape(n, OC, -1)
    L = dy3.shape[2]
    col3 = col.reshape(n, L, -1)
    per_sample = OC * col3.shape[2] * dy.dtype.itemsize
    chunk = max(1, min(n, (64 * 2**20) // max(per_sample, 1)))   # bound the (chunk, OC, CKK) products
    dW = None
    for start in range(0, n, chunk):
        part = matmul(dy3[start:start + chunk], col3[start:start + chunk]).sum(axis=0)
        dW = part if dW is None else dW + part
    db = dy3.sum(axis=(0, 2)) if bias else None
    dcol = None
    if input_grad:
        rows = dy3.transpose(0, 2, 1).reshape(-1, OC)
        dcol = matmul(rows, W_col)
    return dW, db, dcol


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


def rows_to_nchw(rows, bias, N, OC, L):
    """The convolution's epilogue: rows (N*L, OC) from the GEMM -> y (N, OC, L) + bias[oc], one launch."""
    _check_float(rows)
    rows = cp.ascontiguousarray(rows)
    y = cp.empty((N, OC, L), dtype=rows.dtype)
    b = np.uint64(0) if bias is None else cp.ascontiguousarray(bias)    # a null pointer
    _launch("im2col.cu", "rows_to_nchw", rows.dtype, y.size, (rows, b, y, np.int64(y.size), *_i(OC, L)))
    return y


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


_bad_label_flag = None   # int32 on the device, set by softmax_ce_forward when a label is out of range
_flag_on_host = None     # pinned host memory the flag is copied into, asynchronously, after each launch
_unchecked = None        # (event after that copy, labels, K) of the last launch, not yet examined


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """As numpy_ops. Labels are checked by the kernel itself: no reductions and no waiting. Its
    flag travels back to the host asynchronously and is examined at the next call (or by
    check_labels(), which fit calls whenever it reads its totals), so a bad label raises
    ValueError naming it one call later, while the step's loss is NaN. Inside a CUDA-graph
    capture the flag stays on the device for raise_if_bad_labels."""
    global _bad_label_flag, _flag_on_host, _unchecked
    _check_float(logits)
    check_labels()
    logits = cp.ascontiguousarray(logits)
    N, K = logits.shape
    if _bad_label_flag is None:
        _bad_label_flag = cp.zeros(1, dtype=cp.int32)
        _flag_on_host = cupyx.empty_pinned(1, dtype=np.int32)
    labels = cp.ascontiguousarray(labels, dtype=cp.int64)
    loss, probs = cp.empty(N, dtype=logits.dtype), cp.empty_like(logits)
    _launch("softmax_ce.cu", "softmax_ce_forward", logits.dtype, N,
            (logits, labels, logits.dtype.type(label_smoothing), *_i(N, K), loss, probs, _bad_label_flag))
    if not capturing():
        stream = cp.cuda.get_current_stream()
        cp.cuda.runtime.memcpyAsync(_flag_on_host.ctypes.data, _bad_label_flag.data.ptr, 4,
                                    cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        _unchecked = (stream.record(), labels, K)
    return loss, probs


def check_labels():
    """Raise ValueError if the last cross-entropy launch met a label outside [0, K) (waits only
    for that launch's flag to arrive, normally long done)."""
    global _unchecked
    if _unchecked is None:
        return
    event, labels, K = _unchecked
    _unchecked = None
    event.synchronize()
    if _flag_on_host[0]:
        _flag_on_host[0] = 0
        _raise_bad_labels(labels, K)


def raise_if_bad_labels(labels, K):
    """Read the device flag now (waits for the GPU) and raise ValueError if it is set: for
    CUDA-graph replays, whose kernels set the flag without the asynchronous copy."""
    if _bad_label_flag is not None and int(_bad_label_flag[0]):
        _raise_bad_labels(labels, K)


def _raise_bad_labels(labels, K):
    _bad_label_flag.fill(0)
    host = cp.asnumpy(labels)
    bad = host[(host < 0) | (host >= K)]
    seen = f"got {int(bad[0])}" if bad.size else "got one in an earlier batch"
    raise ValueError(f"labels must be in [0, {K}) for {K} classes, {seen}")


def capturing():
    """True while the current stream is being captured into a CUDA graph (no host reads allowed)."""
    return cp.cuda.get_current_stream().is_capturing()


def softmax_cross_entropy_backward(probs, labels, label_smoothing, scale):
    N, K = probs.shape
    if isinstance(scale, (int, float)):           # one scale for every row: a cached device scalar
        scale = cached_table((float(scale),), probs.dtype)
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
    """A mask drawn on the host from a NumPy generator and copied over (Dropout itself uses
    dropout_forward, which a CUDA graph can replay)."""
    return cp.asarray(numpy_ops.dropout_mask(shape, p, np.dtype(dtype), rng))


def new_rng_state(seed):
    """Device state {seed, counter} for dropout_forward."""
    return cp.asarray(np.array([seed, 0], dtype=np.uint64))


def dropout_forward(x, p, state):
    """y = x * mask, mask = 0 with probability p else 1/(1-p), drawn on the GPU from ``state``
    (advanced on the GPU afterwards, so every call, and every graph replay, draws anew)."""
    _check_float(x)
    x = cp.ascontiguousarray(x)
    y, mask = cp.empty_like(x), cp.empty_like(x)
    _launch("dropout.cu", "dropout_forward", x.dtype, x.size,
            (x, y, mask, np.int64(x.size), np.float64(p), x.dtype.type(1 / (1 - p)), state))
    _kernel("dropout.cu", "rng_advance", None)((1,), (1,), (state,))
    return y, mask


# ---------------------------------------------------------------- optimizers, one launch per group

_tables = {}        # tuple of device pointers (or sizes, or hyper-parameters) -> device array holding them
captured_tables = []   # the tables a capture in progress reads: its graph must keep them alive


def cached_table(values, dtype):
    """A cached device copy of a small tuple of numbers: pointer tables, offsets, hyper-parameters.
    Parameters, gradients and optimizer state keep their addresses from step to step, so the
    copy is made once (and never inside a CUDA-graph capture, where host-to-device copies are
    not allowed). The cache is emptied when it grows large (eager steps with fresh gradients
    make new tables); a captured graph holds on to its own tables (see captured_tables)."""
    key = (dtype, values)
    table = _tables.get(key)
    if table is None:
        if len(_tables) > 512:
            _tables.clear()
        table = _tables[key] = cp.asarray(np.array(values, dtype=dtype))
    if capturing():
        captured_tables.append(table)
    return table


def _group_tables(*lists):
    """(dtype, total size, offsets table, one pointer table per list). Arrays are checked when
    their tables are first made (a table seen before holds arrays that passed)."""
    first = lists[0]
    dtype = first[0].dtype
    keys = [tuple(a.data.ptr for a in arrays) for arrays in lists]
    if any((np.uint64, key) not in _tables for key in keys):
        for arrays in lists:
            for a in arrays:
                if a.dtype != dtype or not a.flags.c_contiguous:
                    raise ValueError("minicnn fused optimizer: parameters, gradients and state must be contiguous "
                                     f"arrays of one dtype, got {a.dtype} (contiguous={a.flags.c_contiguous})")
    sizes = [0]
    for a in first:
        sizes.append(sizes[-1] + a.size)
    return dtype, sizes[-1], cached_table(tuple(sizes), np.int64), [cached_table(key, np.uint64) for key in keys]


def sgd_multi(params, grads, bufs, hyper, nesterov, first):
    """One SGD step for every array in ``params`` (see optim.cu); hyper = device [lr, momentum,
    dampening, weight_decay]; bufs may be ``params`` again when momentum is 0 (never read then)."""
    dtype, total, offsets, (p, g, b) = _group_tables(params, grads, bufs)
    _launch("optim.cu", "sgd_multi", dtype, total,
            (p, g, b, offsets, np.int32(len(params)), hyper, np.int32(bool(nesterov)), np.int32(bool(first))))


def adam_multi(params, grads, ms, vs, vmaxs, hyper, decoupled, amsgrad):
    """One Adam/AdamW step for every array in ``params``; hyper = device [lr, beta1, beta2, eps,
    weight_decay, step_size, bc2_sqrt]; vmaxs is vs again without amsgrad (never read then)."""
    dtype, total, offsets, (p, g, m, v, vmax) = _group_tables(params, grads, ms, vs, vmaxs)
    _launch("optim.cu", "adam_multi", dtype, total,
            (p, g, m, v, vmax, offsets, np.int32(len(params)), hyper, np.int32(bool(decoupled)), np.int32(bool(amsgrad))))
