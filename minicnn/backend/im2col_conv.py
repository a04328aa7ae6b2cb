"""Convolution as im2col plus one matrix product: the reference algorithm, run over the primitives
of whichever backend calls it (NumPy's, Numba's for strided and grouped convolutions, CUDA's).

    x    (N, C, H, W)     w (OC, C, KH, KW)     b (OC,)
    col  (n*OH*OW, C*KH*KW) = im2col(x[chunk])              rows in (n, oh, ow), columns in (c, kh, kw) order
    y    (n, OC, OH, OW)    = (col @ W_col.T + b) as NCHW    W_col = w.reshape(OC, C*KH*KW)
    backward, with dy_rows (n*OH*OW, OC) the pixels of dy as rows:
    dW = dy_rows.T @ col    db = column sums of dy_rows    dx = col2im(dy_rows @ W_col)
With G groups, w is (OC, C/G, KH, KW) and group g multiplies its own block of columns,
col[:, g*C/G*KH*KW:][:C/G*KH*KW], by its own OC/G filters; the products are placed side by side.
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
    __slots__ = ("x", "col", "chunk", "geometry", "groups", "has_bias")
    algorithm = "im2col"

    def __init__(self, x, col, chunk, geometry, groups, has_bias):
        self.x, self.col, self.chunk = x, col, chunk
        self.geometry, self.groups, self.has_bias = geometry, groups, has_bias


def output_size(size, kernel, stride, padding, dilation=1):
    """Output length of a sliding window: floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def samples_per_chunk(x_shape, kernel_size, out_size, itemsize, max_col_bytes):
    """How many samples' column matrices fit in max_col_bytes (at least one)."""
    N, C = x_shape[:2]
    per_sample = out_size[0] * out_size[1] * C * kernel_size[0] * kernel_size[1] * itemsize
    return max(1, min(N, max_col_bytes // max(per_sample, 1)))


def forward(prims, x, w, b, stride, padding, dilation, groups, max_col_bytes):
    """y (N, OC, OH, OW) and its Record (see the module's formulas)."""
    OC, _, KH, KW = w.shape
    N, _, H, W = x.shape
    geometry = ((KH, KW), stride, padding, dilation)
    OH = output_size(H, KH, stride[0], padding[0], dilation[0])
    OW = output_size(W, KW, stride[1], padding[1], dilation[1])
    W_cols = _group_filters(w, groups)                                 # (OC/G, C/G*KH*KW) each
    chunk = samples_per_chunk(x.shape, (KH, KW), (OH, OW), x.dtype.itemsize, max_col_bytes)
    outputs = []
    for start in range(0, N, chunk):
        col = prims.im2col(x[start:start + chunk], *geometry)                   # (n*OH*OW, C*KH*KW)
        if groups == 1:
            rows = prims.matmul(col, W_cols[0].T)                                # (n*OH*OW, OC)
        else:
            block = W_cols[0].shape[1]
            rows = prims.xp.concatenate([prims.matmul(col[:, g * block:(g + 1) * block], W_col.T)
                                         for g, W_col in enumerate(W_cols)], axis=1)
        outputs.append(prims.to_nchw(rows, b, rows.shape[0] // (OH * OW), OC, OH, OW))
    xp = prims.xp
    if not outputs:                                                      # an empty batch
        y, col = xp.empty((0, OC, OH, OW), dtype=x.dtype), None
    else:
        y = xp.ascontiguousarray(outputs[0] if len(outputs) == 1 else xp.concatenate(outputs))
    # one chunk: keep its col for backward; several: keep x and rebuild each col in backward
    record = Record(x, col if chunk >= N else None, chunk, geometry, groups, b is not None)
    return y, record


def backward(prims, dy, record, w, input_grad):
    """(dx or None, dW (OC, C/G, KH, KW), db or None) for forward's Record."""
    r = record
    W_cols = _group_filters(w, r.groups)
    OCg = W_cols[0].shape[0]
    dW, db, dx_parts = None, None, []
    for start in range(0, dy.shape[0], r.chunk):
        x_part = r.x[start:start + r.chunk]
        dy_part = dy[start:start + r.chunk]
        col = r.col if r.col is not None else prims.im2col(x_part, *r.geometry)
        if r.groups == 1:
            dW_part, db_part, dcol = prims.gemms(dy_part, col, W_cols[0], r.has_bias, input_grad)
        else:
            dW_part, db_part, dcol = _grouped_gemms(prims, dy_part, col, W_cols, OCg, r.has_bias, input_grad)
        dW, db = _add(dW, dW_part), _add(db, db_part)
        if input_grad:
            dx_parts.append(prims.col2im(dcol, x_part.shape, *r.geometry))
    xp = prims.xp
    if dW is None:                                                       # an empty batch
        dW = xp.zeros((w.shape[0], w[0].size), dtype=w.dtype)
        db = xp.zeros(w.shape[0], dtype=w.dtype) if r.has_bias else None
        dx_parts = [xp.zeros(r.x.shape, dtype=dy.dtype)]
    dx = None
    if input_grad:
        dx = dx_parts[0] if len(dx_parts) == 1 else xp.concatenate(dx_parts)
    return dx, dW.reshape(w.shape), db


def _group_filters(w, groups):
    """The filters of each group as (OC/G, C/G*KH*KW) matrices."""
    OCg = w.shape[0] // groups
    return [w[g * OCg:(g + 1) * OCg].reshape(OCg, -1) for g in range(groups)]


def _grouped_gemms(prims, dy, col, W_cols, OCg, has_bias, input_grad):
    """prims.gemms for each group on its channels of dy and its block of columns, put together."""
    block = W_cols[0].shape[1]
    dWs, dbs, dcol = [], [], None
    if input_grad:
        dcol = prims.xp.empty(col.shape, dtype=dy.dtype)
    for g, W_col in enumerate(W_cols):
        dW_g, db_g, dcol_g = prims.gemms(dy[:, g * OCg:(g + 1) * OCg], col[:, g * block:(g + 1) * block], W_col,
                                         has_bias, input_grad)
        dWs.append(dW_g)
        dbs.append(db_g)
        if input_grad:
            dcol[:, g * block:(g + 1) * block] = dcol_g
    xp = prims.xp
    return xp.concatenate(dWs), (xp.concatenate(dbs) if has_bias else None), dcol


def _add(total, part):
    """total + part, where total None means nothing yet (no extra pass over part)."""
    return part if total is None else total + part
