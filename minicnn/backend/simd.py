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
        widths = self._broadcast(context.cast(builder, width, width_type, types.int64), int64s)
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
        return self._broadcast(scalar, self.vector)

    def _broadcast(self, scalar, vector_type):
        lane0 = self.builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        return self.builder.shuffle_vector(lane0, ir.Constant(vector_type, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
