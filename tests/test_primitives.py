"""The backend primitives on their own: a naive loop reference for convolution, the adjoint
identity of im2col/col2im, and agreement of every CPU backend with the NumPy reference."""
import itertools
from fractions import Fraction

import numpy as np
import pytest

from conftest import tolerance
from minicnn import backend
from minicnn.backend import numpy_ops
from minicnn.backend.im2col_conv import output_size

rng = np.random.default_rng(2)
GEOMETRIES = [(KH, KW, S, P, D) for KH, KW, S, P, D in itertools.product([1, 2, 3], [1, 3], [1, 2], [0, 1, 3], [1, 2])
              if not (D == 2 and KH == KW == 1) and not (P == 3 and D == 1 and S == 1)]   # KH, KW, stride, padding, dilation


def naive_conv(x, w, stride, pad, dilation=1):
    """Seven nested loops: the definition of cross-correlation, kept as the slow reference."""
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    OH = (H + 2 * pad - dilation * (KH - 1) - 1) // stride + 1
    OW = (W + 2 * pad - dilation * (KW - 1) - 1) // stride + 1
    y = np.zeros((N, OC, OH, OW))
    for n, o, i, j in itertools.product(range(N), range(OC), range(OH), range(OW)):
        for c, u, v in itertools.product(range(C), range(KH), range(KW)):
            y[n, o, i, j] += w[o, c, u, v] * xp[n, c, i * stride + u * dilation, j * stride + v * dilation]
    return y


@pytest.mark.parametrize("KH,KW,S,P,D", GEOMETRIES)
def test_im2col_gemm_equals_naive_convolution(cpu_backend, KH, KW, S, P, D):
    x = rng.standard_normal((2, 3, 6, 7))
    w = rng.standard_normal((4, 3, KH, KW))
    ops = backend.ops_for(x)
    col = ops.im2col(x, (KH, KW), (S, S), (P, P), (D, D))
    OH, OW = output_size(6, KH, S, P, D), output_size(7, KW, S, P, D)
    y = (col @ w.reshape(4, -1).T).reshape(2, OH, OW, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, naive_conv(x, w, S, P, D), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("KH,KW,S,P,D", GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(cpu_backend, KH, KW, S, P, D):
    x = rng.standard_normal((2, 3, 6, 7))
    ops = backend.ops_for(x)
    col = ops.im2col(x, (KH, KW), (S, S), (P, P), (D, D))
    c = rng.standard_normal(col.shape)
    lhs = np.sum(col * c)
    rhs = np.sum(x * ops.col2im(c, x.shape, (KH, KW), (S, S), (P, P), (D, D)))
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize("KH,KW,S,P,D", GEOMETRIES)
def test_backends_agree_with_the_numpy_reference(cpu_backend, KH, KW, S, P, D, dtype):
    x = rng.permutation(np.linspace(-1, 1, 2 * 3 * 6 * 7)).reshape(2, 3, 6, 7).astype(dtype)
    ops, ref = backend.ops_for(x), numpy_ops
    args = ((KH, KW), (S, S), (P, P), (D, D))
    close = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.im2col(x, *args), ref.im2col(x, *args))
    col = rng.standard_normal(ref.im2col(x, *args).shape).astype(dtype)
    np.testing.assert_allclose(ops.col2im(col, x.shape, *args), ref.col2im(col, x.shape, *args), **close)
    args = args[:3]
    if P <= min(KH, KW) // 2 and D == 1:
        y, record = ops.maxpool2d_forward(x, *args)
        y_ref, record_ref = ref.maxpool2d_forward(x, *args)
        np.testing.assert_array_equal(y, y_ref)
        dy = rng.permutation(np.arange(1, y.size + 1)).reshape(y.shape).astype(dtype)   # the winners, told apart
        np.testing.assert_array_equal(ops.maxpool2d_backward(dy, record), ref.maxpool2d_backward(dy, record_ref))


def test_backend_switch():
    previous = backend.set_backend("numpy")
    try:
        assert backend.get_backend() == "numpy"
        assert backend.ops_for(np.zeros(1)).name == "numpy"
        with pytest.raises(ValueError, match="expected one of"):
            backend.set_backend("tpu")
    finally:
        backend.set_backend(previous)


@pytest.mark.parametrize("nan", [False, True], ids=["no NaN", "NaN"])
def test_max_pool_breaks_ties_as_torch_does(cpu_backend, dtype, nan):
    """Small integers make ties in most windows, zeros come with both signs: every backend (Numba's
    2x2 kernel sweeps vectorized and redoes planes with a NaN) must pick the first maximum, or the
    last NaN, and return its very bits (-0.0 stays -0.0), as torch does."""
    import torch
    x = rng.integers(-2, 3, (3, 4, 7, 9)).astype(dtype)
    x[x == 0] = rng.choice(np.array([0.0, -0.0], dtype=dtype), int((x == 0).sum()))
    if nan:
        x[rng.random(x.shape) < 0.05] = np.nan
    ops = backend.ops_for(x)
    y, record = ops.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 2)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(np.signbit(y), np.signbit(yt.detach().numpy()))
    dy = rng.permutation(np.arange(1, y.size + 1)).reshape(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(ops.maxpool2d_backward(dy, record), xt.grad.numpy())


def test_matmul_with_an_inner_dimension_of_one_is_the_outer_product(cpu_backend, dtype):
    """A Linear layer's weight gradient at batch 1 goes through broadcasting, not BLAS: the same bits."""
    a = rng.standard_normal((1, 7)).astype(dtype).T                   # a transposed view, as dy.T
    b = rng.standard_normal((1, 5)).astype(dtype)
    ops = backend.ops_for(a)
    out = ops.matmul(a, b)
    assert out.shape == (7, 5) and out.dtype == dtype
    np.testing.assert_array_equal(out, a @ b)
    np.testing.assert_array_equal(ops.matmul(b.T, a.T), b.T @ a.T)    # (5, 1) @ (1, 7)


@pytest.mark.parametrize("shape", [(1000, 300, 120), (64, 1600, 512), (512, 64, 1600), (4099, 1029, 5), (3, 1400, 4097)],
                         ids=["rows", "columns", "weight-gradient", "odd rows", "odd columns"])
def test_numba_matmul_in_parts_equals_one_product(dtype, shape):
    """Numba's matmul cuts a large product into row or column blocks for the cores: every shape gets
    the product (to rounding: OpenBLAS's bits depend on the block's size), views and transposes
    included, and the same bits on 1 and 2 threads (the blocks depend on the shapes only)."""
    pytest.importorskip("numba")
    from minicnn.backend import cores, numba_ops, numba_strategy
    M, K, N = shape
    a = rng.standard_normal((K, M)).astype(dtype).T                   # a transposed view, as dy.T
    b = rng.standard_normal((K, N)).astype(dtype)
    assert 2 * M * K * N >= 2 * numba_strategy.current().matmul_task_flops     # the test means something
    old = cores.threads()
    try:
        cores.set_threads(1)
        one = numba_ops.matmul(a, b)
        cores.set_threads(2)
        two = numba_ops.matmul(a, b)
    finally:
        cores.set_threads(old)
    tol = tolerance(dtype)
    np.testing.assert_allclose(one, a @ b, rtol=tol["rtol"], atol=tol["atol"] * np.abs(a @ b).max())
    np.testing.assert_array_equal(one, two)
    assert one.flags.c_contiguous and one.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_fma_touches_exactly_its_row(dtype):
    """simd.row_fma(dst, d, src, s, v, width): dst[d:d+width] += v * src[s:s+width], one fused
    multiply-add per lane; the lanes past width are neither read (a NaN there stays out) nor
    written (the neighbours keep their bits), for every width up to LANES, rows ending at the very
    end of both arrays included."""
    from numba import njit
    from minicnn.backend.simd import LANES, row_fma

    @njit
    def call(dst, d, src, s, v, width):
        row_fma(dst, d, src, s, v, width)

    for width in range(1, LANES + 1):
        for d, s in [(3, 0), (0, 5), (20 - width, 20 - width)]:
            src = rng.standard_normal(20).astype(dtype)
            dst = rng.standard_normal(20).astype(dtype)
            src[s + width:] = np.nan
            dst[d + width:] = np.nan
            expected = dst.copy()
            v = dtype(rng.standard_normal())
            expected[d:d + width] = [float(Fraction(float(v)) * Fraction(float(a)) + Fraction(float(b)))
                                     for a, b in zip(src[s:s + width], dst[d:d + width])]   # one rounding
            call(dst, d, src, s, v, width)
            np.testing.assert_array_equal(dst, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_pairs_and_merge_pairs_move_exactly_a_row(dtype):
    """simd.split_pairs sends a row's even pixels to one place and its odd pixels to another (the
    stride-2 depthwise split), merge_pairs puts them back; every width from 1 to past two vector
    steps (odd ones end on a lone even pixel), rows ending at the very end of the arrays, and the
    neighbours (NaN around the destination) keep their bits: nothing past the row is read or written."""
    from numba import njit
    from minicnn.backend.simd import PAIRS, merge_pairs, split_pairs

    @njit
    def split(dst, even_at, odd_at, src, src_at, width):
        split_pairs(dst, even_at, odd_at, src, src_at, width)

    @njit
    def merge(dst, dst_at, src, even_at, odd_at, width):
        merge_pairs(dst, dst_at, src, even_at, odd_at, width)

    for width in range(1, 4 * PAIRS + 4):
        evens, odds = (width + 1) // 2, width // 2
        src = np.full(width + 8, np.nan, dtype=dtype)
        src[8:] = rng.standard_normal(width)                   # the row ends at the array's end
        dst = np.full(3 + evens + 2 + odds, np.nan, dtype=dtype)
        even_at, odd_at = 3, 3 + evens + 2                      # the odd pixels end at the array's end
        split(dst, even_at, odd_at, src, 8, width)
        expected = np.full(dst.shape, np.nan, dtype=dtype)
        expected[even_at:even_at + evens] = src[8::2]
        expected[odd_at:odd_at + odds] = src[9::2]
        np.testing.assert_array_equal(dst, expected)
        back = np.full(width + 5, np.nan, dtype=dtype)
        merge(back, 5, dst, even_at, odd_at, width)
        np.testing.assert_array_equal(back[5:], src[8:])
        assert np.isnan(back[:5]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copy_run_and_shifted_run_touch_exactly_their_run(dtype):
    """simd.copy_run copies a run's bits (-0.0, NaN, inf too) and shifted_run adds a value to each
    (the bias of a cropped row); every length from 0 to past three vector steps, runs ending at the
    very end of both arrays, and the neighbours (NaN around the destination) keep their bits."""
    from numba import njit
    from minicnn.backend.simd import PAIRS, copy_run, shifted_run

    @njit
    def copy(dst, dst_at, src, src_at, count):
        copy_run(dst, dst_at, src, src_at, count)

    @njit
    def shifted(dst, dst_at, src, src_at, count, value):
        shifted_run(dst, dst_at, src, src_at, count, value)

    for count in range(0, 6 * PAIRS + 3):
        src = np.full(count + 5, np.nan, dtype=dtype)
        src[5:] = rng.standard_normal(count)                   # the run ends at the array's end
        src[5:][::7] = -0.0
        src[5:][3::11] = np.inf
        dst = np.full(count + 3, np.nan, dtype=dtype)
        copy(dst, 3, src, 5, count)
        assert np.isnan(dst[:3]).all()
        assert dst[3:].tobytes() == src[5:].tobytes()
        dst = np.full(count + 6, np.nan, dtype=dtype)
        shifted(dst, 2, src, 5, count, dtype(0.25))
        assert np.isnan(dst[:2]).all() and np.isnan(dst[2 + count:]).all()
        np.testing.assert_array_equal(dst[2:2 + count], src[5:] + dtype(0.25))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_major_transposes_every_channel_and_pixel(dtype):
    """numba_blocked._pixel_major (the blocked weight gradient's dy, a pixel's output channels side
    by side) equals NumPy's transposition with zeros past the channels, whatever the channels and
    pixels left over after whole vector-by-vector blocks (its shuffled blocks, its scalar edges);
    NaN and inf move like any value, and nothing past a sample's rows is written."""
    from minicnn.backend.numba_blocked import VECTOR_BYTES, _pixel_major
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    for n, OC, OH, OW in [(1, lanes, 4, 4), (2, 2 * lanes, 7, 7), (3, lanes + 3, 5, 3), (2, 3, 1, 1), (1, 4 * lanes, 14, 14)]:
        dy = rng.standard_normal((n, OC, OH, OW)).astype(dtype)
        dy[0, -1, 0, -1], dy[-1, 0, -1, 0] = np.nan, -np.inf
        OCv = -(-OC // lanes) * lanes
        D = np.full((n + 1, OH * OW, OCv), 7.0, dtype=dtype)          # one sample more: must stay untouched
        _pixel_major(dy, D[:n], lanes)
        expected = np.zeros((n, OH * OW, OCv), dtype=dtype)
        expected[:, :, :OC] = dy.reshape(n, OC, OH * OW).transpose(0, 2, 1)
        np.testing.assert_array_equal(D[:n], expected)
        assert (D[n] == 7.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_rows_adds_every_listed_row(dtype):
    """simd.sum_rows(acc, a, src, at, value, first, last, offset, width): acc[a:a+LANES] += the sum
    over m in [first, last) of value[m] * src[at[m] + offset:][:width], lanes past width untouched;
    every count of rows from none to several turns of its running sums, and rows at the very end
    of src (a NaN past a row's width must stay out)."""
    from numba import njit
    from minicnn.backend.simd import LANES, SUMS, sum_rows

    @njit
    def call(acc, a, src, at, value, first, last, offset, width):
        sum_rows(acc, a, src, at, value, first, last, offset, width)

    for width in (1, 3, 5, LANES):
        for first, last in [(0, 0), (2, 3), (1, 1 + SUMS), (0, 3 * SUMS + 2)]:
            src = rng.standard_normal(64).astype(dtype)
            src[-3:] = np.nan
            at = rng.integers(0, 40, 20).astype(np.int64)
            at[-1] = 64 - 3 - width - 2                 # a row ending just before the NaN tail
            value = rng.standard_normal(20).astype(dtype)
            acc = rng.standard_normal(3 * LANES).astype(dtype)
            expected = acc.astype(np.float64)
            rows = [value[m] * src[at[m] + 2:at[m] + 2 + width].astype(np.float64) for m in range(first, last)]
            expected[LANES:LANES + width] += np.sum(rows, axis=0) if rows else 0
            call(acc, LANES, src, at, value, first, last, 2, width)
            tol = 1e-5 if dtype == np.float32 else 1e-13
            np.testing.assert_allclose(acc, expected, rtol=tol, atol=tol)
            assert np.isfinite(acc).all()


def test_batchnorm_relu_backward_masks_exactly_where_forward_rectified():
    """Numba's fused batch-norm + ReLU backward does not read the output back: it recomputes
    x * alpha + shift (one fused multiply-add, as forward) for the ReLU's mask. Near the kink the
    two must agree to the bit: here, per channel, values at every float32 step across the point
    where the output changes sign; both passes follow the exact sign of x * alpha + shift, where a
    product rounded before the add would differ (the test checks that it would)."""
    from minicnn.backend import numba_norm
    C, center = 256, np.float32(1.2345)
    spread = rng.uniform(0.1, 3, 500).astype(np.float32)
    near = (center + np.arange(-300, 301) * np.spacing(center)).astype(np.float32)
    x = np.tile(np.concatenate([center + spread, center - spread, near]).astype(np.float32), (1, C, 1))
    gamma, beta = rng.uniform(0.5, 2, C).astype(np.float32), np.zeros(C, np.float32)
    y, _, _, record = numba_norm.batchnorm_relu_forward_train(x, gamma, beta, 1e-5)
    alpha, shift = record[3][None, :, None], record[4][None, :, None]
    positive = x.astype(np.float64) * alpha.astype(np.float64) + shift.astype(np.float64) > 0   # exact
    assert ((x * alpha + shift > 0) != positive).sum() > 10        # the test means something
    np.testing.assert_array_equal(y > 0, positive)
    _, _, dbeta = numba_norm.batchnorm_relu_backward_train(np.ones_like(x), record, gamma)
    np.testing.assert_array_equal(dbeta, positive.sum(axis=(0, 2)))   # ones passed where positive


@pytest.mark.filterwarnings("ignore:invalid value encountered")            # inf + -inf, inf - inf
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 1), (5, 16, 49), (3, 8, 784), (64, 4, 30)])
def test_batchnorm_with_the_residual_sum_equals_its_ops_one_by_one(cpu_backend, dtype, shape, relu):
    """batchnorm_add_relu_forward_train / _backward_train (a residual block's last batch norm, its
    sum and ReLU in one step) give the bits of the backend's batchnorm_forward_train, add and
    relu_forward, and backward those of relu_backward and batchnorm_backward_train, the sum's gradient
    included: rows short and long (two loop orders), sums of exactly zero (the ReLU's kink), NaN and
    infinities in the residual. A residual of another shape is refused."""
    ops = backend.ops_for(np.zeros(1))
    x = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    gamma, beta = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    y_bn, mean, var, record = ops.batchnorm_forward_train(x, gamma, beta, 1e-5)
    residual = rng.standard_normal(shape).astype(dtype)
    flat, normalized = residual.reshape(-1), y_bn.reshape(-1)
    flat[::3] = -normalized[::3]                                       # sums of exactly zero
    if flat.size > 20:
        flat[[1, 4, 7]] = [np.nan, np.inf, -np.inf]
    y, mean2, var2, record2 = ops.batchnorm_add_relu_forward_train(x, gamma, beta, 1e-5, residual, relu)
    expected = ops.add(y_bn, residual)
    if relu:
        expected, rectified = ops.relu_forward(expected)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(var2, var)
    assert (y == 0).sum() >= flat.size // 3 if relu else True
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta, dsum = ops.batchnorm_add_relu_backward_train(dy, record2, gamma)
    expected_dsum = ops.relu_backward(dy, rectified) if relu else dy
    np.testing.assert_array_equal(dsum, expected_dsum)
    for got, want in zip((dx, dgamma, dbeta), ops.batchnorm_backward_train(expected_dsum, record, gamma)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"the two arrays must have one shape and dtype"):
        ops.batchnorm_add_relu_forward_train(x, gamma, beta, 1e-5, residual[:, :, :-1], relu)


@pytest.mark.filterwarnings("ignore:invalid value encountered in add:RuntimeWarning")     # inf + -inf
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (2, 5, 7, 3), (9, 17, 41, 43)])
def test_elementwise_sums_and_relu_equal_the_reference_to_the_bit(cpu_backend, monkeypatch, dtype, shape):
    """add, add_relu_forward and ReLU both ways (a residual block's sum, its ReLU and their
    gradients) give NumPy's bits, NaN and infinities included, whether one task computes them or
    several (the largest shape is past split_bytes: the test checks that it was split)."""
    from minicnn.backend import cores
    tasks = []
    run = cores.run
    monkeypatch.setattr(cores, "run", lambda task, n: tasks.append(n) or run(task, n))
    a, b, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    if a.size > 10:
        a.flat[[0, 3, 7]] = [np.nan, np.inf, -np.inf]
        b.flat[[3, 5, 7]] = [-np.inf, np.nan, 1]
        b.flat[9] = -a.flat[9]                                  # a sum of exactly zero: ReLU's kink
    ops = backend.ops_for(a)
    total = ops.add(a, b)
    np.testing.assert_array_equal(total, a + b)
    assert total.dtype == dtype and total.shape == shape
    y, record = ops.add_relu_forward(a, b)
    expected, _ = numpy_ops.relu_forward(a + b)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(ops.relu_forward(a + b)[0], expected)
    np.testing.assert_array_equal(ops.relu_backward(dy, record), numpy_ops.relu_backward(dy, expected))
    np.testing.assert_array_equal(ops.add(a[..., ::-1], b), a[..., ::-1] + b)      # a strided view
    if cpu_backend == "numba" and a.nbytes >= 2**18:
        assert tasks and min(tasks[-4:]) > 1                    # the large arrays went in parts
    with pytest.raises(ValueError, match="one shape and dtype"):
        ops.add(a, b.astype(np.float32 if dtype == np.float64 else np.float64))
    with pytest.raises(ValueError, match="one shape and dtype"):
        ops.add_relu_forward(a, b.reshape(-1))
