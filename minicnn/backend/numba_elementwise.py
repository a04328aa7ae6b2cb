"""Elementwise and row-wise ops on the Numba backend: ReLU, sums, softmax cross-entropy, the SGD step.
Each is one plain loop (vectorized by LLVM) instead of NumPy's several passes with temporaries."""
import numpy as np
from numba import njit

from . import cores, numba_strategy, numpy_ops
from .numba_common import FAST, _by_samples


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


def softmax_cross_entropy_forward(logits, labels, label_smoothing):
    """As numpy_ops, one pass a row; record: (probs, labels, label_smoothing)."""
    numpy_ops._check_labels(labels, logits.shape[1])
    logits = np.ascontiguousarray(logits)
    loss = np.empty(len(logits), dtype=logits.dtype)
    probs = np.empty_like(logits)
    _softmax_ce(logits, labels.astype(np.int64, copy=False), float(label_smoothing), loss, probs)
    return loss, (probs, labels, label_smoothing)


# ---------------------------------------------------------------- ReLU

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


@njit(cache=True, nogil=True)
def _add(a, b, y):
    for i in range(a.size):
        y[i] = a[i] + b[i]


@njit(cache=True, nogil=True)
def _add_relu(a, b, y, zero):
    for i in range(a.size):
        v = a[i] + b[i]
        y[i] = v if (v > zero) | (v != v) else zero


def _elementwise(kernel, inputs, *scalars):
    """A fresh array y of the inputs' shape with kernel(*flat parts of inputs, flat part of y,
    *scalars) run over it, in parts on the cores when it is large (each value depends on its own
    position only, so the parts give the same bits as one call)."""
    flat = [np.ascontiguousarray(a).reshape(-1) for a in inputs]
    y = np.empty_like(inputs[0], order="C")
    out = y.reshape(-1)
    _by_samples(out, lambda part: kernel(*[a[part] for a in flat], out[part], *scalars))
    return y


def relu_forward(x):
    """As numpy_ops; record: y."""
    y = _elementwise(_relu, [x], x.dtype.type(0))
    return y, y


def relu_backward(dy, record):
    return _elementwise(_relu_backward, [dy, record], dy.dtype.type(0))


def add(a, b):
    numpy_ops._check_same_array(a, b)
    return _elementwise(_add, [a, b])


def add_relu_forward(a, b):
    """As numpy_ops, one pass; record: y."""
    numpy_ops._check_same_array(a, b)
    y = _elementwise(_add_relu, [a, b], a.dtype.type(0))
    return y, y


# ---------------------------------------------------------------- the hard activations (MobileNetV2/V3)

# numpy_ops' expressions in one pass, the same operations in the same order (the same bits); the
# clamps are written as comparisons so that NaN stays NaN (as np.maximum and np.minimum keep it), and
# zero comes in typed (see ReLU's note; dy * 0 would give -0 and NaN where torch gives 0).

@njit(cache=True, nogil=True)
def _hardtanh(x, y, low, high):
    for i in range(x.size):
        v = x[i]
        v = low if v < low else v
        y[i] = high if v > high else v


@njit(cache=True, nogil=True)
def _hardtanh_backward(dy, x, dx, low, high, zero):
    for i in range(dy.size):
        v = x[i]
        dx[i] = dy[i] if (v > low) & (v < high) else zero


@njit(cache=True, nogil=True)
def _hardsigmoid(x, y, three, six, zero):
    for i in range(x.size):
        r = x[i] + three
        r = zero if r < zero else r
        r = six if r > six else r
        y[i] = r / six


@njit(cache=True, nogil=True)
def _hardsigmoid_backward(dy, x, dx, three, one_sixth, zero):
    for i in range(dy.size):
        v = x[i]
        dx[i] = dy[i] * one_sixth if (v > -three) & (v < three) else zero


@njit(cache=True, nogil=True)
def _hardswish(x, y, three, six, zero):
    for i in range(x.size):
        v = x[i]
        r = v + three
        r = zero if r < zero else r
        r = six if r > six else r
        y[i] = v * r / six


@njit(cache=True, nogil=True)
def _hardswish_backward(dy, x, dx, three, half, zero):
    for i in range(dy.size):
        v = x[i]
        if v <= -three:
            dx[i] = zero
        elif v >= three:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * (v / three + half)


def hardtanh_forward(x, min_val, max_val):
    """As numpy_ops, one pass; record: (x, min_val, max_val)."""
    t = x.dtype.type
    return _elementwise(_hardtanh, [x], t(min_val), t(max_val)), (x, min_val, max_val)


def hardtanh_backward(dy, record):
    x, min_val, max_val = record
    t = dy.dtype.type
    return _elementwise(_hardtanh_backward, [dy, x], t(min_val), t(max_val), t(0))


def hardsigmoid_forward(x):
    """As numpy_ops, one pass; record: x."""
    t = x.dtype.type
    return _elementwise(_hardsigmoid, [x], t(3), t(6), t(0)), x


def hardsigmoid_backward(dy, record):
    t = dy.dtype.type
    return _elementwise(_hardsigmoid_backward, [dy, record], t(3), t(numpy_ops._ONE_SIXTH), t(0))


def hardswish_forward(x):
    """As numpy_ops, one pass; record: x."""
    t = x.dtype.type
    return _elementwise(_hardswish, [x], t(3), t(6), t(0)), x


def hardswish_backward(dy, record):
    t = dy.dtype.type
    return _elementwise(_hardswish_backward, [dy, record], t(3), t(0.5), t(0))


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


def sgd_update(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
    """numpy_ops.sgd_update in one pass over each array's memory: the same operations in the same
    order, so the same bits. The hyper-parameters are cast to the arrays' dtype first, as NumPy does
    with Python scalars (an integer literal like the 1 of 1 - dampening would make Numba compute in
    float64). Large arrays are updated in parts on the cores (elementwise: the parts change nothing
    but the speed)."""
    part_size = numba_strategy.current().sgd_part
    for p, grad, buf in zip(params, grads, bufs):
        if not p.flags.c_contiguous:
            numpy_ops.sgd_update([p], [grad], [buf], lr, momentum, dampening, weight_decay, nesterov, first)
            continue
        t = p.dtype.type
        p, grad, buf = p.reshape(-1), np.ascontiguousarray(grad).reshape(-1), buf.reshape(-1)
        args = (t(lr), t(momentum), t(1 - dampening), t(weight_decay), bool(nesterov), bool(first))
        if p.size <= part_size:
            _sgd_step(p, grad, buf, *args)
            continue

        def update(i, p=p, grad=grad, buf=buf, args=args):
            part = slice(i * part_size, (i + 1) * part_size)
            _sgd_step(p[part], grad[part], buf[part], *args)

        cores.run(update, -(-p.size // part_size))
