"""Explicit vector operations for the Numba kernels, on short rows (width <= LANES elements):

    row_fma(dst, d, src, s, v, width):    dst[d:d + width] += v * src[s:s + width]
    sum_rows(acc, a, src, at, value, first, last, offset, width):
        acc[a:a + LANES] += the sum over m in [first, last) of value[m] * src[at[m] + offset:][:width]
        (zeros past width: all LANES lanes of acc are loaded and stored)

Numba compiles with LLVM's SLP vectorizer off (it once miscompiled code: numba issue 8705), so a
short row of constant length, fully unrolled, stays a run of scalar instructions; and LLVM's loop
vectorizer only pays off for loops longer than its vector body (32 floats here), so a row of a
runtime length 5 runs its scalar remainder loop. A 5-tap kernel row fell between the two: 5 scalar
loads, multiply-adds and stores. As one row_fma it is one vector load from each side, one fused
multiply-add and one store. Lanes at and past `width` are masked: neither read nor written, so a
row may end at the very end of an array, and two threads may update neighbouring rows.

sum_rows is the same multiply-add over a list of rows into one: row_fma in a loop would store the
sum and load it back for every row, and a masked store does not forward to the next load (each
step waited ~30 cycles). Its SUMS running sums (rows first, first + 1, ... in turn, added at the
end: a fixed order) stay in registers: LeNet's second-layer weight gradient 1.27x faster than by
row_fma entry by entry (benchmarks/history.md, "Numba strategy").

Float arrays must share one dtype, float32 or float64; `at` holds int64 element offsets; d, s, a
and the offsets count elements from the start of each array's data (no bounds check: the caller
keeps every row inside its array). The multiply-adds are fused (one rounding), as under the
kernels' 'contract' flag.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

LANES = 8
SUMS = 4            # sum_rows' running sums: a multiply-add takes 4 cycles, 2 can start each cycle


def _float_arrays(*arrays):
    return all(isinstance(a, types.Array) and a.dtype == arrays[0].dtype for a in arrays) \
        and arrays[0].dtype in (types.float32, types.float64)


@intrinsic
def row_fma(typingctx, dst, d, src, s, v, width):
    if not _float_arrays(dst, src):
        return None

    def codegen(context, builder, signature, args):
        dst_type, d_type, src_type, s_type, v_type, width_type = signature.args
        ops = _Lanes(context, builder, dst_type.dtype, args[5], width_type)
        dst_at = ops.element(dst_type, args[0], context.cast(builder, args[1], d_type, types.int64))
        src_at = ops.element(src_type, args[2], context.cast(builder, args[3], s_type, types.int64))
        value = ops.splat(context.cast(builder, args[4], v_type, dst_type.dtype))
        ops.store(ops.fma(value, ops.load(src_at), ops.load(dst_at)), dst_at)
        return context.get_dummy_value()

    return types.void(dst, d, src, s, v, width), codegen


@intrinsic
def sum_rows(typingctx, acc, a, src, at, value, first, last, offset, width):
    if not (_float_arrays(acc, src, value) and isinstance(at, types.Array) and at.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        acc_type, a_type, src_type, at_type, value_type, first_type, last_type, offset_type, width_type = signature.args
        ops = _Lanes(context, builder, acc_type.dtype, args[8], width_type)
        first, last, offset = (context.cast(builder, v, t, types.int64) for v, t in
                               ((args[5], first_type), (args[6], last_type), (args[7], offset_type)))
        at_data = context.make_array(at_type)(context, builder, args[3]).data
        value_data = context.make_array(value_type)(context, builder, args[4]).data
        sums = [cgutils.alloca_once_value(builder, ops.zeros) for _ in range(SUMS)]

        def add_row(m, running):                     # running += value[m] * src[at[m] + offset:]
            row = ops.element(src_type, args[2], builder.add(builder.load(builder.gep(at_data, [m])), offset))
            v = ops.splat(builder.load(builder.gep(value_data, [m])))
            builder.store(ops.fma(v, ops.load(row), builder.load(running)), running)

        int64 = ir.IntType(64)
        count = builder.sub(last, first)
        blocks = builder.sdiv(count, ir.Constant(int64, SUMS))
        with cgutils.for_range(builder, blocks) as loop:           # SUMS rows a turn, one into each sum
            m = builder.add(first, builder.mul(loop.index, ir.Constant(int64, SUMS)))
            for j in range(SUMS):
                add_row(builder.add(m, ir.Constant(int64, j)), sums[j])
        with cgutils.for_range(builder, builder.srem(count, ir.Constant(int64, SUMS))) as loop:   # the rest
            add_row(builder.add(builder.add(first, builder.mul(blocks, ir.Constant(int64, SUMS))), loop.index),
                    sums[0])
        acc_at = ops.element(acc_type, args[0], context.cast(builder, args[1], a_type, types.int64))
        total = builder.load(sums[0])
        for running in sums[1:]:
            total = builder.fadd(total, builder.load(running))
        vector_at = builder.bitcast(acc_at, ops.vector.as_pointer())
        builder.store(builder.fadd(builder.load(vector_at, align=ops.itemsize), total), vector_at, align=ops.itemsize)
        return context.get_dummy_value()

    return types.void(acc, a, src, at, value, first, last, offset, width), codegen


class _Lanes:
    """LLVM IR for LANES-wide vectors of dtype, masked to the first `width` lanes."""

    def __init__(self, context, builder, dtype, width, width_type):
        self.context, self.builder = context, builder
        self.vector = ir.VectorType(context.get_data_type(dtype), LANES)
        self.itemsize = dtype.bitwidth // 8
        self.zeros = ir.Constant(self.vector, [0.0] * LANES)
        int64s = ir.VectorType(ir.IntType(64), LANES)
        widths = splat(builder, context.cast(builder, width, width_type, types.int64), int64s)
        self.mask = builder.icmp_unsigned("<", ir.Constant(int64s, list(range(LANES))), widths)
        name, i32 = f"v{LANES}f{dtype.bitwidth}", ir.IntType(32)
        pointer = ir.PointerType(context.get_data_type(dtype))
        module = builder.module
        self._load = module.declare_intrinsic(f"llvm.masked.load.{name}.p0", fnty=ir.FunctionType(
            self.vector, [pointer, i32, self.mask.type, self.vector]))
        self._store = module.declare_intrinsic(f"llvm.masked.store.{name}.p0", fnty=ir.FunctionType(
            ir.VoidType(), [self.vector, pointer, i32, self.mask.type]))
        self._fma = module.declare_intrinsic(f"llvm.fma.{name}", fnty=ir.FunctionType(self.vector, [self.vector] * 3))
        self.align = ir.Constant(i32, self.itemsize)

    def element(self, array_type, array, index):
        """A pointer to array's element `index` (counted from its data, in elements)."""
        return self.builder.gep(self.context.make_array(array_type)(self.context, self.builder, array).data, [index])

    def load(self, at):
        return self.builder.call(self._load, [at, self.align, self.mask, self.zeros])

    def store(self, vector, at):
        self.builder.call(self._store, [vector, at, self.align, self.mask])

    def fma(self, a, b, c):
        return self.builder.call(self._fma, [a, b, c])

    def splat(self, scalar):
        return splat(self.builder, scalar, self.vector)


def splat(builder, scalar, vector_type):
    """IR for a vector_type vector with scalar in every lane."""
    lane0 = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lane0, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count))


# ---------------------------------------------------------------- a row's pixels by column parity
# A stride-2 depthwise convolution first splits each padded row into its even and odd columns (two
# phase planes). Pixel by pixel through lookup tables that was 60 % of the layer's forward (rows of
# 7-28 pixels: per-row views or a loop over pairs cost more, and LLVM does not vectorize the
# de-interleave). Here a row goes PAIRS pixels at a time: one masked load, two shuffles, two masked
# stores (and the adjoint for backward).

PAIRS = 16                       # pairs of pixels a step (a 32-float load)


@intrinsic
def split_pairs(typingctx, dst, even_at, odd_at, src, src_at, width):
    """dst[even_at + q] = src[src_at + 2q] and dst[odd_at + q] = src[src_at + 2q + 1] for the
    `width` pixels of src from src_at (the last pair may be a single even pixel)."""
    if not _float_arrays(dst, src):
        return None

    def codegen(context, builder, signature, args):
        dst_t, _, _, src_t, _, _ = signature.args
        ops = _Pairs(context, builder, dst_t.dtype)
        even_at, odd_at, src_at, width = (context.cast(builder, args[i], signature.args[i], types.int64)
                                          for i in (1, 2, 4, 5))
        dst_data = context.make_array(dst_t)(context, builder, args[0]).data
        src_data = context.make_array(src_t)(context, builder, args[3]).data
        with ops.steps(width) as (q, pixels):
            row = ops.load(builder.gep(src_data, [builder.add(src_at, builder.add(q, q))]), pixels, 2 * PAIRS)
            evens, odds = ops.deinterleave(row)
            ops.store(evens, builder.gep(dst_data, [builder.add(even_at, q)]), ops.evens(pixels))
            ops.store(odds, builder.gep(dst_data, [builder.add(odd_at, q)]), ops.odds(pixels))
        return context.get_dummy_value()

    return types.void(dst, even_at, odd_at, src, src_at, width), codegen


@intrinsic
def merge_pairs(typingctx, dst, dst_at, src, even_at, odd_at, width):
    """The adjoint of split_pairs: dst[dst_at + 2q] = src[even_at + q], dst[dst_at + 2q + 1] =
    src[odd_at + q] for the `width` pixels of dst from dst_at."""
    if not _float_arrays(dst, src):
        return None

    def codegen(context, builder, signature, args):
        dst_t, _, src_t, _, _, _ = signature.args
        ops = _Pairs(context, builder, dst_t.dtype)
        dst_at, even_at, odd_at, width = (context.cast(builder, args[i], signature.args[i], types.int64)
                                          for i in (1, 3, 4, 5))
        dst_data = context.make_array(dst_t)(context, builder, args[0]).data
        src_data = context.make_array(src_t)(context, builder, args[2]).data
        with ops.steps(width) as (q, pixels):
            evens = ops.load(builder.gep(src_data, [builder.add(even_at, q)]), ops.evens(pixels), PAIRS)
            odds = ops.load(builder.gep(src_data, [builder.add(odd_at, q)]), ops.odds(pixels), PAIRS)
            ops.store(ops.interleave(evens, odds), builder.gep(dst_data, [builder.add(dst_at, builder.add(q, q))]),
                      pixels)
        return context.get_dummy_value()

    return types.void(dst, dst_at, src, even_at, odd_at, width), codegen


# ---------------------------------------------------------------- runs of any length
# The padded planes of the convolutions are filled and cropped row by row (7-30 values a row). LLVM's
# loop vectorizer skips a loop shorter than its vector body (64 floats with its unrolling), so such
# rows ran one value at a time: 16 samples of 16x28x28 took 39 us to pad against NumPy's 13 us for
# a plain copy, of 64x7x7 25 us against 2. These go 2*PAIRS values a step, the last step masked
# (1.4-1.7x faster pads and crops; still a few nanoseconds a row).

@intrinsic
def copy_run(typingctx, dst, dst_at, src, src_at, count):
    """dst[dst_at + i] = src[src_at + i] for i < count (bits unchanged: -0.0 and NaN payloads too)."""
    if not _contiguous_float_arrays(dst, src):
        return None

    def codegen(context, builder, signature, args):
        return _run_codegen(context, builder, signature, args, shift=False)

    return types.void(dst, dst_at, src, src_at, count), codegen


@intrinsic
def shifted_run(typingctx, dst, dst_at, src, src_at, count, value):
    """dst[dst_at + i] = src[src_at + i] + value for i < count (a bias added as a row is cropped)."""
    if not _contiguous_float_arrays(dst, src):
        return None

    def codegen(context, builder, signature, args):
        return _run_codegen(context, builder, signature, args, shift=True)

    return types.void(dst, dst_at, src, src_at, count, value), codegen


@intrinsic
def normalized_run(typingctx, dst, dst_at, src, src_at, count, bias, mean, invstd, gamma, beta, relu,
                   residual, residual_at, add):
    """dst[dst_at + i] = ((src[src_at + i] + bias) - mean) * invstd * gamma + beta for i < count: these
    operations in this order, each rounded in the arrays' dtype (the scalars are cast to it), so the
    bits of batchnorm_forward_eval after a bias; with add, plus residual[residual_at + i] (the bits of
    add after it; residual is not read without add); with relu then rectified as relu_forward (NaN
    kept). A convolution's row cropped and normalized in one pass (numba_blocked's inference
    epilogue), and in a residual block the sum and its ReLU with it."""
    scalars = (bias, mean, invstd, gamma, beta)
    if not (_contiguous_float_arrays(dst, src, residual) and all(isinstance(v, types.Float) for v in scalars)
            and isinstance(relu, types.Boolean) and isinstance(add, types.Boolean)):
        return None

    def codegen(context, builder, signature, args):
        dst_t, src_t, residual_t = signature.args[0], signature.args[2], signature.args[11]
        ops = _Pairs(context, builder, dst_t.dtype)
        as64 = lambda i: context.cast(builder, args[i], signature.args[i], types.int64)      # noqa: E731
        dst_at, src_at, count, residual_at = as64(1), as64(3), as64(4), as64(12)
        dst_data = context.make_array(dst_t)(context, builder, args[0]).data
        src_data = context.make_array(src_t)(context, builder, args[2]).data
        residual_data = context.make_array(residual_t)(context, builder, args[11]).data
        lanes = 2 * PAIRS
        vector = ops.vector(lanes)
        bias_v, mean_v, invstd_v, gamma_v, beta_v = (
            splat(builder, context.cast(builder, args[i], signature.args[i], dst_t.dtype), vector) for i in range(5, 10))
        relu_flag, add_flag = args[10], args[13]
        zeros = ir.Constant(vector, [0.0] * lanes)
        with ops.steps(count) as (q, values):
            first = builder.add(q, q)
            v = ops.load(builder.gep(src_data, [builder.add(src_at, first)]), values, lanes)
            v = builder.fadd(builder.fmul(builder.fmul(builder.fsub(builder.fadd(v, bias_v), mean_v), invstd_v),
                                          gamma_v), beta_v)
            read = builder.select(add_flag, values, ir.Constant(ops.int64, 0))     # nothing read without add
            r = ops.load(builder.gep(residual_data, [builder.add(residual_at, first)]), read, lanes)
            v = builder.select(add_flag, builder.fadd(v, r), v)
            kept = builder.or_(builder.fcmp_ordered(">", v, zeros), builder.fcmp_unordered("uno", v, v))
            v = builder.select(relu_flag, builder.select(kept, v, zeros), v)
            ops.store(v, builder.gep(dst_data, [builder.add(dst_at, first)]), values)
        return context.get_dummy_value()

    return types.void(dst, dst_at, src, src_at, count, bias, mean, invstd, gamma, beta, relu, residual, residual_at,
                      add), codegen


def _contiguous_float_arrays(*arrays):
    """The runs step through memory: arrays of other layouts (a strided row) are refused when the
    kernel compiles, never read at the wrong places."""
    return _float_arrays(*arrays) and all(a.layout == "C" for a in arrays)


def _run_codegen(context, builder, signature, args, shift):
    """copy_run, and shifted_run (shift: the last argument added)."""
    dst_t = signature.args[0]
    ops = _Pairs(context, builder, dst_t.dtype)
    as64 = lambda i: context.cast(builder, args[i], signature.args[i], types.int64)      # noqa: E731
    dst_at, src_at, count = as64(1), as64(3), as64(4)
    dst_data = context.make_array(dst_t)(context, builder, args[0]).data
    src_data = context.make_array(signature.args[2])(context, builder, args[2]).data
    lanes = 2 * PAIRS
    if shift:
        shift_by = splat(builder, context.cast(builder, args[5], signature.args[5], dst_t.dtype), ops.vector(lanes))
    with ops.steps(count) as (q, values):
        first = builder.add(q, q)
        row = ops.load(builder.gep(src_data, [builder.add(src_at, first)]), values, lanes)
        ops.store(builder.fadd(row, shift_by) if shift else row, builder.gep(dst_data, [builder.add(dst_at, first)]), values)
    return context.get_dummy_value()


class _Pairs:
    """IR for split_pairs and merge_pairs: PAIRS-lane halves and 2*PAIRS-lane rows, masked by count."""

    def __init__(self, context, builder, dtype):
        self.builder = builder
        self.scalar = context.get_data_type(dtype)
        self.bits = dtype.bitwidth
        self.align = ir.Constant(ir.IntType(32), dtype.bitwidth // 8)
        self.int64 = ir.IntType(64)

    def vector(self, lanes):
        return ir.VectorType(self.scalar, lanes)

    def _mask(self, count, lanes):
        b = self.builder
        int64s = ir.VectorType(self.int64, lanes)
        return b.icmp_signed("<", ir.Constant(int64s, list(range(lanes))), splat(b, count, int64s))

    def _intrinsic(self, kind, lanes):
        vector, pointer = self.vector(lanes), self.scalar.as_pointer()
        mask = ir.VectorType(ir.IntType(1), lanes)
        name = f"llvm.masked.{kind}.v{lanes}f{self.bits}.p0"
        if kind == "load":
            fnty = ir.FunctionType(vector, [pointer, ir.IntType(32), mask, vector])
        else:
            fnty = ir.FunctionType(ir.VoidType(), [vector, pointer, ir.IntType(32), mask])
        return self.builder.module.declare_intrinsic(name, fnty=fnty)

    def load(self, at, count, lanes):
        zeros = ir.Constant(self.vector(lanes), [0.0] * lanes)
        return self.builder.call(self._intrinsic("load", lanes), [at, self.align, self._mask(count, lanes), zeros])

    def store(self, vector, at, count):
        lanes = vector.type.count
        self.builder.call(self._intrinsic("store", lanes), [vector, at, self.align, self._mask(count, lanes)])

    def evens(self, pixels):                     # how many of `pixels` have an even index: ceil(pixels / 2)
        return self.builder.ashr(self.builder.add(pixels, ir.Constant(self.int64, 1)), ir.Constant(self.int64, 1))

    def odds(self, pixels):
        return self.builder.ashr(pixels, ir.Constant(self.int64, 1))

    def deinterleave(self, row):
        i32s = ir.VectorType(ir.IntType(32), PAIRS)
        even = self.builder.shuffle_vector(row, row, ir.Constant(i32s, list(range(0, 2 * PAIRS, 2))))
        odd = self.builder.shuffle_vector(row, row, ir.Constant(i32s, list(range(1, 2 * PAIRS, 2))))
        return even, odd

    def interleave(self, evens, odds):
        order = [k for q in range(PAIRS) for k in (q, PAIRS + q)]
        return self.builder.shuffle_vector(evens, odds, ir.Constant(ir.VectorType(ir.IntType(32), 2 * PAIRS), order))

    def steps(self, width):
        """A loop over the row, 2*PAIRS pixels a step: yields (q, pixels) = (the step's first pair, how
        many pixels it covers, at most 2*PAIRS)."""
        return _PairSteps(self, width)


class _PairSteps:
    def __init__(self, ops, width):
        b, int64 = ops.builder, ops.int64
        self.ops, self.width = ops, width
        per_step = ir.Constant(int64, 2 * PAIRS)
        n_steps = b.sdiv(b.add(width, ir.Constant(int64, 2 * PAIRS - 1)), per_step)
        self.loop = cgutils.for_range(b, n_steps)

    def __enter__(self):
        b, int64 = self.ops.builder, self.ops.int64
        step = self.loop.__enter__().index
        first_pixel = b.mul(step, ir.Constant(int64, 2 * PAIRS))
        left = b.sub(self.width, first_pixel)
        pixels = b.select(b.icmp_signed("<", left, ir.Constant(int64, 2 * PAIRS)), left, ir.Constant(int64, 2 * PAIRS))
        return b.mul(step, ir.Constant(int64, PAIRS)), pixels

    def __exit__(self, *exc):
        return self.loop.__exit__(*exc)
