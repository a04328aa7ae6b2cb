"""3x3 stride-1 convolutions by Winograd's F(2x2, 3x3), alone or fused with ReLU and 2x2 max pool
(numba_conv dispatches here when numba_strategy.conv_algorithms says 'winograd')."""
import numpy as np
from numba import njit

from . import cores, numba_strategy
from .numba_common import (FAST, _balanced_chunk, _crop_padding, _input_grad, _pad_wide,
                           _scratch_planes, _sum_in_order)
from .numba_relu_pool import _first_max, _max_of_four


# A 2x2 block of a 3x3 convolution's output comes from a 4x4 block of input, and Winograd's
# algorithm gets it with 16 multiplications per input channel instead of 36:
#     Y (2x2) = A^T [ (G w G^T) * (B^T d B) ] A        (* elementwise; w 3x3, d the 4x4 input tile)
#     B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
#           [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
#           [0 -1  1  0]         [1/2 -1/2  1/2]
#           [0  1  0 -1]         [ 0    0    1 ]
# Summed over channels, each of the 16 positions of the 4x4 transformed tiles is one GEMM:
# M[k] (OC, tiles) = U[k] (OC, C) @ V[k] (C, tiles), U = G w G^T, V = B^T d B. Alone, the tiles
# cover the output (an odd-sized one is clipped, its input planes one zero row or column longer).
# Fused with the 2x2 pool that follows, the output tiles are the pool's windows: each tile becomes
# one pooled value at once, and only the tiles the pool keeps are computed (the last row and
# column of an odd-sized output are dropped by the pool). MnistCNN's second layer: 2.4x fewer
# multiply-adds than the direct sum and 3.2x fewer than the wide-GEMM path (which also computes
# the wrapped columns and the unpooled row and column). Backward runs the adjoints: the tile
# gradient Z = A g A^T (g the tile's 2x2 of dy, or dy at the pool window's winner), dU[k] = Z[k] @
# V[k].T, dV[k] = U[k].T @ Z[k], dw = G^T dU G and dx = the sum of B dV B^T over overlapping tiles.
# Every transform has only 0, +-1 and +-1/2 as
# coefficients and the code writes only the nonzero terms, so NaN reaches exactly the outputs
# whose window holds it, as in the direct sum. The values differ from the direct sum in rounding.

@njit(**FAST)
def _winograd_weights(w, U):
    """U (16, OC, C) = G w[o, c] G^T for every 3x3 filter (position k = 4*i + j of the 4x4)."""
    OC, C = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    t = np.empty((4, 3), dtype=w.dtype)
    for o in range(OC):
        for c in range(C):
            g = w[o, c]
            for b in range(3):                      # t = G g: the rows
                t[0, b] = g[0, b]
                t[1, b] = half * (g[0, b] + g[1, b] + g[2, b])
                t[2, b] = half * (g[0, b] - g[1, b] + g[2, b])
                t[3, b] = g[2, b]
            for i in range(4):                      # U = t G^T: the columns
                U[4 * i + 0, o, c] = t[i, 0]
                U[4 * i + 1, o, c] = half * (t[i, 0] + t[i, 1] + t[i, 2])
                U[4 * i + 2, o, c] = half * (t[i, 0] - t[i, 1] + t[i, 2])
                U[4 * i + 3, o, c] = t[i, 2]


@njit(**FAST)
def _winograd_weights_grad(dU, dw):
    """dw (OC, C, 3, 3) = G^T dU[:, o, c] G: the adjoint of _winograd_weights."""
    OC, C = dw.shape[0], dw.shape[1]
    half = dw.dtype.type(0.5)
    f = np.empty((3, 4), dtype=dw.dtype)
    for o in range(OC):
        for c in range(C):
            for j in range(4):                      # f = G^T dU: the rows
                u0, u1, u2, u3 = dU[j, o, c], dU[4 + j, o, c], dU[8 + j, o, c], dU[12 + j, o, c]
                f[0, j] = u0 + half * (u1 + u2)
                f[1, j] = half * (u1 - u2)
                f[2, j] = half * (u1 + u2) + u3
            for a in range(3):                      # dw = f G: the columns
                dw[o, c, a, 0] = f[a, 0] + half * (f[a, 1] + f[a, 2])
                dw[o, c, a, 1] = half * (f[a, 1] - f[a, 2])
                dw[o, c, a, 2] = half * (f[a, 1] + f[a, 2]) + f[a, 3]


@njit(cache=True, inline="always")
def _bt_rows(r0, r1, r2, r3):
    """B^T applied to a column of four values (the input transform's 1-D step)."""
    return r0 - r2, r1 + r2, r2 - r1, r1 - r3


@njit(cache=True, inline="always")
def _b_rows(v0, v1, v2, v3):
    """B applied to four values: the adjoint of _bt_rows."""
    return v0, v1 - v2 + v3, v1 + v2 - v0, -v3


@njit(**FAST)
def _winograd_input(xp, V, Wp, TH, TW):
    """V (16, C, T) = B^T d B for the 4x4 input tile d at (2*th, 2*tw) of each padded plane
    xp[n, c] (wide, row length Wp); tile t = (n*TH + th)*TW + tw. Plain scalars throughout, so
    the 16 values of a tile stay in registers."""
    N, C = xp.shape[0], xp.shape[1]
    for c in range(C):                    # c outer: V[k, c] is written in order
        for n in range(N):
            plane = xp[n, c]
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    top = 2 * th * Wp + 2 * tw
                    # B^T d: each column of the tile
                    a0, a1, a2, a3 = _bt_rows(plane[top], plane[top + Wp], plane[top + 2 * Wp], plane[top + 3 * Wp])
                    b0, b1, b2, b3 = _bt_rows(plane[top + 1], plane[top + Wp + 1], plane[top + 2 * Wp + 1], plane[top + 3 * Wp + 1])
                    c0, c1, c2, c3 = _bt_rows(plane[top + 2], plane[top + Wp + 2], plane[top + 2 * Wp + 2], plane[top + 3 * Wp + 2])
                    d0, d1, d2, d3 = _bt_rows(plane[top + 3], plane[top + Wp + 3], plane[top + 2 * Wp + 3], plane[top + 3 * Wp + 3])
                    # (B^T d) B: each row i = (a_i, b_i, c_i, d_i)
                    V[0, c, t], V[1, c, t], V[2, c, t], V[3, c, t] = _bt_rows(a0, b0, c0, d0)
                    V[4, c, t], V[5, c, t], V[6, c, t], V[7, c, t] = _bt_rows(a1, b1, c1, d1)
                    V[8, c, t], V[9, c, t], V[10, c, t], V[11, c, t] = _bt_rows(a2, b2, c2, d2)
                    V[12, c, t], V[13, c, t], V[14, c, t], V[15, c, t] = _bt_rows(a3, b3, c3, d3)


@njit(**FAST)
def _winograd_input_grad(dV, dxp, Wp, TH, TW):
    """dxp (N, C, Hp*Wp), zeroed here: the sum over tiles of B dV[:, c, t] B^T added at the tile's
    4x4 window (the adjoint of _winograd_input). Tiles overlap; each sample's are added in order."""
    N, C = dxp.shape[0], dxp.shape[1]
    for c in range(C):                    # c outer: dV[k, c] is read in order
        for n in range(N):
            plane = dxp[n, c]
            for i in range(plane.size):
                plane[i] = 0
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    # dV B^T: each row i of the 4x4 gradient
                    a0, b0, c0, d0 = _b_rows(dV[0, c, t], dV[1, c, t], dV[2, c, t], dV[3, c, t])
                    a1, b1, c1, d1 = _b_rows(dV[4, c, t], dV[5, c, t], dV[6, c, t], dV[7, c, t])
                    a2, b2, c2, d2 = _b_rows(dV[8, c, t], dV[9, c, t], dV[10, c, t], dV[11, c, t])
                    a3, b3, c3, d3 = _b_rows(dV[12, c, t], dV[13, c, t], dV[14, c, t], dV[15, c, t])
                    top = 2 * th * Wp + 2 * tw
                    for s, (e0, e1, e2, e3) in enumerate(((a0, a1, a2, a3), (b0, b1, b2, b3),
                                                          (c0, c1, c2, c3), (d0, d1, d2, d3))):
                        r0, r1, r2, r3 = _b_rows(e0, e1, e2, e3)     # B (dV B^T): each column s
                        plane[top + s] += r0
                        plane[top + Wp + s] += r1
                        plane[top + 2 * Wp + s] += r2
                        plane[top + 3 * Wp + s] += r3


@njit(**FAST)
def _winograd_output_relu_pool(M, M_row, b, y, idx, first, zero):
    """y[first + n, o, th, tw] = relu(max of the 2x2 output tile A^T M[:, o, t] A + b[o]) and idx its
    winner (0..3), with the rule of _maxpool_forward_2x2 (first maximum; a NaN wins). As in
    _relu_pool_plane, a whole row M[:, o, :] is swept assuming no NaN (_max_of_four: a loop LLVM
    vectorizes) and redone by the exact tournament if it held one."""
    OC, TH, TW = y.shape[1], y.shape[2], y.shape[3]
    per_sample = TH * TW
    n_samples = M_row // per_sample
    for o in range(OC):                   # o outer: M[k, o] is read in order
        bias = b[o]
        for n in range(n_samples):
            y_n, idx_n = y[first + n, o].reshape(per_sample), idx[first + n, o].reshape(per_sample)
            start = o * M_row + n * per_sample
            m = _rows_of_16(M, start, start + per_sample)
            saw_nan = False
            for j in range(per_sample):
                v0, v1, v2, v3 = _winograd_tile(m, j, bias)
                best, k, nan = _max_of_four(v0, v1, v2, v3)
                saw_nan |= nan
                y_n[j] = max(zero, best)
                idx_n[j] = np.int8(k)
            if not saw_nan:
                continue
            for j in range(per_sample):
                v0, v1, v2, v3 = _winograd_tile(m, j, bias)
                top_best, top_k = _first_max(v0, 0, v1, 1)
                bottom_best, bottom_k = _first_max(v2, 2, v3, 3)
                best, k = _first_max(top_best, top_k, bottom_best, bottom_k)
                y_n[j] = best if (best > zero) | (best != best) else zero
                idx_n[j] = k


@njit(**FAST)
def _winograd_output(M, M_row, b, y, first):
    """y[first + n, o] = the 2x2 output tiles A^T M[:, o, t] A + b[o], the last row and column of
    tiles clipped to an odd-sized output."""
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    per_sample = TH * TW
    n_samples = M_row // per_sample
    for o in range(OC):
        bias = b[o]
        for n in range(n_samples):
            start = o * M_row + n * per_sample
            m = _rows_of_16(M, start, start + per_sample)
            out = y[first + n, o]
            for th in range(TH):
                for tw in range(TW):
                    v0, v1, v2, v3 = _winograd_tile(m, th * TW + tw, bias)
                    out[2 * th, 2 * tw] = v0
                    if 2 * tw + 1 < OW:
                        out[2 * th, 2 * tw + 1] = v1
                    if 2 * th + 1 < OH:
                        out[2 * th + 1, 2 * tw] = v2
                        if 2 * tw + 1 < OW:
                            out[2 * th + 1, 2 * tw + 1] = v3


@njit(**FAST)
def _winograd_tile_grad(dy, Z, db, TH, TW):
    """Z (16, OC, T) = A g A^T for every output tile's gradient g (2x2, zero past an odd-sized
    output's last row or column): the rows h_i = (g_0, g_0 + g_1, g_0 - g_1, -g_1) for each of the
    tile's two columns, then the same on the columns. db[o] += the sum of dy."""
    N, OC, OH, OW = dy.shape
    zero = dy.dtype.type(0)
    for o in range(OC):                   # o outer: Z[k, o] is written in order
        total = zero
        for n in range(N):
            g = dy[n, o]
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    r, c = 2 * th, 2 * tw
                    g00 = g[r, c]
                    g01 = g[r, c + 1] if c + 1 < OW else zero
                    g10 = g[r + 1, c] if r + 1 < OH else zero
                    g11 = g[r + 1, c + 1] if (r + 1 < OH) & (c + 1 < OW) else zero
                    total += (g00 + g01) + (g10 + g11)
                    a0, a1, a2, a3 = g00, g00 + g10, g00 - g10, -g10        # column 0 of the tile
                    b0, b1, b2, b3 = g01, g01 + g11, g01 - g11, -g11        # column 1
                    Z[0, o, t], Z[1, o, t], Z[2, o, t], Z[3, o, t] = a0, a0 + b0, a0 - b0, -b0
                    Z[4, o, t], Z[5, o, t], Z[6, o, t], Z[7, o, t] = a1, a1 + b1, a1 - b1, -b1
                    Z[8, o, t], Z[9, o, t], Z[10, o, t], Z[11, o, t] = a2, a2 + b2, a2 - b2, -b2
                    Z[12, o, t], Z[13, o, t], Z[14, o, t], Z[15, o, t] = a3, a3 + b3, a3 - b3, -b3
        db[o] += total


@njit(cache=True, inline="always")
def _rows_of_16(P, start, stop):
    """The 16 planes' columns [start, stop) of P (16, plane stride): contiguous 1-D views, which
    Numba indexes without stride arithmetic (a 3-D view of the staggered planes it cannot)."""
    return (P[0, start:stop], P[1, start:stop], P[2, start:stop], P[3, start:stop],
            P[4, start:stop], P[5, start:stop], P[6, start:stop], P[7, start:stop],
            P[8, start:stop], P[9, start:stop], P[10, start:stop], P[11, start:stop],
            P[12, start:stop], P[13, start:stop], P[14, start:stop], P[15, start:stop])


@njit(cache=True, inline="always")
def _winograd_tile(m, j, bias):
    """The 2x2 output tile A^T m[:, j] A + bias, as (top left, top right, bottom left, bottom right)."""
    # A^T m: row 0 = m0 + m1 + m2, row 1 = m1 - m2 - m3 (m_i the i-th row of the 4x4), per column
    a0 = m[0][j] + m[4][j] + m[8][j]
    a1 = m[1][j] + m[5][j] + m[9][j]
    a2 = m[2][j] + m[6][j] + m[10][j]
    a3 = m[3][j] + m[7][j] + m[11][j]
    c0 = m[4][j] - m[8][j] - m[12][j]
    c1 = m[5][j] - m[9][j] - m[13][j]
    c2 = m[6][j] - m[10][j] - m[14][j]
    c3 = m[7][j] - m[11][j] - m[15][j]
    return a0 + a1 + a2 + bias, a1 - a2 - a3 + bias, c0 + c1 + c2 + bias, c1 - c2 - c3 + bias


@njit(**FAST)
def _winograd_pooled_grad(dy, y, idx, Z, db):
    """Z (16, OC, T) = A g A^T for each output tile's gradient g (2x2): dy at the window's winner
    where the ReLU let it through (y > 0 or NaN, as _relu_backward), zero elsewhere. With the
    winner at (r, s), A g A^T = g * outer(a_r, a_s), a_r = (1 - r, 1, 1 - 2r, -r): (1, 1, 1, 0) for
    the top row, (0, 1, -1, -1) for the bottom one; the same for columns. db[o] += the sum of g."""
    N, OC, TH, TW = dy.shape
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    for o in range(OC):                   # o outer: Z[k, o] is written in order
        total = zero
        for n in range(N):
            for th in range(TH):
                for tw in range(TW):
                    t = (n * TH + th) * TW + tw
                    g = dy[n, o, th, tw]                 # loaded first: a select, not a branch
                    g = zero if y[n, o, th, tw] <= zero else g
                    total += g
                    k = idx[n, o, th, tw]
                    r, s = dy.dtype.type(k >> 1), dy.dtype.type(k & 1)
                    g0, g1, g2, g3 = g * (one - r), g, g * (one - r - r), -g * r
                    s0, s2, s3 = one - s, one - s - s, -s
                    Z[0, o, t], Z[1, o, t], Z[2, o, t], Z[3, o, t] = g0 * s0, g0, g0 * s2, g0 * s3
                    Z[4, o, t], Z[5, o, t], Z[6, o, t], Z[7, o, t] = g1 * s0, g1, g1 * s2, g1 * s3
                    Z[8, o, t], Z[9, o, t], Z[10, o, t], Z[11, o, t] = g2 * s0, g2, g2 * s2, g2 * s3
                    Z[12, o, t], Z[13, o, t], Z[14, o, t], Z[15, o, t] = g3 * s0, g3, g3 * s2, g3 * s3
        db[o] += total


def _winograd_chunk(C, OC, T, N, itemsize):
    """Samples per task: at least the strategy's min_tasks tasks, at most its winograd_chunk_bytes
    of V and M, so that a chunk's transformed planes stay in L2."""
    per_sample = 16 * (C + OC) * T * itemsize
    return _balanced_chunk(N, numba_strategy.current().winograd_chunk_bytes // max(per_sample, 1))


class Tiles:
    """Where the 2x2 output tiles lie. Fused with the pool, the tiles are the pool's windows
    (TH, TW) = (OH//2, OW//2); alone, they cover the whole output, (ceil(OH/2), ceil(OW/2)), and an
    odd output needs the padded input planes one row or column longer (Hq, Wq), zero there."""

    def __init__(self, x_shape, PH, PW, pooled):
        N, C, H, W = x_shape
        OH, OW = H + 2 * PH - 2, W + 2 * PW - 2
        self.PH, self.PW, self.OH, self.OW = PH, PW, OH, OW
        self.TH, self.TW = (OH // 2, OW // 2) if pooled else (-(-OH // 2), -(-OW // 2))
        self.Hq, self.Wq = max(H + 2 * PH, 2 * self.TH + 2), max(W + 2 * PW, 2 * self.TW + 2)
        self.padded = (self.Hq, self.Wq) != (H, W)        # else the input planes are x itself

    def input_planes(self, x):
        """The array forward's chunks pad x into (N, C, Hq*Wq), or x itself as planes."""
        N, C = x.shape[0], x.shape[1]
        if self.padded:
            return np.empty((N, C, self.Hq * self.Wq), dtype=x.dtype)
        return x.reshape(N, C, self.Hq * self.Wq)


def forward(x, xq, w, bias, y, idx, tiles, zero):
    """y = the 3x3 convolution of x (and with idx, its ReLU and 2x2 pool) by Winograd F(2x2, 3x3),
    in chunks of samples on the cores; xq receives the padded input planes for backward."""
    N, C = x.shape[0], x.shape[1]
    OC = w.shape[0]
    T1 = tiles.TH * tiles.TW                                  # tiles per sample
    U = np.empty((16, OC, C), dtype=x.dtype)
    _winograd_weights(w, U)
    chunk = _winograd_chunk(C, OC, T1, N, x.dtype.itemsize)

    def forward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        T = min(chunk, N - first) * T1
        if tiles.padded:
            _pad_wide(x[part], xq[part], tiles.PH, tiles.PW, tiles.Wq)
        V = _scratch_planes("winograd V", (16, C, T), x.dtype)[1]
        _winograd_input(xq[part], V, tiles.Wq, tiles.TH, tiles.TW)
        M_planes, M = _scratch_planes("winograd M", (16, OC, T), x.dtype)
        np.matmul(U, V, out=M)
        if idx is None:
            _winograd_output(M_planes, T, bias, y, first)
        else:
            _winograd_output_relu_pool(M_planes, T, bias, y, idx, first, zero)

    if N:
        cores.run(forward_chunk, -(-N // chunk))


def backward(dy, xq, pooled, w, x_shape, tiles, input_grad):
    """Gradients of forward: (dx or None, dw, db). pooled is forward's (y, idx, OH, OW)
    when it was fused with ReLU and pool, else None."""
    N, C, H, W = x_shape
    OC = w.shape[0]
    T1 = tiles.TH * tiles.TW
    U = np.empty((16, OC, C), dtype=dy.dtype)
    _winograd_weights(w, U)
    U_t = U.transpose(0, 2, 1)
    chunk = _winograd_chunk(C, OC, T1, N, dy.dtype.itemsize)
    dxq = np.empty(xq.shape, dtype=dy.dtype) if input_grad else None
    dx = np.empty(x_shape, dtype=dy.dtype) if input_grad and tiles.padded else None

    def backward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        T = min(chunk, N - first) * T1
        db = np.zeros(OC, dtype=dy.dtype)
        Z = _scratch_planes("winograd Z", (16, OC, T), dy.dtype)[1]
        if pooled is None:
            _winograd_tile_grad(dy[part], Z, db, tiles.TH, tiles.TW)
        else:
            _winograd_pooled_grad(dy[part], pooled[0][part], pooled[1][part], Z, db)
        V = _scratch_planes("winograd V", (16, C, T), dy.dtype)[1]
        _winograd_input(xq[part], V, tiles.Wq, tiles.TH, tiles.TW)
        dU = np.matmul(Z, V.transpose(0, 2, 1))
        if input_grad:
            dV = np.matmul(U_t, Z, out=V)                      # V is not needed any more
            _winograd_input_grad(dV, dxq[part], tiles.Wq, tiles.TH, tiles.TW)
            if dx is not None:
                _crop_padding(dxq[part], dx[part], tiles.PH, tiles.PW, tiles.Wq)
        return dU, db

    if not N:
        return _input_grad(dxq, dx, x_shape), np.zeros(w.shape, dtype=dy.dtype), np.zeros(OC, dtype=dy.dtype)
    dU, db = _sum_in_order(cores.run(backward_chunk, -(-N // chunk)))
    dw = np.empty(w.shape, dtype=dy.dtype)
    _winograd_weights_grad(dU, dw)
    return _input_grad(dxq, dx, x_shape), dw, db
