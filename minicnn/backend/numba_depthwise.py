"""Depthwise convolutions on the Numba backend (groups = in_channels = out_channels): each output
plane is its own input plane's cross-correlation with one KH x KW filter, so there is no sum over
channels to hand to a GEMM, and im2col would build one tiny product per channel.

    y[n, c, oh, ow] = b[c] + sum over kh, kw of w[c, 0, kh, kw] * xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]

The padded plane is split into SH*SW phase planes, phase (a, b) holding the pixels at rows a, a + SH,
... and columns b, b + SW, ... (at stride 1: the padded plane itself). Tap (kh, kw) reads phase
(kh*DH % SH, kw*DW % SW) shifted by (kh*DH // SH, kw*DW // SW), so a strided convolution is a
stride-1 one over the phases. In the "wide" layout of numba_conv (a phase plane of row length Wq
read as one flat vector) output (oh, ow) sits at i = oh*Wq + ow and every tap's product is one long
vectorized sweep over i (for a 3x3 filter the nine are summed in registers, one store per output);
the few wrapped positions at the end of each wide row are computed and dropped. Backward runs the
adjoints: the output gradient spread into a zeroed wide plane, one dot product per tap for the
filter, shifted multiply-adds into the phases for the input, the phases merged back. Chunks of
samples are tasks on the cores; a task splits and sweeps one sample at a time, so that the sample's
phase planes are still in L2 when they are read. Each chunk's weight and bias gradients are added in
chunk order, so the bits do not depend on the thread count.
"""
import numpy as np
from numba import njit, uint64

from . import cores
from .numba_common import DIRECT, DOT, FAST, _all_finite, _balanced_chunk, _copy, _fill, _scratch, _sum_in_order
from .simd import merge_pairs, split_pairs


class _Geometry:
    """The phases (SH*SW planes of Hq x Wq, flat one after the other), the output (OH, OW), its wide
    length L = (OH - 1)*Wq + OW, where each tap's window starts in the flat phases (its phase's
    plane, shifted inside it), and where each input pixel lies in them (row_at, col_at)."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation):
        H, W = x_shape[2:]
        KH, KW = w_shape[2:]
        (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
        Hp, Wp = H + 2 * PH, W + 2 * PW
        self.OH = (Hp - DH * (KH - 1) - 1) // SH + 1
        self.OW = (Wp - DW * (KW - 1) - 1) // SW + 1
        Hq, self.Wq = -(-Hp // SH), -(-Wp // SW)
        self.SW = SW
        plane = Hq * self.Wq
        self.size = SH * SW * plane                           # of a plane's flat phases
        self.plain = SH == SW == 1 and PH == PW == 0          # the phase plane is the image itself
        self.L = (self.OH - 1) * self.Wq + self.OW
        phase = [(kh * DH % SH) * SW + kw * DW % SW for kh in range(KH) for kw in range(KW)]
        shift = [(kh * DH // SH) * self.Wq + kw * DW // SW for kh in range(KH) for kw in range(KW)]
        self.tap_start = np.array([p * plane + d for p, d in zip(phase, shift)], dtype=np.uint64)
        # pixel (h, w) lies at row_at[h] + col_at[w] of its plane's flat phases
        self.row_at = np.array([((h + PH) % SH) * SW * plane + (h + PH) // SH * self.Wq for h in range(H)],
                               dtype=np.int64)
        self.col_at = np.array([((w + PW) % SW) * plane + (w + PW) // SW for w in range(W)], dtype=np.int64)


@njit(**FAST)
def _split(x, xq, row_at, col_at, SW):
    """xq (n, C, SH*SW*Hq*Wq): each padded plane of x (n, C, H, W), C-contiguous, as its phase planes
    (zeros in the padding and past the plane's end). Pixel (h, w) goes to flat place row_at[h] +
    col_at[w] of its sample-channel's phases: at stride 1 a row is one copy, at stride 2 its even and
    odd pixels go by vector shuffles (simd.split_pairs: 1.8x faster than pixel by pixel), other
    strides read the tables pixel by pixel. (One function per case: with the shuffles' code in the
    same function the stride-1 copies ran 2.5x slower.)"""
    if SW == 1:
        _split_rows(x, xq, row_at, col_at[0])
    elif SW == 2 and x.shape[3] > 1:
        _split_by_pairs(x, xq, row_at, col_at[0], col_at[1])
    else:
        _split_by_table(x, xq, row_at, col_at)


@njit(**FAST)
def _split_rows(x, xq, row_at, col):
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            dst = xq[n, c]
            _fill(dst, 0)
            for h in range(H):
                start = row_at[h] + col
                _copy(dst[start:start + W], x[n, c, h])


@njit(**FAST)
def _split_by_pairs(x, xq, row_at, even, odd):
    N, C, H, W = x.shape
    size = xq.shape[2]
    for n in range(N):
        for c in range(C):
            _fill(xq[n, c], 0)
            plane = (n * C + c) * size
            for h in range(H):
                split_pairs(xq, plane + row_at[h] + even, plane + row_at[h] + odd, x, ((n * C + c) * H + h) * W, W)


@njit(**FAST)
def _split_by_table(x, xq, row_at, col_at):
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            dst = xq[n, c]
            _fill(dst, 0)
            for h in range(H):
                row, base = x[n, c, h], row_at[h]
                for w in range(W):
                    dst[base + col_at[w]] = row[w]


@njit(**FAST)
def _merge(dxq, dx, row_at, col_at, SW):
    """dx (n, C, H, W), C-contiguous: the pixels of the flat phases dxq (n, C, SH*SW*Hq*Wq) back in
    place (the adjoint of _split restricted to the image: each pixel lies in exactly one phase), as
    _split."""
    if SW == 1:
        _merge_rows(dxq, dx, row_at, col_at[0])
    elif SW == 2 and dx.shape[3] > 1:
        _merge_by_pairs(dxq, dx, row_at, col_at[0], col_at[1])
    else:
        _merge_by_table(dxq, dx, row_at, col_at)


@njit(**FAST)
def _merge_rows(dxq, dx, row_at, col):
    N, C, H, W = dx.shape
    for n in range(N):
        for c in range(C):
            src = dxq[n, c]
            for h in range(H):
                start = row_at[h] + col
                _copy(dx[n, c, h], src[start:start + W])


@njit(**FAST)
def _merge_by_pairs(dxq, dx, row_at, even, odd):
    N, C, H, W = dx.shape
    size = dxq.shape[2]
    for n in range(N):
        for c in range(C):
            plane = (n * C + c) * size
            for h in range(H):
                merge_pairs(dx, ((n * C + c) * H + h) * W, dxq, plane + row_at[h] + even, plane + row_at[h] + odd, W)


@njit(**FAST)
def _merge_by_table(dxq, dx, row_at, col_at):
    N, C, H, W = dx.shape
    for n in range(N):
        for c in range(C):
            src = dxq[n, c]
            for h in range(H):
                row, base = dx[n, c, h], row_at[h]
                for w in range(W):
                    row[w] = src[base + col_at[w]]


# Indices into the phases are unsigned (tap_start is uint64, first + uint64(i)): for a signed index
# Numba adds a test for negative ones that stops vectorization, and a view per tap instead costs more
# than a 7x7 plane's sums (nine views a plane).

@njit(**DIRECT)
def _forward(xq, taps, tap_start, b, y, acc, Wq):
    """y (n, C, OH, OW) from the flat phase planes xq (n, C, P*Hq*Wq); taps (C, KH*KW); acc (L,)
    scratch. Wide output i is b + taps[0] * xq[.., tap_start[0] + i] + taps[1] * ..., added left to
    right; a 3x3 filter's nine products are summed in registers (one store per output, not nine),
    other sizes sweep acc once per tap."""
    n_samples, C = y.shape[0], y.shape[1]
    OH, OW = y.shape[2], y.shape[3]
    L = acc.size
    for n in range(n_samples):
        for c in range(C):
            src, t = xq[n, c], taps[c]
            if tap_start.size == 9:
                _nine_taps(src, t, tap_start, b[c], acc)
            else:
                _fill(acc, b[c])
                for k in range(tap_start.size):
                    tap, first = t[k], tap_start[k]
                    for i in range(L):
                        acc[i] += tap * src[first + uint64(i)]
            out = y[n, c]
            for oh in range(OH):
                _copy(out[oh], acc[oh * Wq:oh * Wq + OW])


@njit(cache=True, inline="always")
def _nine_taps(src, t, start, bias, acc):
    """acc[i] = bias + t[0] * src[start[0] + i] + ... + t[8] * src[start[8] + i], left to right."""
    t0, t1, t2, t3, t4, t5, t6, t7, t8 = t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = (start[0], start[1], start[2], start[3], start[4], start[5], start[6],
                                          start[7], start[8])
    for j in range(acc.size):
        i = uint64(j)
        v = bias + t0 * src[s0 + i]
        v += t1 * src[s1 + i]
        v += t2 * src[s2 + i]
        v += t3 * src[s3 + i]
        v += t4 * src[s4 + i]
        v += t5 * src[s5 + i]
        v += t6 * src[s6 + i]
        v += t7 * src[s7 + i]
        v += t8 * src[s8 + i]
        acc[i] = v


@njit(cache=True, inline="always")
def _spread(dy, g, Wq):
    """g (L,): the output gradient dy (OH, OW) at its places in the wide plane, zero elsewhere."""
    _fill(g, 0)
    for oh in range(dy.shape[0]):
        _copy(g[oh * Wq:oh * Wq + dy.shape[1]], dy[oh])


@njit(**DOT)
def _weight_grad(xq, dy, tap_start, dw, db, g, Wq):
    """dw (C, KH*KW) and db (C,) of a chunk, zeroed here: one dot product per tap."""
    n_samples, C = dy.shape[0], dy.shape[1]
    L = g.size
    zero = dw.dtype.type(0)
    for c in range(C):
        db[c] = zero
        for k in range(tap_start.size):
            dw[c, k] = zero
    for n in range(n_samples):
        for c in range(C):
            _spread(dy[n, c], g, Wq)
            total = zero
            for i in range(L):
                total += g[i]
            db[c] += total
            src = xq[n, c]
            for k in range(tap_start.size):
                first = tap_start[k]
                total = zero
                for i in range(L):
                    total += g[i] * src[first + uint64(i)]
                dw[c, k] += total


@njit(**DIRECT)
def _input_grad(dy, taps, tap_start, dxq, g, Wq):
    """dxq (n, C, P*Hq*Wq), zeroed here: each tap adds w * the spread gradient into its window."""
    n_samples, C = dy.shape[0], dy.shape[1]
    L = g.size
    for n in range(n_samples):
        for c in range(C):
            _spread(dy[n, c], g, Wq)
            t, dst = taps[c], dxq[n, c]
            _fill(dst, 0)
            for k in range(tap_start.size):
                tap, first = t[k], tap_start[k]
                for i in range(L):
                    dst[first + uint64(i)] += tap * g[i]


@njit(**FAST)
def _forward_by_sample(x, taps, tap_start, b, y, xq, acc, row_at, col_at, SW, Wq):
    """_forward a sample at a time, its phase planes xq (1, C, P*Hq*Wq) split just before: a
    sample's planes stay in L2 between the split and the sweeps (a chunk's did not)."""
    for n in range(y.shape[0]):
        _split(x[n:n + 1], xq, row_at, col_at, SW)
        _forward(xq, taps, tap_start, b, y[n:n + 1], acc, Wq)


@njit(**FAST)
def _backward_by_sample(x, dy, taps, tap_start, dw, db, dx, xq, dxq, g, row_at, col_at, SW, Wq, input_grad):
    """_weight_grad and _input_grad a sample at a time (dw, db summed over the samples in order),
    the sample's phases split and its input-gradient phases merged around them, all in L2."""
    dw_n, db_n = np.empty_like(dw), np.empty_like(db)
    for n in range(dy.shape[0]):
        _split(x[n:n + 1], xq, row_at, col_at, SW)
        _weight_grad(xq, dy[n:n + 1], tap_start, dw_n if n else dw, db_n if n else db, g, Wq)
        if n:
            dw += dw_n
            db += db_n
        if input_grad:
            _input_grad(dy[n:n + 1], taps, tap_start, dxq, g, Wq)
            _merge(dxq, dx[n:n + 1], row_at, col_at, SW)


class Record:
    """What backward needs: the input (its phase planes are made again, a sample at a time, rather
    than kept: a fresh array of them each step cost more in page faults than splitting twice), the
    geometry and whether there is a bias."""
    __slots__ = ("x", "geometry", "has_bias")
    algorithm = "depthwise"

    def __init__(self, x, geometry, has_bias):
        self.x, self.geometry, self.has_bias = x, geometry, has_bias


_DEPTHWISE_CHUNK = 16      # samples per task


def _flat(x):
    """x (n, C, H, W) as (n, C, H*W): the phases of a plane that needs no padding and no split."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def forward(x, w, b, stride, padding, dilation):
    """y (N, C, OH, OW) and a Record; w (C, 1, KH, KW), b (C,) or None. None when x holds inf or NaN
    (numba_conv then takes the im2col path): each task checks its own samples just before it reads
    them, instead of the caller making a pass over all of x first (MobileNetMNIST's inference spent
    13 % of its time there, on one thread)."""
    N, C = x.shape[:2]
    geo = _Geometry(x.shape, w.shape, stride, padding, dilation)
    x = np.ascontiguousarray(x)
    taps = np.ascontiguousarray(w).reshape(C, -1)
    bias = np.zeros(C, dtype=x.dtype) if b is None else np.ascontiguousarray(b)
    y = np.empty((N, C, geo.OH, geo.OW), dtype=x.dtype)
    chunk = _balanced_chunk(N, _DEPTHWISE_CHUNK)

    def forward_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        if not _all_finite(x[part].reshape(-1)):
            return False
        acc = _scratch("depthwise", (geo.L,), x.dtype)
        if geo.plain:
            _forward(_flat(x[part]), taps, geo.tap_start, bias, y[part], acc, geo.Wq)
        else:
            xq = _scratch("depthwise phases", (1, C, geo.size), x.dtype)
            _forward_by_sample(x[part], taps, geo.tap_start, bias, y[part], xq, acc, geo.row_at, geo.col_at, geo.SW,
                               geo.Wq)
        return True

    if N and not all(cores.run(forward_chunk, -(-N // chunk))):
        return None
    return y, Record(x, geo, b is not None)


def backward(dy, record, w, input_grad):
    """(dx or None, dw, db or None)."""
    geo, x = record.geometry, record.x
    N, C = x.shape[:2]
    dy = np.ascontiguousarray(dy)
    taps = np.ascontiguousarray(w).reshape(C, -1)
    dx = np.empty(x.shape, dtype=dy.dtype) if input_grad else None
    chunk = _balanced_chunk(N, _DEPTHWISE_CHUNK)

    def backward_chunk(i):
        part = slice(i * chunk, (i + 1) * chunk)
        g = _scratch("depthwise", (geo.L,), dy.dtype)
        dw, db = np.empty(taps.shape, dtype=dy.dtype), np.empty(C, dtype=dy.dtype)
        if geo.plain:
            _weight_grad(_flat(x[part]), dy[part], geo.tap_start, dw, db, g, geo.Wq)
            if input_grad:
                _input_grad(dy[part], taps, geo.tap_start, _flat(dx[part]), g, geo.Wq)
        else:
            shape = (1, C, geo.size)
            xq, dxq = _scratch("depthwise phases", shape, dy.dtype), _scratch("depthwise dx", shape, dy.dtype)
            dx_part = dx[part] if input_grad else np.empty((0,) + x.shape[1:], dy.dtype)
            _backward_by_sample(x[part], dy[part], taps, geo.tap_start, dw, db, dx_part, xq, dxq, g,
                                geo.row_at, geo.col_at, geo.SW, geo.Wq, input_grad)
        return dw, db

    if N:
        dw, db = _sum_in_order(cores.run(backward_chunk, -(-N // chunk)))
    else:
        dw, db = np.zeros(taps.shape, dtype=dy.dtype), np.zeros(C, dtype=dy.dtype)
    return dx, dw.reshape(w.shape), (db if record.has_bias else None)
