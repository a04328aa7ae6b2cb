"""Convolution as im2col plus one matrix product: the reference algorithm, run over the primitives
of whichever backend calls it (NumPy's, Numba's for strided convolutions, CUDA's).

    x    (N, C, H, W)     w (OC, C, KH, KW)     b (OC,)
    col  (n*OH*OW, C*KH*KW) = im2col(x[chunk])              rows in (n, oh, ow), columns in (c, kh, kw) order
    y    (n, OC, OH, OW)    = (col @ W_col.T + b) as NCHW    W_col = w.reshape(OC, C*KH*KW)
    backward, with dy_rows (n*OH*OW, OC) the pixels of dy as rows:
    dW = dy_rows.T @ col    db = column sums of dy_rows    dx = col2im(dy_rows @ W_col)
A batch whose column matrices would pass max_col_bytes goes a chunk of samples at a time, and
backward rebuilds each chunk's columns instead of keeping them all.
"""
from typing import Callable, NamedTuple


class Primitives(NamedTuple):
    """A backend's pieces of the algorithm.

    im2col, col2im, matmul: the contract's ops.
    gemms(dy, col, W_col, has_bias, input_grad) -> (dW, db or None, dcol or None): the three gradient
        products of one chunk (a backend may batch them its own way).
    to_nchw(rows, b, n, OC, OH, OW) -> y (n, OC, OH, OW): the product's rows (n*OH*OW, OC), plus the
        bias (or None), laid out as images (may reuse rows' memory).
    xp: the array module.
    """
    im2col: Callable
    col2im: Callable
    matmul: Callable
    gemms: Callable
    to_nchw: Callable
    xp: object


class Record:
    """What backward needs: the input (or one chunk's column matrix, when one chunk is the batch)."""
    __slots__ = ("x", "col", "chunk", "kernel_size", "stride", "padding", "has_bias")
    algorithm = "im2col"

    def __init__(self, x, col, chunk, kernel_size, stride, padding, has_bias):
        self.x, self.col, self.chunk = x, col, chunk
        self.kernel_size, self.stride, self.padding, self.has_bias = kernel_size, stride, padding, has_bias


def output_size(size, kernel, stride, padding):
    """Output length of a sliding window: floor((size + 2*padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def samples_per_chunk(x_shape, kernel_size, out_size, itemsize, max_col_bytes):
    """How many samples' column matrices fit in max_col_bytes (at least one)."""
    N, C = x_shape[:2]
    per_sample = out_size[0] * out_size[1] * C * kernel_size[0] * kernel_size[1] * itemsize
    return max(1, min(N, max_col_bytes // max(per_sample, 1)))


def forward(prims, x, w, b, stride, padding, max_col_bytes):
    """y (N, OC, OH, OW) and its Record (see the module's formulas)."""
    OC, _, KH, KW = w.shape
    N, _, H, W = x.shape
    OH, OW = output_size(H, KH, stride[0], padding[0]), output_size(W, KW, stride[1], padding[1])
    W_col = w.reshape(OC, -1)                                          # (OC, C*KH*KW)
    chunk = samples_per_chunk(x.shape, (KH, KW), (OH, OW), x.dtype.itemsize, max_col_bytes)
    outputs = []
    for start in range(0, N, chunk):
        col = prims.im2col(x[start:start + chunk], (KH, KW), stride, padding)     # (n*OH*OW, C*KH*KW)
        rows = prims.matmul(col, W_col.T)                                          # (n*OH*OW, OC)
        outputs.append(prims.to_nchw(rows, b, rows.shape[0] // (OH * OW), OC, OH, OW))
    xp = prims.xp
    y = xp.ascontiguousarray(outputs[0] if len(outputs) == 1 else xp.concatenate(outputs))
    # one chunk: keep its col for backward; several: keep x and rebuild each col in backward
    record = Record(x, col if chunk >= N else None, chunk, (KH, KW), stride, padding, b is not None)
    return y, record


def backward(prims, dy, record, w, input_grad):
    """(dx or None, dW (OC, C, KH, KW), db or None) for forward's Record."""
    r = record
    W_col = w.reshape(w.shape[0], -1)
    dW, db, dx_parts = None, None, []
    for start in range(0, dy.shape[0], r.chunk):
        x_part = r.x[start:start + r.chunk]
        col = r.col if r.col is not None else prims.im2col(x_part, r.kernel_size, r.stride, r.padding)
        dW_part, db_part, dcol = prims.gemms(dy[start:start + r.chunk], col, W_col, r.has_bias, input_grad)
        dW, db = _add(dW, dW_part), _add(db, db_part)
        if input_grad:
            dx_parts.append(prims.col2im(dcol, x_part.shape, r.kernel_size, r.stride, r.padding))
    dx = None
    if input_grad:
        dx = dx_parts[0] if len(dx_parts) == 1 else prims.xp.concatenate(dx_parts)
    return dx, dW.reshape(w.shape), db


def _add(total, part):
    """total + part, where total None means nothing yet (no extra pass over part)."""
    return part if total is None else total + part
