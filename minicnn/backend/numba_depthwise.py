"""Depthwise convolutions on the Numba backend (groups = in_channels = out_channels): each output
plane is its own input plane's cross-correlation with one KH x KW filter, so there is no sum over
channels to hand to a GEMM, and im2col would build one tiny product per channel.

    y[n, c, oh, ow] = b[c] + sum over kh, kw of w[c, 0, kh, kw] * x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]
Each tap sweeps a whole output row at once (a contiguous, vectorized loop at stride 1), the columns
clipped once per row to those whose input lies inside the image. Backward runs the adjoints plane
by plane in a fixed order. Chunks of samples are tasks on the cores; each chunk's weight and bias
gradients are added in chunk order, so the bits do not depend on the thread count.
"""
import numpy as np
from numba import njit

from . import cores
from .numba_common import DIRECT, DOT, _balanced_chunk, _sum_in_order


@njit(cache=True, inline="always")
def _columns_inside(kw, W, OW, SW, PW, DW):
    """The output columns [lo, hi) whose tap kw reads inside the image: 0 <= ow*SW - PW + kw*DW < W."""
    first = PW - kw * DW                               # ow*SW >= first
    lo = max(0, -((-first) // SW))                     # ceil(first / SW)
    hi = min(OW, max(lo, -((-first - W) // SW)))       # ceil((first + W) / SW): ow*SW < first + W
    return lo, hi


@njit(**DIRECT)
def _forward(x, w, b, y, SH, SW, PH, PW, DH, DW):
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    KH, KW = w.shape[2], w.shape[3]
    for n in range(N):
        for c in range(C):
            out = y[n, c]
            for oh in range(OH):
                row = out[oh]
                for ow in range(OW):
                    row[ow] = b[c]
                for kh in range(KH):
                    ih = oh * SH - PH + kh * DH
                    if ih < 0 or ih >= H:
                        continue
                    src = x[n, c, ih]
                    for kw in range(KW):
                        lo, hi = _columns_inside(kw, W, OW, SW, PW, DW)
                        tap, shift = w[c, 0, kh, kw], kw * DW - PW
                        for ow in range(lo, hi):
                            row[ow] += tap * src[ow * SW + shift]


@njit(**DOT)
def _weight_grad(x, dy, dw, db, SH, SW, PH, PW, DH, DW):
    """dw (C, 1, KH, KW) and db (C,) of a chunk, zeroed here."""
    N, C, H, W = x.shape
    OH, OW = dy.shape[2], dy.shape[3]
    KH, KW = dw.shape[2], dw.shape[3]
    zero = dw.dtype.type(0)
    for c in range(C):
        total = zero
        for n in range(N):
            for oh in range(OH):
                for ow in range(OW):
                    total += dy[n, c, oh, ow]
        db[c] = total
        for kh in range(KH):
            for kw in range(KW):
                lo, hi = _columns_inside(kw, W, OW, SW, PW, DW)
                shift = kw * DW - PW
                total = zero
                for n in range(N):
                    for oh in range(OH):
                        ih = oh * SH - PH + kh * DH
                        if ih < 0 or ih >= H:
                            continue
                        g, src = dy[n, c, oh], x[n, c, ih]
                        for ow in range(lo, hi):
                            total += g[ow] * src[ow * SW + shift]
                dw[c, 0, kh, kw] = total


@njit(**DIRECT)
def _input_grad(dy, w, dx, SH, SW, PH, PW, DH, DW):
    """dx (n, C, H, W), zeroed here: each tap adds w * dy back where forward read it."""
    N, C, H, W = dx.shape
    OH, OW = dy.shape[2], dy.shape[3]
    KH, KW = w.shape[2], w.shape[3]
    for n in range(N):
        for c in range(C):
            plane = dx[n, c]
            plane[:, :] = 0
            for oh in range(OH):
                g = dy[n, c, oh]
                for kh in range(KH):
                    ih = oh * SH - PH + kh * DH
                    if ih < 0 or ih >= H:
                        continue
                    dst = plane[ih]
                    for kw in range(KW):
                        lo, hi = _columns_inside(kw, W, OW, SW, PW, DW)
                        tap, shift = w[c, 0, kh, kw], kw * DW - PW
                        for ow in range(lo, hi):
                            dst[ow * SW + shift] += tap * g[ow]


class Record:
    """What backward needs: the input and the geometry."""
    __slots__ = ("x", "geometry", "has_bias")
    algorithm = "depthwise"

    def __init__(self, x, geometry, has_bias):
        self.x, self.geometry, self.has_bias = x, geometry, has_bias


_DEPTHWISE_CHUNK = 16      # samples per task


def forward(x, w, b, stride, padding, dilation, out_size):
    """y (N, C, OH, OW) and a Record; w (C, 1, KH, KW), b (C,) or None."""
    N, C = x.shape[:2]
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    bias = np.zeros(C, dtype=x.dtype) if b is None else np.ascontiguousarray(b)
    y = np.empty((N, C) + tuple(out_size), dtype=x.dtype)
    geometry = (*stride, *padding, *dilation)
    chunk = _balanced_chunk(N, _DEPTHWISE_CHUNK)

    def forward_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        _forward(x[part], w, bias, y[part], *geometry)

    if N:
        cores.run(forward_chunk, -(-N // chunk))
    return y, Record(x, geometry, b is not None)


def backward(dy, record, w, input_grad):
    """(dx or None, dw, db or None)."""
    x, geometry = record.x, record.geometry
    N, C = x.shape[:2]
    dy, w = np.ascontiguousarray(dy), np.ascontiguousarray(w)
    dx = np.empty(x.shape, dtype=dy.dtype) if input_grad else None
    chunk = _balanced_chunk(N, _DEPTHWISE_CHUNK)

    def backward_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        dw, db = np.empty(w.shape, dtype=dy.dtype), np.empty(C, dtype=dy.dtype)
        _weight_grad(x[part], dy[part], dw, db, *geometry)
        if input_grad:
            _input_grad(dy[part], w, dx[part], *geometry)
        return dw, db

    if N:
        dw, db = _sum_in_order(cores.run(backward_chunk, -(-N // chunk)))
    else:
        dw, db = np.zeros(w.shape, dtype=dy.dtype), np.zeros(C, dtype=dy.dtype)
    return dx, dw, (db if record.has_bias else None)
