"""One explicit vector operation for the Numba kernels: a multiply-add on a short row.

    row_fma(dst, d, src, s, v, width):    dst[d:d + width] += v * src[s:s + width],   width <= LANES

Numba compiles with LLVM's SLP vectorizer off (it once miscompiled code: numba issue 8705), so a
short row of constant length, fully unrolled, stays a run of scalar instructions; and LLVM's loop
vectorizer only pays off for loops longer than its vector body (32 floats here), so a row of a
runtime length 5 runs its scalar remainder loop. A 5-tap kernel row fell between the two: 5 scalar
loads, multiply-adds and stores. As one row_fma it is one vector load from each side, one fused
multiply-add and one store. Lanes at and past `width` are masked: neither read nor written, so a
row may end at the very end of an array, and two threads may update neighbouring rows.

Both arrays must have the same dtype, float32 or float64; d and s count elements from the start of
each array's data (no bounds check: the caller keeps every row inside its array). The multiply-add
is fused (one rounding), as under the kernels' 'contract' flag.
"""
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

LANES = 8


@intrinsic
def row_fma(typingctx, dst, d, src, s, v, width):
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype
            and dst.dtype in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        dst_type, d_type, src_type, s_type, v_type, width_type = signature.args
        dtype = dst_type.dtype
        vector = ir.VectorType(context.get_data_type(dtype), LANES)
        int64 = ir.IntType(64)
        dst_at = builder.gep(context.make_array(dst_type)(context, builder, args[0]).data,
                             [context.cast(builder, args[1], d_type, types.int64)])
        src_at = builder.gep(context.make_array(src_type)(context, builder, args[2]).data,
                             [context.cast(builder, args[3], s_type, types.int64)])
        width = _splat(builder, context.cast(builder, args[5], width_type, types.int64), ir.VectorType(int64, LANES))
        mask = builder.icmp_unsigned("<", ir.Constant(ir.VectorType(int64, LANES), list(range(LANES))), width)
        value = _splat(builder, context.cast(builder, args[4], v_type, dtype), vector)

        name = f"v{LANES}f{dtype.bitwidth}"
        i32, pointer = ir.IntType(32), dst_at.type
        load = builder.module.declare_intrinsic(
            f"llvm.masked.load.{name}.p0", fnty=ir.FunctionType(vector, [pointer, i32, mask.type, vector]))
        store = builder.module.declare_intrinsic(
            f"llvm.masked.store.{name}.p0", fnty=ir.FunctionType(ir.VoidType(), [vector, pointer, i32, mask.type]))
        fma = builder.module.declare_intrinsic(f"llvm.fma.{name}", fnty=ir.FunctionType(vector, [vector] * 3))
        align, zeros = ir.Constant(i32, dtype.bitwidth // 8), ir.Constant(vector, [0.0] * LANES)
        a = builder.call(load, [src_at, align, mask, zeros])
        b = builder.call(load, [dst_at, align, mask, zeros])
        builder.call(store, [builder.call(fma, [value, a, b]), dst_at, align, mask])
        return context.get_dummy_value()

    return types.void(dst, d, src, s, v, width), codegen


def _splat(builder, scalar, vector_type):
    """The vector with every lane equal to scalar."""
    lane0 = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lane0, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count))
