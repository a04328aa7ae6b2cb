"""3x3 convolutions at stride 1 or 2 by register-blocked direct sums (numba_conv dispatches here when
numba_strategy.conv_algorithms says 'blocked').

The wide layout of numba_conv: a padded input plane of row length Wp read as one flat vector, output
pixel (oh, ow) at i = oh*Wp + ow, and tap (kh, kw) reading xp[i + kh*Wp + kw] (positions ow >= OW
wrap into the next row: computed, never used). At stride 2 the padded plane is first split into its
four phase planes P[a, b][r, q] = xp[2r + a, 2q + b] (row length Wq = ceil(Wp/2)), and tap (kh, kw)
reads phase (kh % 2, kw % 2) at i + (kh//2)*Wq + kw//2, output pixel (oh, ow) at i = oh*Wq + ow: the
same sums over a tap's offset into a channel's planes. Forward keeps a block of OB = 8 output
channels by PB = 32 pixels (two 512-bit vectors of float32 per channel, 16 vectors) in registers
while it runs through all input channels and taps: for each (c, tap) two vector loads of x and 8
broadcast weights feed 16 fused multiply-adds, and the block is stored once at the end. Winograd's
F(2x2, 3x3) does 2.25x fewer multiplications, but for 16-64 channels its transforms cost more than
the multiplications it saves, and its 16 small GEMMs (K = C) run BLAS below half speed.

    xq   (n, C, R)          a channel's padded plane (stride 1) or its four phase planes of Pq each
                            (stride 2), with zeroed slack after each for the last block's reads
    w8   (OCp/OB, C, T, OB) the filters for T taps, OB output channels side by side (zero past OC)
    out  (n, OCp, blocks*PB) the wide output, cropped into y with the bias

Backward:
    dw   dw[o, c, tap] = sum over samples and output pixels (oh, ow) of dy[o, oh, ow] *
         xq[c, oh*Wq + ow + offset(tap)], with dy pixel-major (D (n, OH*OW, OCv): a pixel's output
         channels side by side, one vector per 16 of them): per pixel two aligned vector loads of
         dy and nine broadcasts of x feed 18 multiply-adds into two vectors of output channels x
         nine taps of sums, in registers through a chunk's samples (each lane one output channel's
         sum, in pixel order). Only real output pixels are summed: the products are torch's. Read
         the other way (dy's planes by vectors of pixels, x at the nine shifted offsets), all nine
         x loads split cache lines and the same sums ran at half the speed (AMD EPYC Zen 5, one core,
         32 samples, float32:
         16 ch 28x28 804 -> 670 us with the transposition, 32 ch 14x14 869 -> 502, 64 ch 7x7 1,076
         -> 484, 16 -> 32 ch at stride 2 642 -> 273).
    dx   the same forward kernel run on G, dy in the wide layout S positions late (zero elsewhere).
         Stride 1: dxp[c, j0 + j] = sum over o, taps of
         w[o, c, 8 - tap] * G[o, j + kh*Wp + kw] with S = 2*Wp + 2 - j0, j0 = PH*Wp + PW (at most
         2*Wp + 2) the first padded position that dx keeps. Stride 2: each phase plane of dxp is
         the sum over its own taps (4, 2, 2 or 1 of them) of w[o, c, kh, kw] *
         G[o, k + Wq + 1 - (kh//2)*Wq - kw//2], S = Wq + 1; the phases are merged into dx.
The kernels are LLVM IR vector code (llvmlite, as in simd.py): 512-bit vectors whatever width LLVM
prefers for its own vectorizer (256 on these Xeons), split into two 256-bit halves on a CPU
without AVX-512. Multiply-adds are fused; sums run in a fixed order, so the bits do not depend on
the threads. Float64 runs the same code with half the lanes per vector (PB = 16).
"""
import functools

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from . import cores
from .numba_common import FAST, _add_in_order, _crop_padding, _defers_weight_grad, _pad_wide, _rows_chunk, _scratch
from .numba_relu_pool import _relu_pool_plane, _unpool_plane
from .simd import _float_arrays, merge_pairs, normalized_run, shifted_run, splat, split_pairs

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
        return splat(self.builder, scalar, self.vector)


def _int64(context, builder, values, value_types):
    return [context.cast(builder, v, t, types.int64) for v, t in zip(values, value_types)]


def _data(context, builder, array_type, array):
    return context.make_array(array_type)(context, builder, array).data


def _make_block_sums(n_taps):
    """An intrinsic block_sums(out, out_at, out_stride, x, x_at, x_stride, w, w_at, C, taps) for T =
    n_taps taps: out[out_at + o*out_stride:][:PB] = the sum over c < C and t < T of
    w[w_at + (c*T + t)*OB + o] * x[x_at + c*x_stride + taps[t]:][:PB], for o < OB (PB = two vectors)."""

    @intrinsic
    def block_sums(typingctx, out, out_at, out_stride, x, x_at, x_stride, w, w_at, C, taps):
        if not (_float_arrays(out, x, w) and isinstance(taps, types.Array) and taps.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            out_t, x_t, w_t, taps_t = signature.args[0], signature.args[3], signature.args[6], signature.args[9]
            vec = _Vectors(context, builder, out_t.dtype)
            idx = (1, 2, 4, 5, 7, 8)
            out_at, out_stride, x_at, x_stride, w_at, n_channels = _int64(
                context, builder, [args[i] for i in idx], [signature.args[i] for i in idx])
            out_data, x_data, w_data, taps_data = (_data(context, builder, t, a) for t, a in (
                (out_t, args[0]), (x_t, args[3]), (w_t, args[6]), (taps_t, args[9])))
            int64 = ir.IntType(64)
            const = lambda v: ir.Constant(int64, v)                                      # noqa: E731
            offsets = [builder.load(builder.gep(taps_data, [const(t)])) for t in range(n_taps)]
            sums = [[_slot(builder, vec.zeros) for _ in range(2)] for _ in range(OB)]
            with _for_range(builder, n_channels) as c:
                x_c = builder.add(x_at, builder.mul(c, x_stride))
                w_c = builder.add(w_at, builder.mul(c, const(n_taps * OB)))
                for tap in range(n_taps):
                    at = builder.add(x_c, offsets[tap])
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

        return types.void(out, out_at, out_stride, x, x_at, x_stride, w, w_at, C, taps), codegen

    return block_sums


# one per tap count: forward 9; the stride-2 dx phases 4, 2 and 1
_block_sums9, _block_sums4, _block_sums2, _block_sums1 = (_make_block_sums(t) for t in (9, 4, 2, 1))


def _make_pixel_dots(n_vectors):
    """An intrinsic pixel_dots(dw, dw_at, g, g_at, g_sample, g_pixel, x, x_at, x_sample, n, OH, OW, Wq,
    taps) for one input channel and n_vectors vectors of output channels: for tap < 9 and v < n_vectors,
    dw[dw_at + tap*g_pixel + v*lanes:][:lanes] = the sum over samples s < n and output pixels
    (oh, ow) of g[g_at + s*g_sample + (oh*OW + ow)*g_pixel + v*lanes:][:lanes] (dy of a pixel, output
    channels side by side) times x[x_at + s*x_sample + oh*Wq + ow + taps[tap]] (broadcast):
    9*n_vectors vectors of sums in registers throughout, each lane one output channel's."""

    @intrinsic
    def pixel_dots(typingctx, dw, dw_at, g, g_at, g_sample, g_pixel, x, x_at, x_sample, n, OH, OW, Wq, taps):
        if not (_float_arrays(dw, g, x) and isinstance(taps, types.Array) and taps.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            dw_t, g_t, x_t = signature.args[0], signature.args[2], signature.args[6]
            vec = _Vectors(context, builder, dw_t.dtype)
            idx = (1, 3, 4, 5, 7, 8, 9, 10, 11, 12)
            dw_at, g_at, g_sample, g_pixel, x_at, x_sample, n_samples, OH, OW, Wq = _int64(
                context, builder, [args[i] for i in idx], [signature.args[i] for i in idx])
            taps_data = _data(context, builder, signature.args[13], args[13])
            dw_data, g_data, x_data = (_data(context, builder, t, a) for t, a in ((dw_t, args[0]), (g_t, args[2]),
                                                                                    (x_t, args[6])))
            int64 = ir.IntType(64)
            const = lambda v: ir.Constant(int64, v)                                      # noqa: E731
            sums = [[_slot(builder, vec.zeros) for _ in range(9)] for _ in range(n_vectors)]
            shifts = [builder.load(builder.gep(taps_data, [const(t)])) for t in range(9)]
            with _for_range(builder, n_samples) as s:
                g_s = builder.add(g_at, builder.mul(s, g_sample))
                x_s = builder.add(x_at, builder.mul(s, x_sample))
                with _for_range(builder, OH) as oh:
                    g_row = builder.add(g_s, builder.mul(builder.mul(oh, OW), g_pixel))
                    x_row = builder.add(x_s, builder.mul(oh, Wq))
                    with _for_range(builder, OW) as ow:
                        g_p = builder.add(g_row, builder.mul(ow, g_pixel))
                        d = [vec.load(g_data, builder.add(g_p, const(v * vec.lanes))) for v in range(n_vectors)]
                        x_p = builder.add(x_row, ow)
                        for tap in range(9):
                            xv = vec.splat(builder.load(vec.at(x_data, builder.add(x_p, shifts[tap]))))
                            for v in range(n_vectors):
                                builder.store(vec.fma(d[v], xv, builder.load(sums[v][tap])), sums[v][tap])
            for tap in range(9):
                row = builder.add(dw_at, builder.mul(const(tap), g_pixel))
                for v in range(n_vectors):
                    vec.store(builder.load(sums[v][tap]), dw_data, builder.add(row, const(v * vec.lanes)))
            return context.get_dummy_value()

        return types.void(dw, dw_at, g, g_at, g_sample, g_pixel, x, x_at, x_sample, n, OH, OW, Wq, taps), codegen

    return pixel_dots


# two vectors of output channels (18 vectors of sums); one for the last of an odd count. Three (27)
# measured slower (206-219 against 245-249 GF/s, one core)
_pixel_dots1, _pixel_dots2 = _make_pixel_dots(1), _make_pixel_dots(2)


def _make_transpose():
    """An intrinsic transpose(dst, dst_at, dst_stride, src, src_at, src_stride) of a square block of
    one vector's lanes: dst[dst_at + j*dst_stride + i] = src[src_at + i*src_stride + j] for i, j <
    lanes. The lanes rows are loaded as vectors and swapped in log2(lanes) rounds of two-vector
    shuffles (round b: in each 2b x 2b block the off-diagonal b x b blocks trade places), then
    stored as vectors: no scalar loads or stores."""

    @intrinsic
    def transpose(typingctx, dst, dst_at, dst_stride, src, src_at, src_stride):
        if not _float_arrays(dst, src):
            return None

        def codegen(context, builder, signature, args):
            vec = _Vectors(context, builder, signature.args[0].dtype)
            idx = (1, 2, 4, 5)
            dst_at, dst_stride, src_at, src_stride = _int64(context, builder, [args[i] for i in idx],
                                                            [signature.args[i] for i in idx])
            dst_data = _data(context, builder, signature.args[0], args[0])
            src_data = _data(context, builder, signature.args[3], args[3])
            n = vec.lanes
            int64, i32 = ir.IntType(64), ir.IntType(32)
            rows = [vec.load(src_data, builder.add(src_at, builder.mul(ir.Constant(int64, i), src_stride)))
                    for i in range(n)]
            b = 1
            while b < n:
                low = [lane if lane & b == 0 else n + lane - b for lane in range(n)]
                high = [lane + b if lane & b == 0 else n + lane for lane in range(n)]
                for i in range(n):
                    if i & b == 0:
                        a, c = rows[i], rows[i + b]
                        rows[i] = builder.shuffle_vector(a, c, ir.Constant(ir.VectorType(i32, n), low))
                        rows[i + b] = builder.shuffle_vector(a, c, ir.Constant(ir.VectorType(i32, n), high))
                b *= 2
            for j in range(n):
                vec.store(rows[j], dst_data, builder.add(dst_at, builder.mul(ir.Constant(int64, j), dst_stride)))
            return context.get_dummy_value()

        return types.void(dst, dst_at, dst_stride, src, src_at, src_stride), codegen

    return transpose


_transpose = _make_transpose()


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
def _block_conv(xq, w8, out, taps, n_blocks, PB):
    """out (n, OCp, *) = the wide sums of the planes xq (n, C, R) by w8 (OCp/OB, C, T, OB) at the T
    tap offsets taps, n_blocks blocks of PB pixels from the start of each output row, sample by
    sample (its planes stay in the cache for all its output blocks)."""
    n, C, R = xq.shape
    OCp, Q = out.shape[1], out.shape[2]
    T = taps.size
    for s in range(n):
        for ob in range(w8.shape[0]):
            for block in range(n_blocks):
                out_at, x_at, w_at = (s * OCp + ob * OB) * Q + block * PB, s * C * R + block * PB, ob * C * T * OB
                if T == 9:
                    _block_sums9(out, out_at, Q, xq, x_at, R, w8, w_at, C, taps)
                elif T == 4:
                    _block_sums4(out, out_at, Q, xq, x_at, R, w8, w_at, C, taps)
                elif T == 2:
                    _block_sums2(out, out_at, Q, xq, x_at, R, w8, w_at, C, taps)
                else:
                    _block_sums1(out, out_at, Q, xq, x_at, R, w8, w_at, C, taps)


@njit(**FAST)
def _split_phases(x, xq, PH, PW, Wq, Pq):
    """xq[n, c, (2a + b)*Pq + r*Wq + q] = the padded x at row 2r + a, column 2q + b (zero in the padding
    and the slack): each input row goes to one row of two phase planes, its even columns to phase
    b = PW % 2 from column PW // 2 and its odd ones to the other from (PW + 1) // 2, by vector
    shuffles (simd.split_pairs: pixel by pixel this took 4x as long as the stride-1 pad)."""
    N, C, H, W = x.shape
    R = xq.shape[2]
    even_phase, odd_phase = PW % 2, (PW + 1) % 2
    for n in range(N):
        for c in range(C):
            planes = xq[n, c]
            for i in range(planes.size):
                planes[i] = 0
            for h in range(H):
                hp = h + PH
                row = (n * C + c) * R + 2 * (hp % 2) * Pq + (hp // 2) * Wq
                split_pairs(xq, row + even_phase * Pq + PW // 2, row + odd_phase * Pq + (PW + 1) // 2,
                            x, ((n * C + c) * H + h) * W, W)


@njit(**FAST)
def _merge_phases(phases, dx, PH, PW, Wq, first):
    """dx[first + s, c, h, w] = the phase plane (a, b) = ((h + PH) % 2, (w + PW) % 2) of the padded
    gradient at ((h + PH)//2, (w + PW)//2), phases (4, n, C', *) the planes 2a + b: a row of dx
    interleaves a row of its two phases (simd.merge_pairs, the adjoint of _split_phases' shuffles)."""
    n, Cp, L = phases.shape[1], phases.shape[2], phases.shape[3]
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    even_phase, odd_phase = PW % 2, (PW + 1) % 2
    phase = n * Cp * L
    for s in range(n):
        for c in range(C):
            for h in range(H):
                hp = h + PH
                row = 2 * (hp % 2) * phase + (s * Cp + c) * L + (hp // 2) * Wq
                merge_pairs(dx, (((first + s) * C + c) * H + h) * W, phases,
                            row + even_phase * phase + PW // 2, row + odd_phase * phase + (PW + 1) // 2, W)


@njit(**FAST)
def _crop_wide(out, b, y, Wq, first):
    """y[first + s, o, oh, :] = out[s, o, oh*Wq:][:OW] + b[o]."""
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for s in range(out.shape[0]):
        for o in range(OC):
            for oh in range(OH):
                shifted_run(y[first + s, o, oh], 0, out[s, o], oh * Wq, OW, b[o])


@njit(**FAST)
def _crop_wide_normalized(out, b, y, Wq, first, mean, invstd, gamma, beta, relu, residual, add):
    """_crop_wide, each value then normalized as batchnorm_forward_eval does ((v - mean) * invstd *
    gamma + beta, the same operations in the same order), with add then summed with residual (N, OC,
    OH, OW) as add does, and with relu rectified as relu_forward: a row at a time by
    simd.normalized_run (value by value, rows of 7-28 stayed scalar: 1.5-2.2x slower in float32)."""
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for s in range(out.shape[0]):
        for o in range(OC):
            bias, m, r, g, bb = b[o], mean[o], invstd[o], gamma[o], beta[o]
            for oh in range(OH):
                normalized_run(y[first + s, o, oh], 0, out[s, o], oh * Wq, OW, bias, m, r, g, bb, relu,
                               residual[first + s, o, oh], 0, add)


@njit(**FAST)
def _crop_wide_relu_pool(out, b, y, idx, Wq, first, zero):
    """y[first + s, o] (OH//2, OW//2) = relu of the 2x2 max pool of out[s, o] + b[o] (row length Wq),
    idx its winners: numba_relu_pool's epilogue, the bits of conv, ReLU and pool one by one."""
    for s in range(out.shape[0]):
        for o in range(y.shape[1]):
            _relu_pool_plane(out[s, o], b[o], Wq, y[first + s, o], idx[first + s, o], zero)


@njit(**FAST)
def _unpool(dy, y, idx, dense, OW, zero):
    """dense (n, OC, OH, OW) = the gradient of the convolution's output from the pooled gradient dy
    (n, OC, OH//2, OW//2): each window's winner where the ReLU let it through (numba_relu_pool)."""
    for s in range(dy.shape[0]):
        for o in range(dy.shape[1]):
            _unpool_plane(dense[s, o].reshape(-1), dy[s, o], y[s, o], idx[s, o], OW, zero)


@njit(**FAST)
def _pixel_major(dy, D, lanes):
    """D (n, OH*OW, OCv) = dy (n, OC, OH, OW) with a pixel's output channels side by side, zero past
    OC: lanes x lanes blocks by vector shuffles (_transpose), the edges one value at a time."""
    n, OC, OH, OW = dy.shape
    P, OCv = OH * OW, D.shape[2]
    whole_o, whole_p = OC - OC % lanes, P - P % lanes
    flat_dy, flat_D = dy.reshape(-1), D.reshape(-1)
    for s in range(n):
        src, dst = dy[s].reshape(OC, P), D[s]
        for o in range(0, whole_o, lanes):
            for p in range(0, whole_p, lanes):
                _transpose(flat_D, (s * P + p) * OCv + o, OCv, flat_dy, (s * OC + o) * P + p, P)
            for p in range(whole_p, P):
                for j in range(lanes):
                    dst[p, o + j] = src[o + j, p]
        for p in range(P):
            for o in range(whole_o, OC):
                dst[p, o] = src[o, p]
            for o in range(OC, OCv):
                dst[p, o] = 0


@njit(**FAST)
def _weight_grad(D, xq, dw, OH, OW, Wq, taps, lanes):
    """dw (C, 9, OCv) = the sums over this chunk's samples and the output pixels of D[:, pixel, o] *
    xq[:, c, pixel's i + taps[tap]], D (n, OH*OW, OCv) from _pixel_major, two vectors of output
    channels at a time."""
    n, P, OCv = D.shape
    C, R = xq.shape[1], xq.shape[2]
    for c in range(C):
        for v in range(0, OCv // lanes - 1, 2):
            _pixel_dots2(dw, c * 9 * OCv + v * lanes, D, v * lanes, P * OCv, OCv, xq, c * R, C * R, n, OH, OW, Wq, taps)
        if (OCv // lanes) % 2:
            v = OCv // lanes - 1
            _pixel_dots1(dw, c * 9 * OCv + v * lanes, D, v * lanes, P * OCv, OCv, xq, c * R, C * R, n, OH, OW, Wq, taps)


@njit(**FAST)
def _weight_grad_total(dws, dw):
    """dw (OC, C, 9) = the chunks' shares dws (chunks, C, 9, OCv) added in chunk order (((first +
    second) + third) + ...: _sum_in_order's additions, without its temporaries), output channels
    first and the padding past OC dropped: one pass on the caller (the adds and the transposition
    by NumPy took 0.76 ms a ResNet14 step)."""
    n, C, T = dws.shape[0], dws.shape[1], dws.shape[2]
    OC = dw.shape[0]
    total = np.empty(OC, dtype=dws.dtype)
    for c in range(C):
        for t in range(T):
            for o in range(OC):
                total[o] = dws[0, c, t, o]
            for i in range(1, n):
                share = dws[i, c, t]
                for o in range(OC):
                    total[o] += share[o]
            for o in range(OC):
                dw[o, c, t] = total[o]


# ---------------------------------------------------------------- forward and backward

class Geometry:
    """Sizes and tap offsets for x_shape, padding, stride (1 or 2) and dtype (see the module's
    docstring): Wq the row length of the wide output, L its length, R a channel's planes."""

    def __init__(self, x_shape, padding, stride, dtype):
        N, C, H, W = x_shape
        PH, PW = padding
        self.PH, self.PW, self.stride = PH, PW, stride
        self.Hp, self.Wp = H + 2 * PH, W + 2 * PW
        self.OH, self.OW = (self.Hp - 3) // stride + 1, (self.Wp - 3) // stride + 1
        self.PB = pixels_per_block(dtype)
        self.lanes = self.PB // 2
        if stride == 1:
            self.Wq = self.Wp
            self.L = (self.OH - 1) * self.Wq + self.OW
            self.blocks = -(-self.L // self.PB)
            self.R = self.blocks * self.PB + 2 * self.Wp + 2               # a plane and its slack
            self.taps = np.array([kh * self.Wp + kw for kh in range(3) for kw in range(3)], dtype=np.int64)
            # dx: the padded planes' interior spans [j0 + D, j0 + D + (H - 1)*Wp + W); the sums
            # start at j0 (D = 0 unless the padding passes 2), so dy sits S = 2*Wp + 2 - j0 into G
            j0 = min(PH * self.Wp + PW, 2 * self.Wp + 2)
            self.D, self.S = PH * self.Wp + PW - j0, 2 * self.Wp + 2 - j0
            self.dx_blocks = -(-(self.D + (H - 1) * self.Wp + W) // self.PB)
            dx_reach = 2 * self.Wp + 2
        else:
            self.Wq, Hq = -(-self.Wp // 2), -(-self.Hp // 2)
            self.L = (self.OH - 1) * self.Wq + self.OW
            self.blocks = -(-self.L // self.PB)
            self.Pq = max(Hq * self.Wq, self.blocks * self.PB + self.Wq + 1)  # a phase plane and its slack
            self.R = 4 * self.Pq
            self.taps = np.array([(2 * (kh % 2) + kw % 2) * self.Pq + (kh // 2) * self.Wq + kw // 2
                                  for kh in range(3) for kw in range(3)], dtype=np.int64)
            self.S = self.Wq + 1
            self.dx_blocks = -(-(Hq * self.Wq) // self.PB)
            dx_reach = self.Wq + 1
            self.phase_taps = [[(kh, kw) for kh in range(3) for kw in range(3) if (kh % 2, kw % 2) == (a, b)]
                               for a in range(2) for b in range(2)]
            self.phase_offsets = [np.array([self.S - (kh // 2) * self.Wq - kw // 2 for kh, kw in taps],
                                           dtype=np.int64) for taps in self.phase_taps]
        self.Pg = max(self.dx_blocks * self.PB + dx_reach, self.S + self.L)

    def planes(self, x, xq):
        """Fill xq (n, C, R) from x (n, C, H, W)."""
        if self.stride == 1:
            _pad_wide(x, xq, self.PH, self.PW, self.Wp)
        else:
            _split_phases(x, xq, self.PH, self.PW, self.Wq, self.Pq)


@functools.lru_cache(maxsize=256)
def _geometry(x_shape, padding, stride, dtype):
    """The Geometry of these arguments, built once (a ResNet14 step asks for the same few ~24 times)."""
    return Geometry(x_shape, padding, stride, dtype)


def _arranged(w_taps, out_channels, in_channels):
    """Filters w_taps (O, I, T) (any strides: a flipped or transposed view) as (out_channels/OB,
    in_channels, T, OB), zero past O and I. (By NumPy's pad, reshape and transposition this took
    ~0.7 ms of a ResNet14 step: forward, dx's flipped filters and the stride-2 phases each step.)"""
    arranged = np.zeros((out_channels // OB, in_channels, w_taps.shape[2], OB), dtype=w_taps.dtype)
    _arrange(w_taps, arranged)
    return arranged


@njit(**FAST)
def _arrange(w_taps, arranged):
    O, I, T = w_taps.shape
    for o in range(O):
        for i in range(I):
            for t in range(T):
                arranged[o // OB, i, t, o % OB] = w_taps[o, i, t]


def forward(x, w, b, stride, padding, normalize=None, relu_pool=False):
    """y (N, OC, OH, OW) of the 3x3 convolution at stride 1 or 2, and the planes xq (N, C, R) that
    backward reads. x may hold inf or NaN: each kept output sums exactly torch's products, and so do
    backward's (dw sums over real output pixels only, dx does not read x), so inf and NaN land where
    torch's do (w must be finite: dx's wide dy has zeros an inf weight would multiply).
    normalize=(mean, invstd, gamma, beta, relu, residual), for inference: y is normalized (summed with
    residual, an array of y's shape and dtype, unless that is None, and rectified with relu) as each
    task crops it (_crop_wide_normalized), and the planes are each task's scratch, not kept (xq is
    None). relu_pool (stride 1): y is relu(maxpool2x2(y)) (N, OC, OH//2, OW//2), pooled as each
    task crops it; returns (y, xq, idx), idx (int8) each window's winner."""
    N, C, H, W = x.shape
    OC = w.shape[0]
    x = np.ascontiguousarray(x)
    g = _geometry(tuple(x.shape), tuple(padding), stride, x.dtype)
    OCp = -(-OC // OB) * OB
    w8 = _arranged(w.reshape(OC, C, 9), OCp, C)
    bias = np.zeros(OC, dtype=x.dtype) if b is None else b
    xq = np.empty((N, C, g.R), dtype=x.dtype) if normalize is None else None
    if relu_pool:
        y = np.empty((N, OC, g.OH // 2, g.OW // 2), dtype=x.dtype)
        idx = np.empty(y.shape, dtype=np.int8)
    else:
        y = np.empty((N, OC, g.OH, g.OW), dtype=x.dtype)
    if normalize is not None:                  # without a residual, y stands in for it (never read)
        *statistics, relu, residual = normalize
        epilogue = (*statistics, relu, y if residual is None else np.ascontiguousarray(residual), residual is not None)
    chunk = _rows_chunk(N, (C * g.R + OCp * g.blocks * g.PB) * x.dtype.itemsize)

    def forward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        n = min(chunk, N - first)
        planes = xq[part] if xq is not None else _scratch("blocked planes", (n, C, g.R), x.dtype)
        g.planes(x[part], planes)
        out = _scratch("blocked out", (n, OCp, g.blocks * g.PB), x.dtype)
        _block_conv(planes, w8, out, g.taps, g.blocks, g.PB)
        if relu_pool:
            _crop_wide_relu_pool(out, bias, y, idx, g.Wq, first, x.dtype.type(0))
        elif normalize is None:
            _crop_wide(out, bias, y, g.Wq, first)
        else:
            _crop_wide_normalized(out, bias, y, g.Wq, first, *epilogue)

    if N:
        cores.run(forward_chunk, -(-N // chunk))
    return (y, xq, idx) if relu_pool else (y, xq)


def backward(dy, xq, w, x_shape, stride, padding, input_grad, has_bias, pooled=None, dw_may_wait=False):
    """(dx or None, dw, db or None) of forward, from dy (N, OC, OH, OW) and forward's planes xq; or
    after relu_pool from the pooled gradient dy and pooled = (y, idx) of forward (each task first
    spreads its samples' dy to the winners, _unpool). With dx, dw_may_wait and not pooled, dw's sums
    may be deferred (cores.defer: a worker sums them while it would otherwise wait; where
    numba_common._defers_weight_grad says so), and dw is final after cores.settle()."""
    N, C, H, W = x_shape
    OC = w.shape[0]
    g = _geometry(tuple(x_shape), tuple(padding), stride, dy.dtype)
    OCv, Cp = -(-OC // g.lanes) * g.lanes, -(-C // OB) * OB    # dw by vectors of output channels; dx by blocks
    if not input_grad:
        filters = []
    elif stride == 1:                                             # flipped: tap 8 - t, channels swapped
        filters = [_arranged(w.reshape(OC, C, 9)[:, :, ::-1].transpose(1, 0, 2), Cp, OC)]
    else:                                                         # each phase's own taps
        filters = [_arranged(w.reshape(OC, C, 9)[:, :, [3 * kh + kw for kh, kw in taps]].transpose(1, 0, 2), Cp, OC)
                   for taps in g.phase_taps]
    dy = np.ascontiguousarray(dy)
    dx = np.empty(x_shape, dtype=dy.dtype) if input_grad else None
    # the chunks (and so dw's order of additions) depend on the shapes alone: with or without dx,
    # pooled or not, deferred or not, dw has the same bits
    per_sample = OCv * g.OH * g.OW + C * g.R + OC * g.Pg + (1 if stride == 1 else 4) * Cp * g.dx_blocks * g.PB
    chunk = _rows_chunk(N, per_sample * dy.dtype.itemsize)
    dws = np.empty((-(-N // chunk), C, 9, OCv), dtype=dy.dtype)           # each chunk's share of dw
    dw = np.empty((OC, C, 9), dtype=dy.dtype)
    deferred = input_grad and pooled is None and _defers_weight_grad(dw_may_wait, N * per_sample * dy.dtype.itemsize)

    def weight_chunk(i, dy_part=None):
        part = slice(i * chunk, (i + 1) * chunk)
        dy_part = dy[part] if dy_part is None else dy_part
        D = _scratch("blocked dy pixels", (dy_part.shape[0], g.OH * g.OW, OCv), dy.dtype, align=VECTOR_BYTES)
        _pixel_major(dy_part, D, g.lanes)
        _weight_grad(D, xq[part], dws[i], g.OH, g.OW, g.Wq, g.taps, g.lanes)

    def backward_chunk(i):
        first = i * chunk
        part = slice(first, first + chunk)
        n = min(chunk, N - first)
        dy_part = dy[part]
        if pooled is not None:
            dy_part = _scratch("blocked dy unpooled", (n, OC, g.OH, g.OW), dy.dtype)
            _unpool(dy[part], pooled[0][part], pooled[1][part], dy_part, g.OW, dy.dtype.type(0))
        if not deferred:
            weight_chunk(i, dy_part)
        db = dy_part.sum(axis=(0, 2, 3)) if has_bias else None
        if input_grad:
            G = _scratch("blocked dy", (n, OC, g.Pg), dy.dtype)
            _pad_wide(dy_part, G, 0, g.S, g.Wq)                     # dy S positions late, zero elsewhere
        if input_grad and stride == 1:
            out = _scratch("blocked dx", (n, Cp, g.dx_blocks * g.PB), dy.dtype)
            _block_conv(G, filters[0], out, g.taps, g.dx_blocks, g.PB)
            _crop_padding(out, dx[part], 0, g.D, g.Wp)               # the padded planes' interior
        elif input_grad:
            phases = _scratch("blocked dx phases", (4, n, Cp, g.dx_blocks * g.PB), dy.dtype)
            for phase, phase_filters, offsets in zip(phases, filters, g.phase_offsets):
                _block_conv(G, phase_filters, phase, offsets, g.dx_blocks, g.PB)
            _merge_phases(phases, dx, g.PH, g.PW, g.Wq, first)
        return db

    if not N:
        return dx, np.zeros(w.shape, dtype=dy.dtype), np.zeros(OC, dtype=dy.dtype) if has_bias else None
    if deferred:                          # handed out first: a worker done with dx takes them at once
        cores.defer(weight_chunk, len(dws), lambda: _weight_grad_total(dws, dw))
    db_parts = cores.run(backward_chunk, len(dws))
    if not deferred:
        _weight_grad_total(dws, dw)
    db = _add_in_order(db_parts) if has_bias else None
    return dx, dw.reshape(w.shape), db


# ---------------------------------------------------------------- 1x1 convolutions (one tap)
# The same kernels with one tap: a 1x1 convolution is y[n] (OC, P) = w (OC, C) @ x[n] (C, P). Forward
# and dx are _block_conv over planes padded to whole blocks (P pixels, then zeros), cropped into y and
# dx; dw is _pixel_dots with nine input channels in the place of the nine taps (taps[t] = t planes
# further on: x broadcast, pixel-major dy), the last group of nine overlapping the one before (its
# shared channels summed again in the same order: the same bits) or, below nine channels,
# repeating the last channel. Only real pixels are multiplied: the products are torch's.

@njit(**FAST)
def _channel_dots(D, x, dw, taps, lanes):
    """dw (max(C, 9), OCv) = the sums over this chunk's samples and pixels of D[:, p, o] * x[:, c, p],
    D (n, P, OCv) from _pixel_major, nine input channels a call (taps: offsets of channels 0..8)."""
    n, P, OCv = D.shape
    C = x.shape[1]
    group = 0
    while True:
        c0 = min(group, max(C - 9, 0))
        for v in range(0, OCv // lanes - 1, 2):
            _pixel_dots2(dw, c0 * OCv + v * lanes, D, v * lanes, P * OCv, OCv, x, c0 * P, C * P, n, 1, P, P, taps)
        if (OCv // lanes) % 2:
            v = OCv // lanes - 1
            _pixel_dots1(dw, c0 * OCv + v * lanes, D, v * lanes, P * OCv, OCv, x, c0 * P, C * P, n, 1, P, P, taps)
        if c0 + 9 >= C:
            break
        group += 9


def pointwise_forward(x3, w, b, y3, first):
    """y3[first:first + n] (n, OC, P) = w (OC, C) @ x3[i] (C, P) + b for each of the n samples of x3."""
    n, C, P = x3.shape
    OC = w.shape[0]
    PB = pixels_per_block(x3.dtype)
    blocks = -(-P // PB)
    OCp = -(-OC // OB) * OB
    planes = _scratch("pointwise planes", (n, C, blocks * PB), x3.dtype)
    _pad_wide(x3.reshape(n, C, 1, P), planes, 0, 0, P)                 # each plane one row, zeros after
    out = _scratch("pointwise out", (n, OCp, blocks * PB), x3.dtype)
    _block_conv(planes, _arranged(w.reshape(OC, C, 1), OCp, C), out, np.zeros(1, dtype=np.int64), blocks, PB)
    _crop_wide(out, np.zeros(OC, dtype=x3.dtype) if b is None else b, y3.reshape(-1, OC, 1, P), P, first)


def pointwise_weight_grad(g3, x3):
    """dw (OC, C) = the sum over the samples of g3[i] (OC, P) @ x3[i].T (C, P)."""
    n, OC, P = g3.shape
    C = x3.shape[1]
    lanes = VECTOR_BYTES // g3.dtype.itemsize
    OCv = -(-OC // lanes) * lanes
    D = _scratch("pointwise dy pixels", (n, P, OCv), g3.dtype, align=VECTOR_BYTES)
    _pixel_major(g3.reshape(n, OC, 1, P), D, lanes)
    dw = np.empty((max(C, 9), OCv), dtype=g3.dtype)
    taps = np.array([min(t, C - 1) * P for t in range(9)], dtype=np.int64)
    _channel_dots(D, np.ascontiguousarray(x3), dw, taps, lanes)
    return np.ascontiguousarray(dw[:C, :OC].T)


def pointwise_input_grad(g3, w, dx3):
    """dx3 (n, C, P) = w.T (C, OC) @ g3[i] (OC, P) for each sample: pointwise_forward by w.T."""
    pointwise_forward(g3, np.ascontiguousarray(w.T), None, dx3, 0)
