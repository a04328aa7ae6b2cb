"""Depthwise convolutions on the Numba backend (groups = in_channels = out_channels): each output
plane is its own input plane's cross-correlation with one KH x KW filter, so there is no sum over
channels to hand to a GEMM, and im2col would build one tiny product per channel.

    y[n, c, oh, ow] = b[c] + sum over kh, kw of w[c, 0, kh, kw] * xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]

The padded plane is split into SH*SW phase planes, phase (a, b) holding the pixels at rows a, a + SH,
... and columns b, b + SW, ... (at stride 1: the padded plane itself). Tap (kh, kw) reads phase
(kh*DH % SH, kw*DW % SW) shifted by (kh*DH // SH, kw*DW // SW), so a strided convolution is a
stride-1 one over the phases. In the "wide" layout of numba_conv (a phase plane of row length Wq
read as one flat vector) output (oh, ow) sits at i = oh*Wq + ow and every tap is one long
vectorized multiply-add sweep over i; the few wrapped positions at the end of each wide row are
computed and dropped. Backward runs the adjoints: the output gradient spread into a zeroed wide
plane, one dot product per tap for the filter, shifted multiply-adds into the phases for the input,
the phases merged back. Chunks of samples are tasks on the cores; each chunk's weight and bias
gradients are added in chunk order, so the bits do not depend on the thread count.
"""
import numpy as np
from numba import njit

from . import cores
from .numba_common import DIRECT, DOT, FAST, _balanced_chunk, _copy, _fill, _scratch, _sum_in_order


class _Geometry:
    """The phases (SH*SW planes of Hq x Wq), the output (OH, OW), its wide length L = (OH - 1)*Wq + OW,
    and for each tap its phase and its shift inside the phase plane."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation):
        H, W = x_shape[2:]
        KH, KW = w_shape[2:]
        (self.SH, self.SW), (self.PH, self.PW), (DH, DW) = stride, padding, dilation
        Hp, Wp = H + 2 * self.PH, W + 2 * self.PW
        self.OH = (Hp - DH * (KH - 1) - 1) // self.SH + 1
        self.OW = (Wp - DW * (KW - 1) - 1) // self.SW + 1
        self.Hq, self.Wq = -(-Hp // self.SH), -(-Wp // self.SW)
        self.phases = self.SH * self.SW
        self.L = (self.OH - 1) * self.Wq + self.OW
        self.tap_phase = np.array([(kh * DH % self.SH) * self.SW + kw * DW % self.SW
                                   for kh in range(KH) for kw in range(KW)], dtype=np.int64)
        self.tap_shift = np.array([(kh * DH // self.SH) * self.Wq + kw * DW // self.SW
                                   for kh in range(KH) for kw in range(KW)], dtype=np.int64)


@njit(cache=True, inline="always")
def _inside(b, PW, SW, W, Wq):
    """The phase columns [lo, hi) of phase column offset b whose image column q*SW + b - PW lies in [0, W)."""
    lo = min(Wq, max(0, -((b - PW) // SW)))
    hi = max(lo, min(Wq, -((b - PW - W) // SW)))
    return lo, hi


@njit(**FAST)
def _split(x, xq, PH, PW, SH, SW, Hq, Wq):
    """xq (n, C, SH*SW, Hq*Wq): each padded plane of x (n, C, H, W) as its phase planes (zeros in
    the padding and past the plane's end); each row's columns inside the image are clipped once."""
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for a in range(SH):
                for b in range(SW):
                    plane = xq[n, c, a * SW + b]
                    lo, hi = _inside(b, PW, SW, W, Wq)
                    for r in range(Hq):
                        h = r * SH + a - PH
                        dst = plane[r * Wq:(r + 1) * Wq]
                        if h < 0 or h >= H:
                            _fill(dst, 0)
                            continue
                        src = x[n, c, h]
                        for q in range(lo):
                            dst[q] = 0
                        if SW == 1:
                            _copy(dst[lo:hi], src[lo + b - PW:hi + b - PW])
                        else:
                            for q in range(lo, hi):
                                dst[q] = src[q * SW + b - PW]
                        for q in range(hi, Wq):
                            dst[q] = 0


@njit(**FAST)
def _merge(dxq, dx, PH, PW, SH, SW, Wq):
    """dx (n, C, H, W): the pixels of the phase planes dxq back in place (the adjoint of _split
    restricted to the image: each pixel lies in exactly one phase)."""
    N, C, H, W = dx.shape
    for n in range(N):
        for c in range(C):
            for h in range(H):
                a, r = (h + PH) % SH, (h + PH) // SH
                dst = dx[n, c, h]
                for b in range(SW):
                    lo, hi = _inside(b, PW, SW, W, Wq)
                    src = dxq[n, c, a * SW + b, r * Wq:(r + 1) * Wq]
                    for q in range(lo, hi):
                        dst[q * SW + b - PW] = src[q]


@njit(**DIRECT)
def _forward(xq, taps, tap_phase, tap_shift, b, y, acc, Wq):
    """y (n, C, OH, OW) from the phase planes xq (n, C, P, Hq*Wq); taps (C, KH*KW); acc (L,) scratch."""
    n_samples, C = y.shape[0], y.shape[1]
    OH, OW = y.shape[2], y.shape[3]
    L = acc.size
    for n in range(n_samples):
        for c in range(C):
            t = taps[c]
            _fill(acc, b[c])
            for k in range(tap_shift.size):
                tap, src = t[k], xq[n, c, tap_phase[k], tap_shift[k]:tap_shift[k] + L]
                for i in range(L):
                    acc[i] += tap * src[i]
            out = y[n, c]
            for oh in range(OH):
                _copy(out[oh], acc[oh * Wq:oh * Wq + OW])


@njit(cache=True, inline="always")
def _spread(dy, g, Wq):
    """g (L,): the output gradient dy (OH, OW) at its places in the wide plane, zero elsewhere."""
    _fill(g, 0)
    for oh in range(dy.shape[0]):
        _copy(g[oh * Wq:oh * Wq + dy.shape[1]], dy[oh])


@njit(**DOT)
def _weight_grad(xq, dy, tap_phase, tap_shift, dw, db, g, Wq):
    """dw (C, KH*KW) and db (C,) of a chunk, zeroed here: one dot product per tap."""
    n_samples, C = dy.shape[0], dy.shape[1]
    L = g.size
    zero = dw.dtype.type(0)
    for c in range(C):
        db[c] = zero
        for k in range(tap_shift.size):
            dw[c, k] = zero
    for n in range(n_samples):
        for c in range(C):
            _spread(dy[n, c], g, Wq)
            total = zero
            for i in range(L):
                total += g[i]
            db[c] += total
            for k in range(tap_shift.size):
                src = xq[n, c, tap_phase[k], tap_shift[k]:tap_shift[k] + L]
                total = zero
                for i in range(L):
                    total += g[i] * src[i]
                dw[c, k] += total


@njit(**DIRECT)
def _input_grad(dy, taps, tap_phase, tap_shift, dxq, g, Wq):
    """dxq (n, C, P, Hq*Wq), zeroed here: each tap adds w * the spread gradient into its phase."""
    n_samples, C = dy.shape[0], dy.shape[1]
    L = g.size
    for n in range(n_samples):
        for c in range(C):
            _spread(dy[n, c], g, Wq)
            t = taps[c]
            _fill(dxq[n, c].reshape(-1), 0)
            for k in range(tap_shift.size):
                tap, dst = t[k], dxq[n, c, tap_phase[k], tap_shift[k]:tap_shift[k] + L]
                for i in range(L):
                    dst[i] += tap * g[i]


class Record:
    """What backward needs: the phase planes of the input, its shape and the geometry."""
    __slots__ = ("xq", "x_shape", "geometry", "has_bias")
    algorithm = "depthwise"

    def __init__(self, xq, x_shape, geometry, has_bias):
        self.xq, self.x_shape, self.geometry, self.has_bias = xq, x_shape, geometry, has_bias


_DEPTHWISE_CHUNK = 16      # samples per task


def forward(x, w, b, stride, padding, dilation):
    """y (N, C, OH, OW) and a Record; w (C, 1, KH, KW), b (C,) or None."""
    N, C = x.shape[:2]
    geo = _Geometry(x.shape, w.shape, stride, padding, dilation)
    x = np.ascontiguousarray(x)
    taps = np.ascontiguousarray(w).reshape(C, -1)
    bias = np.zeros(C, dtype=x.dtype) if b is None else np.ascontiguousarray(b)
    y = np.empty((N, C, geo.OH, geo.OW), dtype=x.dtype)
    plain = geo.phases == 1 and geo.PH == geo.PW == 0     # the planes are x itself
    xq = x.reshape(N, C, 1, geo.Hq * geo.Wq) if plain else np.empty((N, C, geo.phases, geo.Hq * geo.Wq), dtype=x.dtype)
    chunk = _balanced_chunk(N, _DEPTHWISE_CHUNK)

    def forward_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        if not plain:
            _split(x[part], xq[part], geo.PH, geo.PW, geo.SH, geo.SW, geo.Hq, geo.Wq)
        acc = _scratch("depthwise", (geo.L,), x.dtype)
        _forward(xq[part], taps, geo.tap_phase, geo.tap_shift, bias, y[part], acc, geo.Wq)

    if N:
        cores.run(forward_chunk, -(-N // chunk))
    return y, Record(xq, x.shape, geo, b is not None)


def backward(dy, record, w, input_grad):
    """(dx or None, dw, db or None)."""
    geo, xq, x_shape = record.geometry, record.xq, record.x_shape
    N, C = x_shape[:2]
    dy = np.ascontiguousarray(dy)
    taps = np.ascontiguousarray(w).reshape(C, -1)
    plain = geo.phases == 1 and geo.PH == geo.PW == 0
    dx = np.empty(x_shape, dtype=dy.dtype) if input_grad else None
    chunk = _balanced_chunk(N, _DEPTHWISE_CHUNK)

    def backward_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        g = _scratch("depthwise", (geo.L,), dy.dtype)
        dw, db = np.empty(taps.shape, dtype=dy.dtype), np.empty(C, dtype=dy.dtype)
        _weight_grad(xq[part], dy[part], geo.tap_phase, geo.tap_shift, dw, db, g, geo.Wq)
        if input_grad:
            n = dy[part].shape[0]
            dxq = dx[part].reshape(n, C, 1, geo.Hq * geo.Wq) if plain else \
                _scratch("depthwise dx", (n, C, geo.phases, geo.Hq * geo.Wq), dy.dtype)
            _input_grad(dy[part], taps, geo.tap_phase, geo.tap_shift, dxq, g, geo.Wq)
            if not plain:
                _merge(dxq, dx[part], geo.PH, geo.PW, geo.SH, geo.SW, geo.Wq)
        return dw, db

    if N:
        dw, db = _sum_in_order(cores.run(backward_chunk, -(-N // chunk)))
    else:
        dw, db = np.zeros(taps.shape, dtype=dy.dtype), np.zeros(C, dtype=dy.dtype)
    return dx, dw.reshape(w.shape), (db if record.has_bias else None)
