"""3x3 stride-1 convolutions by register-blocked direct sums (numba_conv dispatches here when
numba_strategy.conv_algorithms says 'blocked').

The wide layout of numba_conv: a padded input plane of row length Wp read as one flat vector, output
pixel (oh, ow) at i = oh*Wp + ow, and tap (kh, kw) reading xp[i + kh*Wp + kw] (positions ow >= OW
wrap into the next row: computed, never used). Forward keeps a block of OB = 8 output channels by
PB = 32 pixels (two 512-bit vectors of float32 per channel, 16 vectors) in registers while it runs
through all input channels and taps: for each (c, tap) two vector loads of x and 8 broadcast
weights feed 16 fused multiply-adds, and the block is stored once at the end. Winograd's F(2x2, 3x3)
does 2.25x fewer multiplications, but for 16-32 channels its transforms cost more than the
multiplications it saves, and its 16 small GEMMs (K = C) run BLAS below half speed.

    xp   (n, C, P)          padded input planes, P >= blocks*PB + 2*Wp + 2 (slack zeroed)
    w8   (OCp/OB, C, 9, OB) the filters, OB output channels side by side (zero past OC)
    out  (n, OCp, blocks*PB) the wide output, cropped into y with the bias

Backward:
    dx   is the same kernel run on dy: dxp[c, j0 + j] = sum over o, taps of w[o, c, 8 - tap] *
         G[o, j + shift(tap)], where shift(kh, kw) = kh*Wp + kw and G (n, OC, Pg) holds dy in the
         wide layout S = 2*Wp + 2 - j0 positions late (zero elsewhere); j0 = PH*Wp + PW, the first
         position of the padded planes that dx keeps (at most 2*Wp + 2).
    dw   dw[o, c, tap] = sum over samples and i of G[o, S + i] * xp[c, i + shift(tap)]: two output
         channels' nine taps (18 vectors of lane sums) stay in registers through a chunk's
         samples; each is then summed over its lanes in a fixed order.
The kernels are LLVM IR vector code (llvmlite, as in simd.py): 512-bit vectors whatever width LLVM
prefers for its own vectorizer (256 on these Xeons), split into two 256-bit halves on a CPU
without AVX-512. Multiply-adds are fused; sums run in a fixed order, so the bits do not depend on
the threads. Float64 runs the same code with half the lanes per vector (PB = 16).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from . import cores, numba_strategy
from .numba_common import FAST, _balanced_chunk, _pad_wide, _scratch, _sum_in_order

OB = 8                  # output channels of a block (the kernels are written for 8)
VECTOR_BYTES = 64       # 512-bit vectors
PB32, PB64 = 2 * VECTOR_BYTES // 4, 2 * VECTOR_BYTES // 8    # pixels of a block: two vectors


def pixels_per_block(dtype):
    return PB32 if np.dtype(dtype).itemsize == 4 else PB64


# ---------------------------------------------------------------- the kernels in LLVM IR

class _Vectors:
    """IR for full-width vectors of the arrays' float dtype, read and written at element offsets."""

    def __init__(self, context, builder, dtype):
        self.builder = builder
        self.scalar = context.get_data_type(dtype)
        self.itemsize = dtype.bitwidth // 8
        self.lanes = VECTOR_BYTES // self.itemsize
        self.vector = ir.VectorType(self.scalar, self.lanes)
        self.zeros = ir.Constant(self.vector, [0.0] * self.lanes)
        name = f"v{self.lanes}f{dtype.bitwidth}"
        self._fma = builder.module.declare_intrinsic(f"llvm.fma.{name}",
                                                     fnty=ir.FunctionType(self.vector, [self.vector] * 3))

    def at(self, data, offset):
        return self.builder.gep(data, [offset])

    def load(self, data, offset):
        pointer = self.builder.bitcast(self.at(data, offset), self.vector.as_pointer())
        return self.builder.load(pointer, align=self.itemsize)

    def store(self, vector, data, offset):
        pointer = self.builder.bitcast(self.at(data, offset), self.vector.as_pointer())
        self.builder.store(vector, pointer, align=self.itemsize)

    def fma(self, a, b, c):
        return self.builder.call(self._fma, [a, b, c])

    def splat(self, scalar):
        i32 = ir.IntType(32)
        lane0 = self.builder.insert_element(ir.Constant(self.vector, ir.Undefined), scalar, ir.Constant(i32, 0))
        return self.builder.shuffle_vector(lane0, ir.Constant(self.vector, ir.Undefined),
                                           ir.Constant(ir.VectorType(i32, self.lanes), [0] * self.lanes))

    def lane_sum(self, vector):
        """The sum of the lanes, halving in a fixed order: (lanes 0..h-1) + (lanes h..2h-1), ..."""
        i32 = ir.IntType(32)
        width = self.lanes
        while width > 1:
            width //= 2
            low = self.builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(i32, width), list(range(width))))
            high = self.builder.shuffle_vector(vector, vector,
                                               ir.Constant(ir.VectorType(i32, width), list(range(width, 2 * width))))
            vector = self.builder.fadd(low, high)
        return self.builder.extract_element(vector, ir.Constant(i32, 0))


def _float_arrays(*arrays):
    return all(isinstance(a, types.Array) and a.dtype == arrays[0].dtype for a in arrays) \
        and arrays[0].dtype in (types.float32, types.float64)


def _int64(context, builder, values, value_types):
    return [context.cast(builder, v, t, types.int64) for v, t in zip(values, value_types)]


def _data(context, builder, array_type, array):
    return context.make_array(array_type)(context, builder, array).data


@intrinsic
def _block_sums(typingctx, out, out_at, out_stride, x, x_at, x_stride, w, w_at, C, Wp):
    """out[out_at + o*out_stride:][:PB] = the sum over c < C and the nine taps of
    w[w_at + (c*9 + tap)*OB + o] * x[x_at + c*x_stride + kh*Wp + kw:][:PB], for o < OB."""
    if not _float_arrays(out, x, w):
        return None

    def codegen(context, builder, signature, args):
        (out_t, _, _, x_t, _, _, w_t, _, _, _) = signature.args
        vec = _Vectors(context, builder, out_t.dtype)
        out_at, out_stride, x_at, x_stride, w_at, n_channels, Wp_ = _int64(
            context, builder, [args[i] for i in (1, 2, 4, 5, 7, 8, 9)], [signature.args[i] for i in (1, 2, 4, 5, 7, 8, 9)])
        out_data, x_data, w_data = (_data(context, builder, t, a) for t, a in ((out_t, args[0]), (x_t, args[3]),
                                                                               (w_t, args[6])))
        int64 = ir.IntType(64)
        const = lambda v: ir.Constant(int64, v)                                      # noqa: E731
        sums = [[_slot(builder, vec.zeros) for _ in range(2)] for _ in range(OB)]
        shifts = [builder.add(builder.mul(const(kh), Wp_), const(kw)) for kh in range(3) for kw in range(3)]
        with _for_range(builder, n_channels) as c:
            x_c = builder.add(x_at, builder.mul(c, x_stride))
            w_c = builder.add(w_at, builder.mul(c, const(9 * OB)))
            for tap in range(9):
                at = builder.add(x_c, shifts[tap])
                v0, v1 = vec.load(x_data, at), vec.load(x_data, builder.add(at, const(vec.lanes)))
                for o in range(OB):
                    weight = vec.splat(builder.load(vec.at(w_data, builder.add(w_c, const(tap * OB + o)))))
                    builder.store(vec.fma(weight, v0, builder.load(sums[o][0])), sums[o][0])
                    builder.store(vec.fma(weight, v1, builder.load(sums[o][1])), sums[o][1])
        for o in range(OB):
            row = builder.add(out_at, builder.mul(const(o), out_stride))
            vec.store(builder.load(sums[o][0]), out_data, row)
            vec.store(builder.load(sums[o][1]), out_data, builder.add(row, const(vec.lanes)))
        return context.get_dummy_value()

    return types.void(out, out_at, out_stride, x, x_at, x_stride, w, w_at, C, Wp), codegen


@intrinsic
def _pair_dots(typingctx, dw, dw_at, dw_stride, g, g_at, g_stride, g_sample, x, x_at, x_sample, n, n_vectors, Wp):
    """For o in (0, 1) and the nine taps: dw[dw_at + o*dw_stride + tap] = the sum over samples
    s < n and vectors v < n_vectors of g[g_at + o*g_stride + s*g_sample + v*lanes:][:lanes] .
    x[x_at + s*x_sample + v*lanes + kh*Wp + kw:][:lanes]: 18 vectors of lane sums in registers
    throughout, each summed over its lanes at the end."""
    if not _float_arrays(dw, g, x):
        return None

    def codegen(context, builder, signature, args):
        dw_t, g_t, x_t = signature.args[0], signature.args[3], signature.args[7]
        vec = _Vectors(context, builder, dw_t.dtype)
        idx = (1, 2, 4, 5, 6, 8, 9, 10, 11, 12)
        dw_at, dw_stride, g_at, g_stride, g_sample, x_at, x_sample, n_samples, n_vectors, Wp_ = _int64(
            context, builder, [args[i] for i in idx], [signature.args[i] for i in idx])
        dw_data, g_data, x_data = (_data(context, builder, t, a) for t, a in ((dw_t, args[0]), (g_t, args[3]),
                                                                                (x_t, args[7])))
        int64 = ir.IntType(64)
        const = lambda v: ir.Constant(int64, v)                                      # noqa: E731
        sums = [[_slot(builder, vec.zeros) for _ in range(9)] for _ in range(2)]
        shifts = [builder.add(builder.mul(const(kh), Wp_), const(kw)) for kh in range(3) for kw in range(3)]
        with _for_range(builder, n_samples) as s:
            g_s = builder.add(g_at, builder.mul(s, g_sample))
            x_s = builder.add(x_at, builder.mul(s, x_sample))
            with _for_range(builder, n_vectors) as v:
                step = builder.mul(v, const(vec.lanes))
                d0 = vec.load(g_data, builder.add(g_s, step))
                d1 = vec.load(g_data, builder.add(builder.add(g_s, g_stride), step))
                x_v = builder.add(x_s, step)
                for tap in range(9):
                    xv = vec.load(x_data, builder.add(x_v, shifts[tap]))
                    builder.store(vec.fma(d0, xv, builder.load(sums[0][tap])), sums[0][tap])
                    builder.store(vec.fma(d1, xv, builder.load(sums[1][tap])), sums[1][tap])
        for o in range(2):
            row = builder.add(dw_at, builder.mul(const(o), dw_stride))
            for tap in range(9):
                builder.store(vec.lane_sum(builder.load(sums[o][tap])), vec.at(dw_data, builder.add(row, const(tap))))
        return context.get_dummy_value()

    return types.void(dw, dw_at, dw_stride, g, g_at, g_stride, g_sample, x, x_at, x_sample, n, n_vectors, Wp), codegen


def _slot(builder, value):
    """A stack slot holding value, in the function's entry block (LLVM keeps it in a register)."""
    return cgutils.alloca_once_value(builder, value)


class _for_range:
    """cgutils.for_range(builder, count), entered as its loop index."""

    def __init__(self, builder, count):
        self.loop = cgutils.for_range(builder, count)

    def __enter__(self):
        return self.loop.__enter__().index

    def __exit__(self, *exc):
        return self.loop.__exit__(*exc)


# ---------------------------------------------------------------- the kernels over a chunk of samples

@njit(**FAST)
def _block_conv(xp, w8, out, Wp, n_blocks, PB):
    """out (n, OCp, n_blocks*PB) = the wide 3x3 sums of the planes xp (n, C, P) by w8 (OCp/OB, C, 9, OB),
    sample by sample (its planes stay in the cache for all its output blocks)."""
    n, C, P = xp.shape
    OCp, Q = out.shape[1], out.shape[2]
    for s in range(n):
        for ob in range(w8.shape[0]):
            for block in range(n_blocks):
                _block_sums(out, (s * OCp + ob * OB) * Q + block * PB, Q, xp, s * C * P + block * PB, P,
                            w8, ob * C * 9 * OB, C, Wp)


@njit(**FAST)
def _crop_wide(out, b, y, Wp, first):
    """y[first + s, o, oh, :] = out[s, o, oh*Wp:][:OW] + b[o]."""
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for s in range(out.shape[0]):
        for o in range(OC):
            bias = b[o]
            for oh in range(OH):
                src, dst = out[s, o, oh * Wp:oh * Wp + OW], y[first + s, o, oh]
                for i in range(OW):
                    dst[i] = src[i] + bias


@njit(**FAST)
def _widen_late(dy, G, Wp, S):
    """G (n, OCe, Pg) = dy (n, OC, OH, OW) in the wide layout S positions late, zero elsewhere
    (channels past OC included)."""
    n, OC, OH, OW = dy.shape
    for s in range(n):
        for o in range(G.shape[1]):
            plane = G[s, o]
            for i in range(plane.size):
                plane[i] = 0
            if o < OC:
                for oh in range(OH):
                    dst, src = plane[S + oh * Wp:S + oh * Wp + OW], dy[s, o, oh]
                    for i in range(OW):
                        dst[i] = src[i]


@njit(**FAST)
def _weight_grad(G, xp, dw, S, Wp, n_vectors):
    """dw (OCe, C, 9) = the sums over this chunk's samples of G[:, o, S + i] * xp[:, c, i + shift(tap)],
    two output channels at a time."""
    n, OCe, Pg = G.shape
    C, P = xp.shape[1], xp.shape[2]
    for pair in range(OCe // 2):
        for c in range(C):
            _pair_dots(dw, (2 * pair * C + c) * 9, C * 9, G, 2 * pair * Pg + S, Pg, OCe * Pg,
                       xp, c * P, C * P, n, n_vectors, Wp)


@njit(**FAST)
def _crop_input_grad(out, dx, D, Wp, first):
    """dx[first + s, c, h, :] = out[s, c, D + h*Wp:][:W]: the padded planes' interior."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    for s in range(out.shape[0]):
        for c in range(C):
            for h in range(H):
                start = D + h * Wp
                src, dst = out[s, c, start:start + W], dx[first + s, c, h]
                for i in range(W):
                    dst[i] = src[i]


# ---------------------------------------------------------------- forward and backward

class Geometry:
    """The planes' sizes for x_shape, padding and dtype (see the module's docstring)."""

    def __init__(self, x_shape, PH, PW, dtype):
        N, C, H, W = x_shape
        self.PH, self.PW = PH, PW
        self.Hp, self.Wp = H + 2 * PH, W + 2 * PW
        self.OH, self.OW = self.Hp - 2, self.Wp - 2
        self.L = (self.OH - 1) * self.Wp + self.OW                 # the wide output of a sample
        self.PB = pixels_per_block(dtype)
        self.lanes = self.PB // 2
        self.blocks = -(-self.L // self.PB)
        self.P = self.blocks * self.PB + 2 * self.Wp + 2           # an input plane and its slack
        self.vectors = -(-self.L // self.lanes)
        # dx: the padded planes' interior spans [j0 + D, j0 + D + (H - 1)*Wp + W); the sums start
        # at j0 (D = 0 unless the padding passes 2), so dy sits S = 2*Wp + 2 - j0 positions into G
        self.j0 = min(PH * self.Wp + PW, 2 * self.Wp + 2)
        self.D = PH * self.Wp + PW - self.j0
        self.S = 2 * self.Wp + 2 - self.j0
        self.dx_blocks = -(-(self.D + (H - 1) * self.Wp + W) // self.PB)
        self.Pg = max(self.dx_blocks * self.PB + 2 * self.Wp + 2, self.S + self.vectors * self.lanes)


def _arranged(w9, out_channels, in_channels):
    """Filters w9 (O, I, 9) as (out_channels/OB, in_channels, 9, OB), zero past O and I."""
    O, I = w9.shape[:2]
    padded = np.zeros((out_channels, in_channels, 9), dtype=w9.dtype)
    padded[:O, :I] = w9
    return np.ascontiguousarray(padded.reshape(out_channels // OB, OB, in_channels, 9).transpose(0, 2, 3, 1))


def _chunk(N, per_sample_bytes):
    return _balanced_chunk(N, numba_strategy.current().rows_chunk_bytes // max(per_sample_bytes, 1))


def forward(x, w, b, padding):
    """y (N, OC, OH, OW) of the 3x3 stride-1 convolution, and the padded planes xp (N, C, P) that
    backward reads."""
    N, C, H, W = x.shape
    OC = w.shape[0]
    g = Geometry(x.shape, padding[0], padding[1], x.dtype)
    OCp = -(-OC // OB) * OB
    w8 = _arranged(w.reshape(OC, C, 9), OCp, C)
    bias = np.zeros(OC, dtype=x.dtype) if b is None else b
    xp = np.empty((N, C, g.P), dtype=x.dtype)
    y = np.empty((N, OC, g.OH, g.OW), dtype=x.dtype)
    chunk = _chunk(N, (C * g.P + OCp * g.blocks * g.PB) * x.dtype.itemsize)

    def forward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        n = min(chunk, N - first)
        _pad_wide(x[part], xp[part], g.PH, g.PW, g.Wp)
        out = _scratch("blocked out", (n, OCp, g.blocks * g.PB), x.dtype)
        _block_conv(xp[part], w8, out, g.Wp, g.blocks, g.PB)
        _crop_wide(out, bias, y, g.Wp, first)

    if N:
        cores.run(forward_chunk, -(-N // chunk))
    return y, xp


def backward(dy, xp, w, x_shape, padding, input_grad, has_bias):
    """(dx or None, dw, db or None) of forward, from dy (N, OC, OH, OW) and forward's planes xp."""
    N, C, H, W = x_shape
    OC = w.shape[0]
    g = Geometry(x_shape, padding[0], padding[1], dy.dtype)
    OCe, Cp = OC + OC % 2, -(-C // OB) * OB                       # dw in pairs of channels; dx in blocks
    flipped = _arranged(w.reshape(OC, C, 9)[:, :, ::-1].transpose(1, 0, 2), Cp, OCe) if input_grad else None
    dy = np.ascontiguousarray(dy)
    dx = np.empty(x_shape, dtype=dy.dtype) if input_grad else None
    chunk = _chunk(N, (OCe * g.Pg + C * g.P + Cp * g.dx_blocks * g.PB) * dy.dtype.itemsize)

    def backward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        n = min(chunk, N - first)
        G = _scratch("blocked dy", (n, OCe, g.Pg), dy.dtype)
        _widen_late(dy[part], G, g.Wp, g.S)
        dw = np.empty((OCe, C, 9), dtype=dy.dtype)
        _weight_grad(G, xp[part], dw, g.S, g.Wp, g.vectors)
        db = dy[part].sum(axis=(0, 2, 3)) if has_bias else np.zeros(0, dtype=dy.dtype)
        if input_grad:
            out = _scratch("blocked dx", (n, Cp, g.dx_blocks * g.PB), dy.dtype)
            _block_conv(G, flipped, out, g.Wp, g.dx_blocks, g.PB)
            _crop_input_grad(out, dx, g.D, g.Wp, first)
        return dw, db

    if not N:
        return dx, np.zeros(w.shape, dtype=dy.dtype), np.zeros(OC, dtype=dy.dtype) if has_bias else None
    dw, db = _sum_in_order(cores.run(backward_chunk, -(-N // chunk)))
    return dx, np.ascontiguousarray(dw[:OC]).reshape(w.shape), db if has_bias else None
