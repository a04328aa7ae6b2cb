"""Numba-compiled CPU primitives, the same functions and signatures as numpy_ops.

Each kernel is a plain single-threaded loop nest compiled by Numba. The cores are used by
cutting a layer's work into tasks (a chunk of samples each) that run on minicnn's own threads
(backend.cores): the stride-1 convolutions and large matrix products do this. Backward passes
that fold windows back onto the input (col2im, pooling) scatter-add within a sample, so the
order of additions is fixed and results are repeatable bit for bit, on any number of threads.
Index formulas (for input row ih, kernel row kh, stride SH, padding PH):
    ih = oh * SH - PH + kh        and conversely   oh = (ih + PH - kh) / SH  when it divides.
GEMMs stay in NumPy's BLAS, held to one thread per task (see cores for why).

The stride-1 convolutions, the backend's largest part, live in their own modules: numba_conv
(direct sums and the wide GEMM), numba_winograd (3x3 by Winograd's F(2x2, 3x3)), numba_relu_pool
(the fused ReLU and 2x2 max pool) and numba_sparse (its backward from the pool's winners), on
numba_common's flags, scratch buffers and wide planes. This module keeps the rest.
"""
import numpy as np
from numba import njit

from . import cores, numpy_ops
from .numba_common import FAST, REDUCE, _balanced_chunk, _fill
from .numba_conv import conv2d_stride1_backward, conv2d_stride1_forward  # noqa: F401 (this backend's API)
from .numba_relu_pool import _first_max, _max_of_four

name = "numba"
xp = np
output_size = numpy_ops.output_size
dropout_mask = numpy_ops.dropout_mask
log_softmax = numpy_ops.log_softmax
FUSES_CONV_RELU_POOL = True      # conv2d_stride1_forward(relu_pool=True), see nn.fused
pass_scope = cores.one_blas_thread  # see backend.pass_scope


# ---------------------------------------------------------------- matrix products

# A layer's matrix product (Linear, the im2col convolution) on the cores: the longer side of the
# result is cut into parts, each part a task with single-threaded BLAS. Every task packs the whole
# of the operand it shares, so cutting the short side costs more packing than it saves (measured on
# 2 AMD EPYC cores, MnistCNN's Linear(1600, 512) at batch 64, forward / input gradient: 16-row parts
# 0.88 / 1.04 ms, 64-column parts 0.57 / 0.57 ms; OpenBLAS's own 2 threads about 0.85 ms each).
# The parts depend only on the shapes: OpenBLAS's result for an element depends on how many rows
# and columns it was given, so cutting by the thread count would make the bits depend on it.
# Small products are one task: handing a task to a sleeping thread costs 20-100 us.
MATMUL_TASK_FLOPS = 2**23          # about 70 us of one core's float32 GEMM
MATMUL_MAX_TASKS = 8


def matmul(a, b):
    """a @ b, as numpy_ops.matmul, shared out to the cores when it is large."""
    if a.ndim != 2 or b.ndim != 2:
        with cores.one_blas_thread():
            return numpy_ops.matmul(a, b)
    M, N = a.shape[0], b.shape[1]
    flops = 2 * M * a.shape[1] * N
    n_tasks = max(1, min(MATMUL_MAX_TASKS, max(M, N) // 16, flops // MATMUL_TASK_FLOPS))
    if n_tasks == 1 or a.shape[1] == 1:
        with cores.one_blas_thread():
            return numpy_ops.matmul(a, b)
    out = np.empty((M, N), dtype=np.result_type(a, b))
    step = -(-max(M, N) // n_tasks)

    def column_block(i):            # strided, still one BLAS call
        cols = slice(i * step, (i + 1) * step)
        np.matmul(a, b[:, cols], out=out[:, cols])

    def row_block(i):
        rows = slice(i * step, (i + 1) * step)
        np.matmul(a[rows], b, out=out[rows])

    cores.run(column_block if M < N else row_block, -(-max(M, N) // step))
    return out


def conv_backward_gemms(dy, col, W_col, bias, input_grad):
    with cores.one_blas_thread():
        return numpy_ops.conv_backward_gemms(dy, col, W_col, bias, input_grad)


# ---------------------------------------------------------------- convolution

@njit(**FAST)
def _im2col(x, col, KH, KW, SH, SW, PH, PW, OH, OW):
    """Per output pixel, the kernel columns that land inside the image are [kw_lo, kw_hi): the
    inner loop copies that contiguous run and zero-fills the rest, with no test per tap."""
    N, C, H, W = x.shape
    for n in range(N):
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
    """Sample by sample, col read in memory order (the fast direction): the summation order is
    fixed. Taps in the padding are skipped by clipping the kernel-column range once per output pixel."""
    N, C, H, W = dx.shape
    for n in range(N):
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


# ---------------------------------------------------------------- elementwise-by-sample work on the cores

# Pooling and batch norm on the cores: per-sample (or per-channel) kernels run on chunks of samples
# (or channels), each its own task; the chunks write disjoint parts, so results are the same bits
# as one call. Tensors under SPLIT_BYTES stay one task (a handover costs 20-50 us).
SPLIT_BYTES = 2**18


def _by_samples(a, body):
    """body(part) for slices part of a's first axis, on the cores when a is large."""
    N = a.shape[0]
    chunk = N if a.nbytes < SPLIT_BYTES else _balanced_chunk(N, N)
    cores.run(lambda i: body(slice(i * chunk, (i + 1) * chunk)), -(-N // chunk))


def _by_channels(a, body):
    """body(c_first, c_stop) for ranges of a's channels (axis 1), on the cores when a is large."""
    C = a.shape[1]
    chunk = C if a.nbytes < SPLIT_BYTES else _balanced_chunk(C, C)
    cores.run(lambda i: body(i * chunk, min(C, (i + 1) * chunk)), -(-C // chunk))


# ---------------------------------------------------------------- pooling

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


def maxpool2d_forward(x, KH, KW, SH, SW, PH, PW):
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
    return y, idx


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


def maxpool2d_backward(dy, idx, x_shape, KH, KW, SH, SW, PH, PW):
    dx = np.empty(x_shape, dtype=dy.dtype)
    dy, zero = np.ascontiguousarray(dy), dy.dtype.type(0)
    if (KH, KW, SH, SW, PH, PW) == (2, 2, 2, 2, 0, 0):
        _by_samples(dx, lambda part: _maxpool_backward_2x2(dy[part], idx[part], dx[part], zero))
        return dx
    dummy = np.ones((1, 1), dtype=dy.dtype)
    _by_samples(dx, lambda part: _pool_backward(dy[part], idx[part], dummy, dx[part], KH, KW, SH, SW, PH, PW, True))
    return dx


def avgpool2d_forward(x, KH, KW, SH, SW, PH, PW, count_include_pad=True):
    return numpy_ops.avgpool2d_forward(x, KH, KW, SH, SW, PH, PW, count_include_pad)


def avgpool2d_backward(dy, divisor, x_shape, KH, KW, SH, SW, PH, PW):
    OH, OW = dy.shape[2:]
    divisor = np.broadcast_to(np.asarray(divisor, dtype=dy.dtype), (OH, OW)).copy()
    idx = np.zeros((1, 1, 1, 1), dtype=np.int64)
    dx = np.empty(x_shape, dtype=dy.dtype)
    dy = np.ascontiguousarray(dy)
    _by_samples(dx, lambda part: _pool_backward(dy[part], idx, divisor, dx[part], KH, KW, SH, SW, PH, PW, False))
    return dx


# ---------------------------------------------------------------- batch normalization

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
    x3 = np.ascontiguousarray(x3)
    C, dtype = x3.shape[1], x3.dtype
    y, xhat = np.empty_like(x3), np.empty_like(x3)
    mean, var, invstd = (np.empty(C, dtype=dtype) for _ in range(3))
    _by_channels(x3, lambda c_first, c_stop: _bn_forward(x3, gamma, beta, eps, y, xhat, mean, var, invstd,
                                                        c_first, c_stop))
    return y, xhat, mean, var, invstd


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


def batchnorm_forward_eval(x3, mean, invstd, gamma, beta, keep_xhat):
    """numpy_ops.batchnorm_forward_eval without its four temporaries of x's size (FashionCNN's
    inference at batch 128 spent 39 of 65 ms in them, with fresh multi-megabyte arrays each)."""
    x3 = np.ascontiguousarray(x3)
    y = np.empty_like(x3)
    xhat = np.empty_like(x3) if keep_xhat else np.empty((0, 0, 0), dtype=x3.dtype)
    _by_channels(x3, lambda c_first, c_stop: _bn_forward_eval(x3, mean, invstd, gamma, beta, y, xhat,
                                                             bool(keep_xhat), c_first, c_stop))
    return y, (xhat if keep_xhat else None)


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


def batchnorm_backward_train(dy3, xhat, invstd, gamma):
    dy3 = np.ascontiguousarray(dy3)
    C = dy3.shape[1]
    dx = np.empty_like(dy3)
    dgamma, dbeta = np.empty(C, dtype=dy3.dtype), np.empty(C, dtype=dy3.dtype)
    _by_channels(dy3, lambda c_first, c_stop: _bn_backward(dy3, xhat, invstd, gamma, dx, dgamma, dbeta,
                                                          c_first, c_stop))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------- softmax cross-entropy

@njit(**FAST)
def _softmax_ce(logits, labels, smoothing, loss, probs):
    N, K = logits.shape
    for n in range(N):
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

# zero comes in with the arrays' dtype: a literal 0 would make each select float64 and keep
# the loop scalar; bitwise | (no short-circuit branch) lets it vectorize.

@njit(cache=True, nogil=True)
def _relu(x, y, zero):
    for i in range(x.size):
        v = x[i]
        y[i] = v if (v > zero) | (v != v) else zero


@njit(cache=True, nogil=True)
def _relu_backward(dy, y, dx, zero):
    for i in range(dy.size):
        dx[i] = zero if y[i] <= zero else dy[i]


def relu_forward(x):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu(x.reshape(-1), y.reshape(-1), x.dtype.type(0))
    return y


def relu_backward(dy, y):
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = np.empty_like(dy)
    _relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1), dy.dtype.type(0))
    return dx


# ---------------------------------------------------------------- optimizer step

@njit(cache=True, nogil=True)
def _sgd_step(p, grad, buf, lr, momentum, undamped, weight_decay, nesterov, first):
    for i in range(p.size):
        g = grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p[i]
        if momentum != 0:
            b = g if first else momentum * buf[i] + undamped * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        p[i] = p[i] - lr * g


# Parameters this large are updated in parts on the cores (an update is elementwise: the parts
# change nothing but the speed; MnistCNN's 819,200-weight layer: 0.14 -> 0.11 ms on 2 cores).
SGD_PART = 2**17


def sgd_step(p, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD update of p (and of the momentum buffer buf) in place, in one pass over memory: the
    operations and their order of optim.SGD._update, so results are the same bit for bit. The
    hyper-parameters are cast to p's dtype first, as NumPy does with Python scalars (an integer
    literal like the 1 of 1 - dampening would make Numba compute in float64)."""
    t = p.dtype.type
    p, grad, buf = p.reshape(-1), np.ascontiguousarray(grad).reshape(-1), buf.reshape(-1)
    args = (t(lr), t(momentum), t(1 - dampening), t(weight_decay), bool(nesterov), bool(first))
    if p.size <= SGD_PART:
        _sgd_step(p, grad, buf, *args)
        return

    def update(i):
        part = slice(i * SGD_PART, (i + 1) * SGD_PART)
        _sgd_step(p[part], grad[part], buf[part], *args)

    cores.run(update, -(-p.size // SGD_PART))
