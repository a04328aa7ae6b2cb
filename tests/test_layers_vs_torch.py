"""Every layer against torch: forward, input gradient, parameter gradients and buffers, over
grids of shapes, strides, paddings, channels, batch sizes (1 included), modes and both dtypes."""
import contextlib
import itertools
import math

import numpy as np
import pytest
import torch

import minicnn.nn as nn
from conftest import dropout_mask, tolerance
from minicnn.backend import to_numpy
from torch_compare import assert_matches_torch, on_device, torch_device

rng = np.random.default_rng(0)


def random_input(shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def tie_free_input(shape, dtype):
    """A shuffled linspace: no two pixels equal, so max pooling has one winner per window."""
    values = np.linspace(-3, 3, int(np.prod(shape)))
    return rng.permutation(values).reshape(shape).astype(dtype)


# ------------------------------------------------------------------ Conv2d: 54 geometries x 2 dtypes

CONV_CASES = []
for i, (kernel, stride, padding) in enumerate(itertools.product(
        [1, 2, 3, 5, (2, 3), (3, 1)], [1, 2, 3], [0, 1, (2, 1)])):
    c_in, c_out = [(1, 1), (3, 8), (16, 4), (2, 16), (5, 3)][i % 5]
    batch = [1, 2, 3][i % 3]
    H, W = [(7, 9), (8, 8), (11, 6), (5, 13)][i % 4]
    CONV_CASES.append((kernel, stride, padding, c_in, c_out, batch, H, W, i % 4 != 3))


@pytest.mark.parametrize("kernel,stride,padding,c_in,c_out,batch,H,W,bias", CONV_CASES)
def test_conv2d(any_backend, dtype, kernel, stride, padding, c_in, c_out, batch, H, W, bias):
    layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias).to(dtype)
    ref = torch.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias)
    assert_matches_torch(layer, ref, random_input((batch, c_in, H, W), dtype), **tolerance(dtype))


# ------------------------------------------------------------------ Conv2d with dilation and groups

DILATED_GROUPED_CASES = []
for i, (kernel, stride, dilation, groups) in enumerate(itertools.product(
        [1, 3, (3, 2), 5], [1, 2], [1, 2, (2, 1)], ["two", "depthwise", "one"])):
    if kernel == 1 and dilation != 1:
        continue
    c_in = [4, 6, 2][i % 3]
    c_out = {"two": 2 * [3, 2][i % 2], "depthwise": c_in, "one": 3}[groups]
    g = {"two": 2, "depthwise": c_in, "one": 1}[groups]
    padding = [0, 1, (2, 1), 3][i % 4]
    batch = [1, 2, 3][i % 3]
    H, W = [(11, 9), (12, 12), (9, 13)][i % 3]
    DILATED_GROUPED_CASES.append((kernel, stride, padding, dilation, g, c_in, c_out, batch, H, W, i % 4 != 3))


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,c_in,c_out,batch,H,W,bias", DILATED_GROUPED_CASES)
def test_conv2d_dilation_and_groups(any_backend, dtype, kernel, stride, padding, dilation, groups, c_in, c_out,
                                    batch, H, W, bias):
    """torch's semantics: dilated taps, channels split into groups (depthwise when groups == C)."""
    layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      bias=bias).to(dtype)
    ref = torch.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          bias=bias)
    assert layer.weight.shape == tuple(ref.weight.shape)
    assert_matches_torch(layer, ref, random_input((batch, c_in, H, W), dtype), **tolerance(dtype))


@pytest.mark.parametrize("padding,kernel,dilation", [("same", 3, 1), ("same", 5, 2), ("same", (3, 5), (2, 1)),
                                                     ("valid", 3, 1), ("valid", (2, 3), 2)])
def test_conv2d_padding_by_name(cpu_backend, padding, kernel, dilation):
    layer = nn.Conv2d(2, 3, kernel, padding=padding, dilation=dilation).double()
    ref = torch.nn.Conv2d(2, 3, kernel, padding=padding, dilation=dilation)
    y, _ = assert_matches_torch(layer, ref, random_input((2, 2, 9, 8), np.float64), **tolerance(np.float64))
    if padding == "same":
        assert y.shape[2:] == (9, 8)


@pytest.mark.parametrize("kwargs,message", [
    (dict(groups=3), "groups=3 must divide in_channels"), (dict(groups=0), "groups must be >= 1"),
    (dict(padding="same", stride=2), "padding='same' needs stride 1"), (dict(padding="full"), "padding must be"),
    (dict(padding_mode="reflect"), "padding_mode='reflect' is not supported"), (dict(dilation=0), "dilation must be >= 1"),
    (dict(kernel_size=4, padding="same"), "odd")])
def test_conv2d_refuses_bad_arguments(kwargs, message):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        nn.Conv2d(4, 8, **kwargs)


def test_dilated_kernel_larger_than_the_input_is_a_clear_error(cpu_backend):
    layer = nn.Conv2d(1, 1, 3, dilation=4)
    with pytest.raises(ValueError, match=r"kernel 3x3 \(dilated to 9x9\) is larger than the padded input 7x7"):
        layer(np.zeros((1, 1, 7, 7), np.float32))


# ------------------------------------------------------------------ pooling: 60 geometries x 2 dtypes

POOL_CASES = []
for i, (kernel, stride, padding) in enumerate(itertools.product(
        [1, 2, 3, (2, 3), (3, 2)], [None, 1, 2, 3], [0, 1, (1, 0)])):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    if ph > kh // 2 or pw > kw // 2:
        continue
    batch, channels = [(1, 1), (2, 3), (3, 16)][i % 3]
    H, W = [(7, 9), (8, 8), (6, 11)][i % 3]
    POOL_CASES.append((kernel, stride, padding, batch, channels, H, W))


@pytest.mark.parametrize("kernel,stride,padding,batch,channels,H,W", POOL_CASES)
def test_maxpool2d(any_backend, dtype, kernel, stride, padding, batch, channels, H, W):
    layer = nn.MaxPool2d(kernel, stride=stride, padding=padding)
    ref = torch.nn.MaxPool2d(kernel, stride=stride, padding=padding)
    assert_matches_torch(layer, ref, tie_free_input((batch, channels, H, W), dtype), **tolerance(dtype))


@pytest.mark.parametrize("kernel,stride,padding,batch,channels,H,W", POOL_CASES)
def test_avgpool2d(any_backend, dtype, kernel, stride, padding, batch, channels, H, W):
    count_include_pad = batch != 2
    layer = nn.AvgPool2d(kernel, stride=stride, padding=padding, count_include_pad=count_include_pad)
    ref = torch.nn.AvgPool2d(kernel, stride=stride, padding=padding, count_include_pad=count_include_pad)
    assert_matches_torch(layer, ref, random_input((batch, channels, H, W), dtype), **tolerance(dtype))


@pytest.mark.parametrize("output_size,shape", [
    (1, (2, 3, 7, 5)), ((1, 1), (1, 16, 4, 4)), ((3, 2), (2, 3, 7, 5)), ((4, 4), (3, 2, 9, 9)), (5, (1, 2, 5, 5)),
    ((7, 3), (2, 1, 9, 11)), ((None, 2), (2, 3, 6, 7)), ((9, 12), (1, 2, 4, 5)), (1, (37, 64, 7, 7))])
def test_adaptive_avgpool2d(any_backend, dtype, output_size, shape):
    """Windows by torch's floor/ceil rule: overlapping, unequal or larger than the input; global
    pooling also of a batch large enough to go to the cores in chunks on Numba."""
    assert_matches_torch(nn.AdaptiveAvgPool2d(output_size), torch.nn.AdaptiveAvgPool2d(output_size),
                         random_input(shape, dtype), **tolerance(dtype))


ADAPTIVE_MAX_CASES = [
    (1, (2, 3, 7, 5)), ((1, 1), (1, 16, 4, 4)), ((3, 2), (2, 3, 7, 5)), ((4, 4), (3, 2, 9, 9)), (5, (1, 2, 5, 5)),
    ((7, 3), (2, 1, 9, 11)), ((None, 2), (2, 3, 6, 7)), ((9, 12), (1, 2, 4, 5))]


@pytest.mark.parametrize("output_size,shape", ADAPTIVE_MAX_CASES)
def test_adaptive_maxpool2d(any_backend, dtype, output_size, shape):
    """The same windows as the average's, each gradient to its winner, summed where windows overlap
    (a pixel can win several when the output is larger than the input)."""
    assert_matches_torch(nn.AdaptiveMaxPool2d(output_size), torch.nn.AdaptiveMaxPool2d(output_size),
                         tie_free_input(shape, dtype), **tolerance(dtype))


def test_adaptive_maxpool2d_ties_go_to_the_first_like_torch(any_backend, dtype):
    x = np.zeros((2, 3, 5, 6), dtype)
    x[:, :, 1:4, 2:5] = 2.0                           # equal maxima in every window
    dy = np.random.default_rng(2).standard_normal((2, 3, 2, 3)).astype(dtype)
    layer = nn.AdaptiveMaxPool2d((2, 3))
    layer(on_device(x))
    xt = torch.from_numpy(x).requires_grad_()
    torch.nn.AdaptiveMaxPool2d((2, 3))(xt).backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(to_numpy(layer.backward(on_device(dy))), xt.grad.numpy())


@pytest.mark.parametrize("bad", [0, -1, (2, 0), "1", (1, 2, 3), 1.5])
@pytest.mark.parametrize("kind", [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d])
def test_adaptive_pools_refuse_bad_sizes(kind, bad):
    with pytest.raises(ValueError, match=f"{kind.__name__}: output_size must be a positive int"):
        kind(bad)


def test_adaptive_maxpool2d_refuses_return_indices():
    with pytest.raises(ValueError, match="return_indices=True is not supported"):
        nn.AdaptiveMaxPool2d(1, return_indices=True)


def test_maxpool_overlapping_windows_accumulate(cpu_backend, dtype):
    """k3 s1 and k3 s2 (AlexNet's pools): one pixel can win several windows."""
    x = np.zeros((1, 1, 5, 5), dtype=dtype)
    x[0, 0, 2, 2] = 1.0                      # the centre wins all nine 3x3 windows (stride 1)
    x += tie_free_input(x.shape, dtype) * 1e-3
    layer = nn.MaxPool2d(3, stride=1)
    layer(x)
    dx = layer.backward(np.ones((1, 1, 3, 3), dtype=dtype))
    assert dx[0, 0, 2, 2] == 9 and dx.sum() == 9


# ------------------------------------------------------------------ batch norm

BN2D_CASES = list(itertools.product([1, 3, 16], [(1, 5, 4), (4, 3, 3), (2, 1, 7)], [True, False], [0.1, None]))


@pytest.mark.parametrize("channels,shape,training,momentum", BN2D_CASES)
def test_batchnorm2d(any_backend, dtype, channels, shape, training, momentum):
    batch, H, W = shape
    layer = nn.BatchNorm2d(channels, momentum=momentum).to(dtype)
    ref = torch.nn.BatchNorm2d(channels, momentum=momentum)
    _randomize_bn(layer, dtype)
    layer.train(training)
    x = random_input((batch, channels, H, W), dtype) * 2 + 0.5
    assert_matches_torch(layer, ref, x, **tolerance(dtype))


@pytest.mark.parametrize("shape,training,affine", list(itertools.product([(2, 5), (8, 3), (3, 4, 6), (1, 2, 5)], [True, False], [True, False])))
def test_batchnorm1d(any_backend, dtype, shape, training, affine):
    layer = nn.BatchNorm1d(shape[1], affine=affine).to(dtype)
    ref = torch.nn.BatchNorm1d(shape[1], affine=affine)
    _randomize_bn(layer, dtype)
    layer.train(training)
    assert_matches_torch(layer, ref, random_input(shape, dtype), **tolerance(dtype))


def test_batchnorm_running_stats_over_several_batches(cpu_backend, dtype):
    layer, ref = nn.BatchNorm2d(3).to(dtype), torch.nn.BatchNorm2d(3).to(torch.float64 if dtype == np.float64 else torch.float32)
    import minicnn as mc
    for _ in range(4):
        x = random_input((4, 3, 5, 5), dtype) * 3 + 1
        with mc.no_grad():                            # training mode: the running statistics still move
            layer(x)
        ref(torch.from_numpy(x))
    for name, value in ref.state_dict().items():
        np.testing.assert_allclose(layer.state_dict()[name], value.numpy(), **tolerance(dtype))
    assert int(layer.num_batches_tracked) == 4


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (8, 16, 32, 32)], ids=["one task", "split by channels"])
def test_batchnorm_eval_is_the_same_on_every_cpu_backend(dtype, shape):
    """Eval-mode batch norm (running statistics) through the backends' batchnorm_forward_eval:
    Numba's one-pass kernel (by channels on the cores when large) must give NumPy's bits, with
    grad on (xhat kept for backward: the input gradient too) and under no_grad (xhat skipped),
    NaN included, and match torch."""
    import minicnn as mc
    layer = nn.BatchNorm2d(shape[1]).to(dtype)
    _randomize_bn(layer, dtype)
    layer.eval()
    x = random_input(shape, dtype) * 2 + 0.5
    x[0, 0, 0, :2] = np.nan
    dy = random_input(shape, dtype)
    results = {}
    for name in ("numpy", "numba"):
        with mc.backend.use_backend(name):
            with mc.no_grad():
                inference = layer(x)
            y = layer(x)
            layer.zero_grad()
            results[name] = (inference, y, layer.backward(dy), layer.weight.grad.copy(), layer.bias.grad.copy())
    for a, b in zip(results["numpy"], results["numba"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(results["numba"][0], results["numba"][1])
    x[0, 0, 0, :2] = 0.5
    with mc.backend.use_backend("numba"):
        ref = torch.nn.BatchNorm2d(shape[1]).eval()
        assert_matches_torch(layer, ref, x, **tolerance(dtype))


def _randomize_bn(layer, dtype):
    c = layer.num_features
    if layer.affine:
        layer.weight.data[...] = rng.uniform(0.5, 1.5, c)
        layer.bias.data[...] = rng.standard_normal(c)
    layer.running_mean[...] = rng.standard_normal(c)
    layer.running_var[...] = rng.uniform(0.5, 2, c)


GROUP_NORM_CASES = [  # (groups, channels, input shape, affine)
    (2, 4, (3, 4, 5, 6), True), (1, 6, (2, 6, 3, 3), True), (6, 6, (1, 6, 4, 4), False), (3, 12, (2, 12), True),
    (4, 8, (2, 8, 7), True), (8, 32, (1, 32, 7, 7), True)]


@pytest.mark.parametrize("groups,channels,shape,affine", GROUP_NORM_CASES)
def test_group_norm(any_backend, dtype, groups, channels, shape, affine):
    """Per sample and group: the same in training and eval, batch 1 included."""
    layer = nn.GroupNorm(groups, channels, affine=affine).to(dtype)
    if affine:
        layer.weight.data[...] = rng.uniform(0.5, 1.5, channels)
        layer.bias.data[...] = rng.standard_normal(channels)
    x = random_input(shape, dtype) * 3 + 1
    tol = dict(tolerance(dtype))
    tol["atol"] *= max(1.0, math.prod(shape) ** 0.5 / 4)        # the weight gradients sum N*L products
    assert_matches_torch(layer, torch.nn.GroupNorm(groups, channels, affine=affine), x, **tol)
    layer.eval()
    assert_matches_torch(layer, torch.nn.GroupNorm(groups, channels, affine=affine), x, **tol)


def test_group_norm_refuses_groups_that_do_not_divide_and_other_channels():
    with pytest.raises(ValueError, match=r"GroupNorm\(3, 8\): num_channels must be divisible by num_groups"):
        nn.GroupNorm(3, 8)
    with pytest.raises(ValueError, match=r"expected input \(N, 8, \*\), got \(2, 4, 3, 3\)"):
        nn.GroupNorm(2, 8)(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected input \(N, 8, \*\), got \(8,\)"):
        nn.GroupNorm(2, 8)(np.zeros(8, np.float32))


# ------------------------------------------------------------------ activations, linear, flatten

ACTIVATIONS = [(nn.ReLU, torch.nn.ReLU, {}), (nn.LeakyReLU, torch.nn.LeakyReLU, {"negative_slope": 0.2}),
               (nn.Sigmoid, torch.nn.Sigmoid, {}), (nn.Tanh, torch.nn.Tanh, {}), (nn.SiLU, torch.nn.SiLU, {}),
               (nn.GELU, torch.nn.GELU, {}), (nn.GELU, torch.nn.GELU, {"approximate": "tanh"}),
               (nn.Hardtanh, torch.nn.Hardtanh, {"min_val": -2.0, "max_val": 1.5}), (nn.ReLU6, torch.nn.ReLU6, {}),
               (nn.Hardsigmoid, torch.nn.Hardsigmoid, {}), (nn.Hardswish, torch.nn.Hardswish, {}),
               (nn.Identity, torch.nn.Identity, {})]


@pytest.mark.parametrize("ours,theirs,kwargs", ACTIVATIONS,
                         ids=[f"{a[0].__name__}{'-' + a[2]['approximate'] if 'approximate' in a[2] else ''}"
                              for a in ACTIVATIONS])
@pytest.mark.parametrize("shape", [(1, 5), (3, 4, 5, 6), (2, 7)])
def test_activation(any_backend, dtype, ours, theirs, kwargs, shape):
    x = random_input(shape, dtype) * 4
    assert_matches_torch(ours(**kwargs), theirs(**kwargs), x, **tolerance(dtype))


@pytest.mark.parametrize("ours,theirs", [(nn.ReLU6, torch.nn.ReLU6), (lambda: nn.Hardtanh(-2, 1.5),
                                                                      lambda: torch.nn.Hardtanh(-2, 1.5)),
                                         (nn.Hardsigmoid, torch.nn.Hardsigmoid), (nn.Hardswish, torch.nn.Hardswish)],
                         ids=["ReLU6", "Hardtanh", "Hardsigmoid", "Hardswish"])
def test_piecewise_activations_equal_torch_bit_for_bit_at_their_corners(any_backend, dtype, ours, theirs):
    """At the corners (+-3, 0, 6, the Hardtanh's ends) each side's rule decides; torch's, to the bit.
    NaN is checked forward only: torch's gradient there differs between its vector and scalar loops."""
    corners = np.array([-6, -3, -2, -1.5, -1, 0, 1, 1.5, 2, 3, 6], dtype)
    x = np.concatenate([corners, np.nextafter(corners, 10), np.nextafter(corners, -10), [np.inf, -np.inf],
                        np.random.default_rng(3).standard_normal(500) * 4]).astype(dtype)[None]
    with np.errstate(invalid="ignore"):
        assert np.isnan(to_numpy(ours()(on_device(np.array([np.nan], dtype))))).all()
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(dtype)
    layer, ref = ours(), theirs()
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    with np.errstate(invalid="ignore"):               # -inf * 0 in Hardswish: NaN, as torch's
        y = to_numpy(layer(on_device(x)))
        dx = to_numpy(layer.backward(on_device(dy)))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy())


def test_hardtanh_refuses_empty_bounds():
    with pytest.raises(ValueError, match="max_val must be greater than min_val, got min_val=1, max_val=1"):
        nn.Hardtanh(1, 1)


def test_sigmoid_extreme_inputs_do_not_overflow(dtype):
    x = np.array([[-1e4, -50, 0, 50, 1e4]], dtype=dtype)
    with np.errstate(over="raise"):
        y = nn.Sigmoid()(x)
    np.testing.assert_allclose(y, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6)


@pytest.mark.parametrize("in_f,out_f,shape,bias", [
    (1, 1, (1, 1), True), (5, 3, (4, 5), True), (16, 7, (1, 16), False), (9, 12, (2, 3, 9), True),
    (400, 120, (3, 400), True), (3, 10, (8, 3), False)])
def test_linear(any_backend, dtype, in_f, out_f, shape, bias):
    layer = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    assert_matches_torch(layer, torch.nn.Linear(in_f, out_f, bias=bias), random_input(shape, dtype), **tolerance(dtype))


@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (2, 7), (3, 2, 2)])
def test_flatten(any_backend, dtype, shape):
    assert_matches_torch(nn.Flatten(), torch.nn.Flatten(), random_input(shape, dtype), **tolerance(dtype))


def test_gelu_refuses_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        nn.GELU(approximate="sigmoid")


# ------------------------------------------------------------------ residual connections

RESIDUAL_CASES = [  # (c_in, c_out, stride, shortcut, activation, batch, H, W)
    (3, 3, 1, "identity", "relu", 1, 6, 5), (4, 4, 1, "identity", None, 2, 7, 7), (2, 4, 2, "conv", "relu", 3, 9, 8),
    (3, 5, 1, "conv", "relu", 2, 5, 6), (4, 8, 2, "conv", None, 1, 8, 8), (3, 4, 1, "conv", "gelu", 2, 5, 5),
    (16, 16, 1, "identity", "relu", 8, 24, 24)]          # the last one's sums go to the cores in parts


@pytest.mark.parametrize("c_in,c_out,stride,shortcut,activation,batch,H,W", RESIDUAL_CASES)
def test_residual_block_matches_torch(any_backend, dtype, c_in, c_out, stride, shortcut, activation, batch, H, W):
    """activation(body(x) + shortcut(x)): the backward adds both paths' gradients; state_dict names
    equal a torch module with body / shortcut / activation attributes; batch norm buffers too."""
    from torch_compare import TorchResidual
    tnn = torch.nn

    def body(lib):
        return lib.Sequential(lib.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), lib.BatchNorm2d(c_out),
                              lib.ReLU(), lib.Conv2d(c_out, c_out, 3, padding=1))

    def skip(lib):
        return None if shortcut == "identity" else lib.Sequential(lib.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                                                  lib.BatchNorm2d(c_out))
    def act(lib):
        return {"relu": lib.ReLU, "gelu": lib.GELU, None: lambda: None}[activation]()
    layer = nn.Residual(body(nn), skip(nn), act(nn)).to(dtype)
    ref = TorchResidual(body(tnn), skip(tnn), act(tnn))
    assert list(layer.state_dict()) == list(ref.state_dict())
    tol = dict(tolerance(dtype))
    tol["atol"] *= max(1.0, (batch * H * W) ** 0.5 / 2)      # weight gradients sum batch*H*W products
    assert_matches_torch(layer, ref, random_input((batch, c_in, H, W), dtype), **tol)


def test_residual_shapes_must_agree_and_skip_the_input_gradient(cpu_backend):
    bad = nn.Residual(nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(ValueError, match=r"the body gives \(2, 4, 5, 5\) but the shortcut gives \(2, 3, 5, 5\)"):
        bad(random_input((2, 3, 5, 5), np.float32))
    with pytest.raises(TypeError, match="shortcut must be a Module or None"):
        nn.Residual(nn.ReLU(), shortcut="identity")
    import minicnn as mc
    block = mc.models.basic_block(2, 4, stride=2).double()
    x = random_input((2, 2, 6, 6), np.float64)
    dy = random_input(block(x).shape, np.float64)
    dx = block.backward(dy)
    grads = {k: p.grad.copy() for k, p in block.named_parameters()}
    block.zero_grad()
    block(x)
    assert block.backward(dy, input_grad=False) is None and dx.shape == x.shape
    for k, p in block.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[k], err_msg=k)


RESIDUAL_SUM_CASES = [  # (c_in, c_out, stride, shortcut, activation, batch, H, W)
    (16, 16, 1, "identity", "relu", 5, 10, 9), (8, 16, 2, "conv", "relu", 3, 11, 10), (16, 16, 1, "identity", None, 2, 7, 7),
    (16, 24, 1, "conv", "relu", 37, 8, 8), (3, 4, 1, "identity-mismatch", "relu", 2, 5, 5), (8, 8, 1, "identity", "gelu", 2, 6, 6)]


@pytest.mark.parametrize("c_in,c_out,stride,shortcut,activation,batch,H,W", RESIDUAL_SUM_CASES)
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_residual_inference_sums_in_the_last_step_with_the_bits_of_the_layers(monkeypatch, cpu_backend, dtype, c_in,
                                                                             c_out, stride, shortcut, activation,
                                                                             batch, H, W):
    """In inference a residual block whose body ends in a convolution and batch norm adds the skip
    (and applies the ReLU) as that step writes its output (conv2d_batchnorm_eval's residual), with the
    bits of the layers run one by one; a body of another kind, another activation, or a skip of
    another shape goes the usual way (the last with the usual error); NaN and inf land as in torch."""
    import minicnn as mc
    from minicnn.backend import numba_ops, numpy_ops
    from torch_compare import TorchResidual
    mismatch = shortcut == "identity-mismatch"

    def block(lib):
        body = lib.Sequential(lib.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), lib.BatchNorm2d(c_out),
                              lib.ReLU(), lib.Conv2d(c_out, c_out, 3, padding=1), lib.BatchNorm2d(c_out))
        skip = lib.Sequential(lib.Conv2d(c_in, c_out, 1, stride=stride, bias=False), lib.BatchNorm2d(c_out)) \
            if shortcut == "conv" else None
        act = {"relu": lib.ReLU, "gelu": lib.GELU, None: lambda: None}[activation]()
        return (lib.Residual if lib is nn else TorchResidual)(body, skip, act)
    net = block(nn).to(dtype)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            _randomize_bn(m, dtype)
    net.eval()
    summed = []
    ops = numba_ops if cpu_backend == "numba" else numpy_ops
    op = ops.conv2d_batchnorm_eval
    monkeypatch.setattr(ops, "conv2d_batchnorm_eval", lambda *a: summed.append(a[-1] is not None) or op(*a))
    x = random_input((batch, c_in, H, W), dtype)
    x[0, 0, 1, :2] = [np.nan, np.inf]
    with mc.no_grad():
        if mismatch:
            with pytest.raises(ValueError, match="the body gives"):
                net(x)
            return
        y = net(x)
        with mc.nn.chain.as_written():
            expected = net(x)
    fused = activation in ("relu", None) and cpu_backend == "numba"   # numpy runs no conv2d_batchnorm step
    assert (True in summed) == fused
    np.testing.assert_array_equal(y, expected)
    ref = block(torch.nn).to(torch.float64 if dtype == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()})
    with torch.no_grad():
        theirs = ref.eval()(torch.from_numpy(x)).numpy()
    for where in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(where(y), where(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(y[finite], theirs[finite], rtol=tolerance(dtype)["rtol"], atol=tolerance(dtype)["atol"] * 10)


@pytest.mark.parametrize("c_in,c_out,stride,shortcut,activation,batch,H,W", RESIDUAL_SUM_CASES)
def test_residual_training_sums_in_the_last_batch_norm_with_the_bits_of_the_layers(monkeypatch, cpu_backend, dtype, c_in,
                                                                                   c_out, stride, shortcut, activation,
                                                                                   batch, H, W):
    """In training a residual block whose body ends in a convolution and batch norm adds the skip
    (and applies the ReLU) as the batch norm writes its output (batchnorm_add_relu_forward_train),
    and backward takes the sum's gradient from the batch norm's backward: output, input gradient,
    every parameter's gradient and the running statistics have the bits of the layers run one by
    one, with input_grad=False too; another activation or a skip of another shape goes the usual
    way (the latter with its error)."""
    import minicnn as mc
    from minicnn.backend import numba_ops, numpy_ops
    net = nn.Residual(nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                                    nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                                    nn.BatchNorm2d(c_out)),
                      nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                      if shortcut == "conv" else None,
                      {"relu": nn.ReLU, "gelu": nn.GELU, None: lambda: None}[activation]()).to(dtype)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            _randomize_bn(m, dtype)
    start = {k: np.array(v, copy=True) for k, v in net.state_dict().items()}
    ops = numba_ops if cpu_backend == "numba" else numpy_ops
    summed = []
    op = ops.batchnorm_add_relu_forward_train
    monkeypatch.setattr(ops, "batchnorm_add_relu_forward_train", lambda *a: summed.append(1) or op(*a))
    x = random_input((batch, c_in, H, W), dtype)
    if shortcut == "identity-mismatch":
        with pytest.raises(ValueError, match="the body gives"):
            net(x)
        return

    def train(input_grad, as_written):
        net.load_state_dict(start)
        net.zero_grad()
        with mc.nn.chain.as_written() if as_written else contextlib.nullcontext():
            y = net(x)
            dx = net.backward(np.cos(y) + 0.5, input_grad=input_grad)
        return y, dx, {k: p.grad.copy() for k, p in net.named_parameters()}, net.state_dict()

    y, dx, grads, state = train(True, False)
    assert bool(summed) == (activation in ("relu", None) and cpu_backend == "numba")   # numpy runs no conv2d_batchnorm step
    y0, dx0, grads0, state0 = train(True, True)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(dx, dx0)
    for k in grads0:
        np.testing.assert_array_equal(grads[k], grads0[k], err_msg=k)
    for k in state0:
        np.testing.assert_array_equal(state[k], state0[k], err_msg=k)
    _, none, grads1, _ = train(False, False)
    assert none is None or shortcut == "identity"    # an identity skip's input gradient is the sum's anyway
    for k in grads0:
        np.testing.assert_array_equal(grads1[k], grads0[k], err_msg=k)


def test_batchnorm_refuses_a_residual_of_another_shape(cpu_backend):
    """The batch norm that adds a residual block's skip names itself and both shapes."""
    norm = nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4.*the residual to add must have the input's shape "
                                         r"\(2, 4, 3, 3\), got \(2, 4, 3, 2\)"):
        norm.normalize(random_input((2, 4, 3, 3), np.float32), residual=random_input((2, 4, 3, 2), np.float32))


def test_conv_batchnorm_eval_refuses_a_residual_of_another_shape(cpu_backend):
    """The op checks its residual before computing anything, on every backend, by the same words."""
    from minicnn import backend
    ops = backend.ops_for(np.zeros(1))
    x, w = random_input((2, 16, 6, 6), np.float32), random_input((16, 16, 3, 3), np.float32)
    c = np.ones(16, np.float32)
    with pytest.raises(ValueError, match=r"the residual has shape \(2, 16, 6, 5\), the convolution's output "
                                         r"\(2, 16, 6, 6\)"):
        ops.conv2d_batchnorm_eval(x, w, None, (1, 1), (1, 1), (1, 1), 1, c * 0, c, 1e-5, c, c * 0, True,
                                  np.zeros((2, 16, 6, 5), np.float32))


# ------------------------------------------------------------------ squeeze and excitation

SE_CASES = [  # (channels, squeezed, activation, scale activation, batch, H, W)
    (4, 2, "relu", "sigmoid", 1, 5, 6), (8, 2, "relu", "hardsigmoid", 3, 7, 7), (6, 6, "silu", "sigmoid", 2, 1, 1),
    (16, 4, "hardswish", "hardsigmoid", 2, 9, 4), (3, 8, "relu", "sigmoid", 4, 3, 3)]


@pytest.mark.parametrize("channels,squeezed,activation,scale_activation,batch,H,W", SE_CASES)
def test_squeeze_excitation_matches_torch(any_backend, dtype, channels, squeezed, activation, scale_activation,
                                          batch, H, W):
    """x * gate(x): the input gradient adds the direct path's and the gate's; torchvision's keys."""
    from torch_compare import TorchSqueezeExcitation

    def make(lib, module):
        return lambda: getattr(lib, {"relu": "ReLU", "silu": "SiLU", "hardswish": "Hardswish", "sigmoid": "Sigmoid",
                                     "hardsigmoid": "Hardsigmoid"}[module])()
    layer = nn.SqueezeExcitation(channels, squeezed, make(nn, activation), make(nn, scale_activation)).to(dtype)
    ref = TorchSqueezeExcitation(channels, squeezed, make(torch.nn, activation), make(torch.nn, scale_activation))
    assert list(layer.state_dict()) == list(ref.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    tol = dict(tolerance(dtype))
    tol["atol"] *= max(1.0, (batch * H * W) ** 0.5 / 2)      # the gate's gradient sums H*W products
    assert_matches_torch(layer, ref, random_input((batch, channels, H, W), dtype) * 3, **tol)


def test_squeeze_excitation_refuses_other_channels_and_dtypes(cpu_backend):
    layer = nn.SqueezeExcitation(4, 2)
    with pytest.raises(ValueError, match=r"expected input \(N, 4, H, W\), got \(2, 3, 5, 5\)"):
        layer(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(TypeError, match="input dtype float64 does not match the layer's float32"):
        layer(np.zeros((2, 4, 5, 5)))


# ------------------------------------------------------------------ dropout

def test_dropout_matches_torch_given_the_same_mask(dtype):
    layer = nn.Dropout(0.3)
    x = random_input((64, 50), dtype)
    y = layer(x)
    mask = dropout_mask(layer)
    assert mask.dtype == dtype and set(np.unique(mask)) <= {0, dtype(1 / 0.7)}
    kept = (mask != 0)
    xt = torch.from_numpy(x).requires_grad_()
    yt = xt * torch.from_numpy(kept.astype(dtype)) / (1 - 0.3)      # torch's formula with our mask
    np.testing.assert_allclose(y, yt.detach().numpy(), **tolerance(dtype))
    dy = random_input(x.shape, dtype)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), **tolerance(dtype))
    assert abs(kept.mean() - 0.7) < 0.03


def test_dropout_is_identity_in_eval_and_reproducible_with_a_seed(dtype):
    x = random_input((10, 10), dtype)
    layer = nn.Dropout(0.5).eval()
    assert np.array_equal(layer(x), x)
    import minicnn as mc
    a, b = nn.Dropout(0.5, seed=7), nn.Dropout(0.5, seed=7)
    with mc.no_grad():                                # masks only: no backward follows
        assert np.array_equal(a(x), b(x))
        assert not np.array_equal(a(x), nn.Dropout(0.5, seed=8)(x))


def test_dropout2d_drops_whole_channels_and_matches_torch_given_the_same_mask(any_backend, dtype):
    layer = nn.Dropout2d(0.25)
    x = random_input((64, 16, 3, 4), dtype)
    y = to_numpy(layer(on_device(x)))
    mask = to_numpy(dropout_mask(layer))
    assert mask.shape == x.shape and set(np.unique(mask)) <= {0, dtype(1 / 0.75)}
    assert (mask == mask[:, :, :1, :1]).all()                      # one draw per channel of each sample
    kept = mask[:, :, 0, 0] != 0
    assert abs(kept.mean() - 0.75) < 0.05 and kept.any(axis=0).all() and (~kept).any()
    xt = torch.from_numpy(x).requires_grad_()
    yt = xt * torch.from_numpy(kept[:, :, None, None].astype(dtype)) / (1 - 0.25)       # torch's formula
    np.testing.assert_allclose(y, yt.detach().numpy(), **tolerance(dtype))
    dy = random_input(x.shape, dtype)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(to_numpy(layer.backward(on_device(dy))), xt.grad.numpy(), **tolerance(dtype))


def test_dropout2d_is_identity_in_eval_reproducible_and_wants_images(dtype):
    x = random_input((4, 3, 5, 5), dtype)
    assert np.array_equal(nn.Dropout2d(0.5).eval()(x), x)
    import minicnn as mc
    with mc.no_grad():
        assert np.array_equal(nn.Dropout2d(0.5, seed=3)(x), nn.Dropout2d(0.5, seed=3)(x))
    with pytest.raises(ValueError, match=r"expected input \(N, C, H, W\), got \(4, 75\)"):
        nn.Dropout2d(0.5)(x.reshape(4, 75))
    with pytest.raises(ValueError, match=r"Dropout2d: p must be in \[0, 1\), got 1"):
        nn.Dropout2d(1)


# ------------------------------------------------------------------ cross-entropy

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("N,K", [(1, 2), (5, 10), (16, 3)])
def test_cross_entropy(any_backend, dtype, reduction, smoothing, N, K):
    logits = random_input((N, K), dtype) * 3
    labels = rng.integers(0, K, N)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    ref = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    lt = torch_device(torch.from_numpy(logits)).requires_grad_()
    loss_t = ref(lt, torch_device(torch.from_numpy(labels)))
    loss = loss_fn(on_device(logits), on_device(labels))
    np.testing.assert_allclose(to_numpy(loss), loss_t.detach().cpu().numpy(), **tolerance(dtype))
    assert loss.dtype == dtype
    dloss = None if reduction != "none" else random_input((N,), dtype)
    loss_t.backward(None if dloss is None else torch_device(torch.from_numpy(dloss)))
    dlogits = loss_fn.backward(None if dloss is None else on_device(dloss))
    assert dlogits.dtype == dtype
    np.testing.assert_allclose(to_numpy(dlogits), lt.grad.cpu().numpy(), **tolerance(dtype))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("N,K", [(1, 2), (5, 10), (16, 3)])
def test_nll_loss(any_backend, dtype, reduction, N, K):
    logp = torch.log_softmax(torch.from_numpy(random_input((N, K), dtype) * 3), 1).numpy()
    labels = rng.integers(0, K, N)
    loss_fn, ref = nn.NLLLoss(reduction=reduction), torch.nn.NLLLoss(reduction=reduction)
    lt = torch_device(torch.from_numpy(logp)).requires_grad_()
    loss_t = ref(lt, torch_device(torch.from_numpy(labels)))
    loss = loss_fn(on_device(logp), on_device(labels))
    np.testing.assert_allclose(to_numpy(loss), loss_t.detach().cpu().numpy(), **tolerance(dtype))
    dloss = None if reduction != "none" else random_input((N,), dtype)
    loss_t.backward(None if dloss is None else torch_device(torch.from_numpy(dloss)))
    dlogp = loss_fn.backward(None if dloss is None else on_device(dloss))
    assert dlogp.dtype == dtype
    np.testing.assert_allclose(to_numpy(dlogp), lt.grad.cpu().numpy(), **tolerance(dtype))


def test_log_softmax_then_nll_loss_is_the_cross_entropy(cpu_backend, dtype):
    logits, labels = random_input((6, 4), dtype) * 3, rng.integers(0, 4, 6)
    log_softmax, nll, ce = nn.LogSoftmax(dim=1), nn.NLLLoss(), nn.CrossEntropyLoss()
    np.testing.assert_allclose(nll(log_softmax(logits), labels), ce(logits, labels), **tolerance(dtype))
    np.testing.assert_allclose(log_softmax.backward(nll.backward()), ce.backward(), **tolerance(dtype))


def test_nll_loss_names_a_label_out_of_range_and_wants_log_probabilities(cpu_backend):
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) for 3 classes, got 3"):
        nn.NLLLoss()(np.zeros((2, 3), np.float32), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"expected log-probabilities \(N, K\), got \(2, 3, 1\)"):
        nn.NLLLoss()(np.zeros((2, 3, 1), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="NLLLoss: class weights"):
        nn.NLLLoss(weight=np.ones(3))


SOFTMAX_CASES = [((4, 10), 1), ((4, 10), -1), ((1, 3), 1), ((2, 5, 3, 4), 1), ((2, 5, 3, 4), -1), ((3, 7), 0),
                 ((2, 3, 4), 2)]


@pytest.mark.parametrize("kind", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES)
def test_softmax_and_log_softmax(any_backend, dtype, kind, shape, dim):
    x = random_input(shape, dtype) * 5
    assert_matches_torch(getattr(nn, kind)(dim=dim), getattr(torch.nn, kind)(dim=dim), x, **tolerance(dtype))


@pytest.mark.parametrize("kind", ["Softmax", "LogSoftmax"])
def test_softmax_is_stable_for_huge_scores_and_names_a_bad_dim(cpu_backend, dtype, kind):
    x = np.array([[1e4, 0, -1e4], [-1e4, 1e4, 1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        y = getattr(nn, kind)(dim=1)(x)
    np.testing.assert_allclose(y, getattr(torch, kind.lower().replace("logsoftmax", "log_softmax"))(
        torch.from_numpy(x), 1).numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="dim 2 is out of range for an input of 2 dimensions"):
        getattr(nn, kind)(dim=2)(x)
    with pytest.warns(UserWarning, match=r"implicit dimension choice \(1\) as torch makes it"):
        implicit = getattr(nn, kind)()(x)
    np.testing.assert_array_equal(implicit, y)


def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0, -1e4], [-1e4, 1e4, 1e4]], dtype=dtype)
    labels = np.array([0, 2])
    loss_fn = nn.CrossEntropyLoss()
    with np.errstate(over="raise", invalid="raise"):
        loss = loss_fn(logits, labels)
        grad = loss_fn.backward()
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    np.testing.assert_allclose(loss, ref.numpy(), rtol=1e-6, atol=1e-6)
    assert np.isfinite(grad).all()


def test_sequential_can_skip_the_input_gradient(cpu_backend, monkeypatch):
    """fit() asks for parameter gradients only; they must equal those of a full backward, and
    the first convolution must not fold a gradient back onto the images."""
    import minicnn as mc
    x = random_input((3, 1, 28, 28), np.float64)
    net = mc.models.LeNet().double()
    dy = random_input((3, 10), np.float64)
    net(x)
    net.zero_grad()
    asked = []
    from minicnn.nn.fused import ConvReLUPool          # the convolutions' step on Numba

    def spy_on(cls):
        original = cls.backward

        def spy(layer, dy, input_grad=True):
            dx = original(layer, dy, input_grad)
            conv = layer.layers[0] if cls is ConvReLUPool else layer
            asked.append((conv.in_channels, input_grad, dx is None))
            return dx
        monkeypatch.setattr(cls, "backward", spy)
    spy_on(mc.nn.Conv2d)
    spy_on(ConvReLUPool)
    assert net.backward(dy, input_grad=False) is None
    assert asked == [(6, True, False), (1, False, True)]     # the first conv computes no input gradient
    monkeypatch.undo()
    partial = {k: p.grad.copy() for k, p in net.named_parameters()}
    net.zero_grad()
    net(x)                                                    # each forward serves one backward
    assert net.backward(dy).shape == x.shape
    for k, p in net.named_parameters():
        np.testing.assert_array_equal(partial[k], p.grad)


@pytest.mark.parametrize("input_grad", [True, False])
def test_conv2d_in_chunks_equals_one_piece(cpu_backend, monkeypatch, strategy, input_grad):
    """Column matrices over the im2col path's budget are built per chunk of samples (and rebuilt in
    backward); results must match torch exactly as the one-piece path does."""
    from minicnn.backend import numpy_ops
    two_samples = 2 * 7 * 7 * 3 * 9 * 8                                     # two samples per chunk
    monkeypatch.setattr(numpy_ops, "_MAX_COL_BYTES", two_samples)
    strategy(max_col_bytes=two_samples, own_kernels=False)                # Numba: the im2col path too
    layer = nn.Conv2d(3, 4, 3, padding=1).to(np.float64)
    ref = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = random_input((5, 3, 7, 7), np.float64)
    if input_grad:
        assert_matches_torch(layer, ref, x, **tolerance(np.float64))
    else:
        layer(x)
        record = layer._saved.record
        assert record.algorithm == "im2col" and record.col is None and record.chunk == 2
        assert layer.backward(random_input((5, 4, 7, 7), np.float64), input_grad=False) is None


@pytest.mark.parametrize("make,fan_in", [(lambda: nn.Conv2d(16, 32, 3), 16 * 9), (lambda: nn.Linear(400, 120), 400)])
def test_default_initialization_follows_torch(make, fan_in):
    """torch: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); batch norm starts at 1 and 0."""
    layer = make()
    bound = 1 / np.sqrt(fan_in)
    w = layer.weight.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(layer.bias.data).max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound        # the std of U(-b, b)
    bn = nn.BatchNorm2d(4)
    assert (bn.weight.data == 1).all() and (bn.bias.data == 0).all() and (bn.running_var == 1).all()


# The stride-1 paths of the Numba backend, by (DIRECT_MAX_CHANNELS, DIRECT_FORWARD_MAX_CHANNELS,
# sparse backward on): direct sums forward and backward for few channels, direct forward with the
# GEMM backward for the kernel widths 3 and 5 up to 12 channels, the wide GEMM both ways; and, fused
# with ReLU and pool only, the backward from the pool's winners (any kernel width up to LANES here).
STRIDE1_MODES = {"direct": (3, 12, False), "direct forward": (0, 12, False), "gemm": (0, 0, False),
                 "gemm in chunks": (0, 0, False), "sparse": (0, 12, True), "sparse in chunks": (0, 0, True)}
UNFUSED_MODES = [mode for mode, (_, _, sparse) in STRIDE1_MODES.items() if not sparse]


def stride1_mode(mode):
    """The Numba strategy fields that pin one of STRIDE1_MODES."""
    both, forward, sparse = STRIDE1_MODES[mode]
    changes = dict(direct_max_channels=both, direct_forward_max_channels=forward,
                   sparse_min_kernel_width=1 if sparse else 99)
    if mode.endswith("in chunks"):
        changes.update(rows_chunk_bytes=1, max_col_bytes=1)                  # one sample per chunk
    return changes


@pytest.mark.parametrize("mode", UNFUSED_MODES)
@pytest.mark.parametrize("kernel,padding,c_in,batch,H,W", [
    (5, 0, 6, 2, 14, 14), (5, 1, 10, 1, 9, 8),
    (5, 2, 1, 3, 12, 12), (3, 0, 3, 1, 7, 9), ((2, 3), (1, 0), 2, 2, 5, 13), (1, 0, 1, 2, 4, 4), (3, 1, 3, 2, 1, 1)])
def test_numba_stride1_convolution(strategy, dtype, mode, kernel, padding, c_in, batch, H, W):
    """Numba's stride-1 kernels (direct sweeps for few channels, four output channels a sweep, the
    output count padded to a multiple of four; a direct forward with the GEMM backward; the
    wide-layout GEMM, in sample chunks when rows would be large) against the same backend's im2col
    path and torch: forward, input and parameter gradients."""
    from minicnn import backend
    strategy(**stride1_mode(mode))
    layer = nn.Conv2d(c_in, 5, kernel, padding=padding).to(dtype)
    x = random_input((batch, c_in, H, W), dtype)

    def run():
        y = layer(x)
        layer.zero_grad()
        dx = layer.backward(dy)
        return y, dx, layer.weight.grad.copy(), layer.bias.grad.copy()

    with backend.use_backend("numba"):
        with nn.no_grad():
            dy = random_input(layer(x).shape, dtype)
        stride1 = run()
        assert layer._saved.record.algorithm != "im2col", "expected the stride-1 kernels"
        strategy(own_kernels=False)
        im2col = run()
        assert layer._saved.record.algorithm == "im2col"
    for a, b in zip(stride1, im2col):
        # two summation orders of the same float32 terms: a sum that cancels to near zero (a bias
        # gradient of 1e-3 from terms of size 1) may differ by more than atol from one to the other,
        # so atol scales with the largest value of the array
        tol = tolerance(dtype)
        np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, np.abs(b).max()))
    strategy(own_kernels=True, max_col_bytes=64 * 2**20)
    with backend.use_backend("numba"):
        assert_matches_torch(layer, torch.nn.Conv2d(c_in, 5, kernel, padding=padding), x, **tolerance(dtype))


@pytest.mark.parametrize("in_chunks", [False, True])
@pytest.mark.parametrize("kernel,stride,padding,dilation,algorithm", [
    (3, 2, 1, 1, "gemm"), ((3, 2), (2, 3), (1, 0), 1, "gemm"), (1, 2, 0, 1, "pointwise"), (3, 1, 2, 2, "gemm"),
    (3, 3, 1, (2, 1), "gemm"), (1, 1, 0, 1, "pointwise"), (1, 1, 0, 2, "pointwise"), (1, 1, 1, 1, "gemm"),
    (1, (2, 3), 0, 1, "pointwise"), (1, 3, 0, 2, "pointwise")])
def test_numba_rows_gemm_and_pointwise(strategy, dtype, in_chunks, kernel, stride, padding, dilation, algorithm):
    """Numba's strided and dilated convolutions (the rows GEMM over strided runs, or shifted planes
    at stride 1) and 1x1 convolutions straight from x's planes (at a stride, from the planes of the
    pixels they read), whole or a sample per task, against torch; and the path taken is the one
    expected."""
    from minicnn import backend
    strategy(blocked_max_channels=0)                 # 3x3 at stride 2 by the rows GEMM, not blocked sums
    if in_chunks:
        strategy(rows_chunk_bytes=1)
    layer = nn.Conv2d(12, 7, kernel, stride=stride, padding=padding, dilation=dilation).to(dtype)
    ref = torch.nn.Conv2d(12, 7, kernel, stride=stride, padding=padding, dilation=dilation)
    x = random_input((5, 12, 11, 10), dtype)
    with backend.use_backend("numba"):
        assert_matches_torch(layer, ref, x, **tolerance(dtype))
        layer(x)
        assert layer._saved.record.algorithm == algorithm


@pytest.mark.parametrize("blocked", [True, False], ids=["blocked sums", "BLAS"])
@pytest.mark.parametrize("c_in,c_out,stride,batch,H,W", [
    (32, 64, 1, 3, 28, 28),        # MobileNetMNIST's first 1x1 (784 pixels: 24.5 blocks)
    (9, 16, 1, 1, 8, 4),           # nine channels: one group; 32 pixels: one whole block; batch 1
    (10, 17, 1, 2, 5, 7),          # the last group of nine overlaps the first; 17 outputs
    (4, 40, 1, 2, 3, 3),           # fewer than nine channels (the last one repeated); 40 outputs
    (1, 1, 1, 2, 6, 5),            # one channel in, one out
    (19, 24, 2, 2, 9, 11),         # at a stride: the pixels it reads
])
def test_pointwise_convolution(strategy, dtype, monkeypatch, blocked, c_in, c_out, stride, batch, H, W):
    """1x1 convolutions by the register-blocked sums with one tap (dw with input channels in the
    place of the taps) or by BLAS per sample: output, input and parameter gradients against torch,
    in float64 too, with and without the input gradient (dw the same bits), and the way taken."""
    from minicnn import backend
    from minicnn.backend import numba_blocked
    strategy(blocked_pointwise_min=0 if blocked else 2**62)
    calls = []
    for name in ("pointwise_forward", "pointwise_weight_grad", "pointwise_input_grad"):
        original = getattr(numba_blocked, name)
        monkeypatch.setattr(numba_blocked, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    layer = nn.Conv2d(c_in, c_out, 1, stride=stride).to(dtype)
    ref = torch.nn.Conv2d(c_in, c_out, 1, stride=stride).double()      # float64: sums of thousands of terms
    ref.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.state_dict().items()})
    x = random_input((batch, c_in, H, W), dtype)
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    yt = ref(xt)
    dy = random_input(tuple(yt.shape), dtype)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    tol = tolerance(dtype)
    with backend.use_backend("numba"):
        y = layer(x)
        assert layer._saved.record.algorithm == "pointwise"
        dx = layer.backward(dy)
        weight_grad = layer.weight.grad                 # (read: the deferred weight-gradient tasks have run)
        assert set(calls) == ({"pointwise_forward", "pointwise_weight_grad", "pointwise_input_grad"} if blocked
                              else set())
        for ours, theirs, what in [(y, yt, "output"), (dx, xt.grad, "input gradient"),
                                   (weight_grad, ref.weight.grad, "weight gradient"),
                                   (layer.bias.grad, ref.bias.grad, "bias gradient")]:
            theirs = theirs.detach().numpy()
            np.testing.assert_allclose(ours, theirs, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, np.abs(theirs).max()),
                                       err_msg=what)
        with_dx = weight_grad.copy()
        layer.zero_grad()
        layer(x)
        assert layer.backward(dy, input_grad=False) is None
        np.testing.assert_array_equal(layer.weight.grad, with_dx)


@pytest.mark.parametrize("poison", ["inf in the input", "NaN in the input", "inf in the weights", "both infs"])
@pytest.mark.parametrize("kernel,stride,padding,algorithm,blocked", [
    (3, 2, 1, "gemm", False), (1, 2, 0, "pointwise", False), (1, 1, 0, "pointwise", False),
    (1, 2, 0, "pointwise", True), (1, 1, 0, "pointwise", True)])
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_numba_rows_gemm_and_pointwise_make_torchs_nan(strategy, dtype, poison, kernel, stride, padding, algorithm,
                                                       blocked):
    """The strided and 1x1 GEMMs (BLAS, or the blocked sums with one tap) multiply the same pairs of
    values as torch (no wrapped columns, no transforms), so they run with inf or NaN inside and give
    NaN and inf at exactly torch's places, in the output and every gradient."""
    from minicnn import backend
    strategy(rows_chunk_bytes=1, blocked_max_channels=0, blocked_pointwise_min=0 if blocked else 2**62)
    layer = nn.Conv2d(6, 5, kernel, stride=stride, padding=padding).to(dtype)
    x = random_input((4, 6, 9, 8), dtype)
    if poison in ("inf in the input", "both infs"):
        x[1, 2, 4, 4] = np.inf
    if poison == "NaN in the input":
        x[2, 0, 4, 2] = np.nan
    if poison in ("inf in the weights", "both infs"):
        layer.weight.data[3, 2, 0, 0] = -np.inf
        x[:, 2, 2] = 0                                         # inf * 0 inside the image, not only in the padding
    ref = torch.nn.Conv2d(6, 5, kernel, stride=stride, padding=padding).double()
    ref.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.state_dict().items()})
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    yt = ref(xt)
    dy = random_input(tuple(yt.shape), dtype)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    with backend.use_backend("numba"):
        y = layer(x)
        assert layer._saved.record.algorithm == algorithm
        dx = layer.backward(dy)
    nan_places = 0
    for ours, theirs in [(y, yt), (dx, xt.grad), (layer.weight.grad, ref.weight.grad), (layer.bias.grad, ref.bias.grad)]:
        theirs = theirs.detach().numpy()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
        nan_places += np.isnan(theirs).sum()
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(ours[finite], theirs[finite], **tolerance(dtype))
    assert nan_places > 0 or poison == "inf in the input"        # an inf input alone makes infs

@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 1), ((2, 3), 2)])
def test_maxpool_and_relu_treat_nan_as_torch_does(cpu_backend, dtype, kernel, stride):
    """A NaN wins its window (the last of several), ReLU passes NaN forward and its gradient back."""
    x = random_input((2, 3, 6, 7), dtype)
    x.reshape(-1)[rng.choice(x.size, 12, replace=False)] = np.nan
    x[0, 0, :2, :3] = np.nan                                          # several NaNs in one window
    for ours, theirs in [(nn.MaxPool2d(kernel, stride), torch.nn.MaxPool2d(kernel, stride)),
                         (nn.ReLU(), torch.nn.ReLU())]:
        xt = torch.from_numpy(x).requires_grad_()
        yt = theirs(xt)
        y = ours(x)
        np.testing.assert_array_equal(np.isnan(y), torch.isnan(yt).numpy())
        np.testing.assert_allclose(y, yt.detach().numpy(), **tolerance(dtype))
        dy = random_input(y.shape, dtype)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), **tolerance(dtype))


def test_inference_in_chunks_equals_one_batch(cpu_backend, monkeypatch):
    """Eval mode under no_grad runs big batches through Sequential in chunks (the backend's plan);
    the result must be that of the whole batch at once (batch norm with running statistics
    included), and training mode (batch statistics: chunks would change the result) must not be
    chunked."""
    import copy

    import minicnn as mc
    from minicnn.backend import numpy_ops
    net = mc.models.ConvNet().double()
    x = random_input((7, 1, 28, 28), np.float64)
    net(x)                                            # move the running statistics off their defaults
    net.eval()
    with mc.nn.no_grad():
        whole = net(x)
        monkeypatch.setattr(numpy_ops, "_INFERENCE_CHUNK", 3)
        net = copy.deepcopy(net)                      # a fresh plan
        seen = []
        monkeypatch.setattr(net[-1], "forward", lambda x, _f=net[-1].forward: seen.append(len(x)) or _f(x))
        chunked = net(x)
        assert seen == [3, 3, 1]
        net.train()
        seen.clear()
        net(x)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-14)
    assert seen == [7]


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_sequential_pools_before_relu_with_the_same_result(cpu_backend, grad):
    """Sequential runs max pooling before the ReLU in front of it (a quarter of the values to
    rectify); output, input gradient and every parameter gradient must equal those of the
    layers run one after another as written, bit for bit, NaN and all-negative windows included,
    for non-overlapping (MnistCNN) and overlapping (3x3 stride 1 and 2) pools."""
    import minicnn as mc
    net = mc.nn.Sequential(mc.nn.Conv2d(1, 4, 3), mc.nn.ReLU(), mc.nn.MaxPool2d(2), mc.nn.Conv2d(4, 6, 3),
                           mc.nn.ReLU(), mc.nn.MaxPool2d(3, 1), mc.nn.Conv2d(6, 3, 3), mc.nn.ReLU(),
                           mc.nn.MaxPool2d(3, 2, padding=1), mc.nn.Flatten()).double()
    from minicnn.backend import numpy_ops
    plan = numpy_ops.plan_chain(tuple(layer.kind for layer in net))          # the reference plan's order
    order = [type(net[indices[0]]).__name__ for _, indices in plan.steps]
    assert order[:3] == ["Conv2d", "MaxPool2d", "ReLU"] and order[4:6] == ["MaxPool2d", "ReLU"]
    x = random_input((3, 1, 20, 20), np.float64)
    x[0, 0, 3:9, 3:9] = np.nan
    x[1] = -np.abs(x[1]) - 5                                 # windows with nothing positive
    expected = x
    for layer in net:                                        # one layer after another, as written
        expected = layer(expected)
    dy = random_input(expected.shape, np.float64)
    if not grad:
        with mc.no_grad():
            np.testing.assert_array_equal(net(x), expected)
        return
    expected_dx = dy
    for layer in reversed(list(net)):
        expected_dx = layer.backward(expected_dx)
    expected_grads = {k: p.grad.copy() for k, p in net.named_parameters()}
    net.zero_grad()
    np.testing.assert_array_equal(net(x), expected)
    np.testing.assert_array_equal(net.backward(dy), expected_dx)
    for k, p in net.named_parameters():
        np.testing.assert_array_equal(p.grad, expected_grads[k], err_msg=k)


def run_layers_one_by_one(net, x):
    """Forward and backward through each layer of net by itself (nothing fused), for a random dy:
    (output, dy, input gradient, parameter gradients); the gradients are then zeroed again."""
    expected = x
    for layer in net:
        expected = layer(expected)
    dy = random_input(expected.shape, x.dtype)
    expected_dx = dy
    for layer in reversed(list(net)):
        expected_dx = layer.backward(expected_dx)
    expected_grads = {k: p.grad.copy() for k, p in net.named_parameters()}
    net.zero_grad()
    return expected, dy, expected_dx, expected_grads


@pytest.mark.parametrize("mode", list(STRIDE1_MODES))
@pytest.mark.parametrize("c_in,c_out,kernel,padding,H,W,batch,bias,relu_first", [
    (1, 4, 3, 0, 12, 12, 3, True, True),          # MnistCNN's first block, even conv output
    (6, 16, 5, 0, 14, 14, 5, True, True),         # LeNet's second block
    (1, 6, 5, 2, 12, 12, 9, True, False),         # LeNet's first block (6 channels: 8 computed)
    (2, 3, 5, 2, 9, 11, 1, True, False),          # padded, odd output (the last row and column unpooled)
    (3, 5, (2, 3), (1, 0), 6, 7, 2, False, True), # no bias, rectangular kernel
    (2, 2, 3, 1, 2, 2, 2, True, True),            # a 2x2 output: one window
])
def test_conv_relu_pool_fused_equals_the_layers(strategy, dtype, mode, c_in, c_out, kernel, padding, H, W,
                                                batch, bias, relu_first):
    """Sequential runs Conv2d -> ReLU -> MaxPool2d(2) (or with pool and ReLU swapped) on Numba as one
    step, ConvReLUPool; output, input gradient and parameter gradients must equal those of the three
    layers run one by one, bit for bit (all-negative windows included), and match torch. An input
    holding NaN takes the three exact ops instead ('composed'): still equal to the layers, bit for bit.
    (3x3 kernels with more channels go by register-blocked sums, or by Winograd's algorithm when
    fused past blocked_max_channels: both switched off here, tested on their own below. The sparse
    backward sums in another order: its gradients are compared up to rounding.)"""
    import minicnn as mc
    current = strategy(winograd=False, blocked_max_channels=0, **stride1_mode(mode))
    tol = tolerance(dtype)
    pair = [nn.ReLU(), nn.MaxPool2d(2)] if relu_first else [nn.MaxPool2d(2), nn.ReLU()]
    net = nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias), *pair).to(dtype)
    for poisoned in (True, False):
        net.zero_grad()
        x = random_input((batch, c_in, H, W), dtype)
        if poisoned:
            x[0, 0, :2, :2] = np.nan
        x[-1] = -np.abs(x[-1]) - 5
        sparse = not poisoned and STRIDE1_MODES[mode][2] and c_in > current.direct_max_channels

        def same_gradient(a, b, what=""):
            if not sparse:
                return np.testing.assert_array_equal(a, b, err_msg=what)
            np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, np.nanmax(np.abs(b))),
                                       err_msg=what)

        with mc.backend.use_backend("numba"):
            expected, dy, expected_dx, expected_grads = run_layers_one_by_one(net, x)
            y = net(x)
            assert [type(step).__name__ for step in net.steps] == ["ConvReLUPool"]
            algorithm = net.steps[0]._saved.record.algorithm
            assert algorithm == "composed" if poisoned else (algorithm == "sparse") == sparse
            np.testing.assert_array_equal(y, expected)
            same_gradient(net.backward(dy), expected_dx)
            for k, p in net.named_parameters():
                same_gradient(p.grad, expected_grads[k], k)
            net.zero_grad()
            net(x)
            assert net.backward(dy, input_grad=False) is None                 # the first layer of a model
            for k, p in net.named_parameters():
                same_gradient(p.grad, expected_grads[k], k)
            with pytest.raises(RuntimeError, match="before forward"):
                net[0].backward(dy)                      # the conv's own state is not the fused step's
            with mc.no_grad():
                np.testing.assert_array_equal(net(x), expected)
    x[-1] = random_input(x[-1].shape, dtype)
    with mc.backend.use_backend("numba"):
        torch_net = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias),
                                        torch.nn.ReLU(), torch.nn.MaxPool2d(2)).to(torch.float64)
        assert_matches_torch(net, torch_net, x, **tolerance(dtype))


@pytest.mark.parametrize("c_in,c_out,padding,H,W,batch,bias,relu_first", [
    (32, 64, 0, 13, 13, 64, True, True),       # MnistCNN's second block (odd output: last row, column unpooled)
    (4, 3, 1, 9, 12, 1, True, False),          # padded, batch 1, pool before ReLU
    (5, 2, 0, 4, 5, 3, False, True),           # no bias, a 2x3 output: one window
    (6, 7, 1, 10, 7, 40, True, True),          # several tasks (chunks of samples), padded, odd width
])
@pytest.mark.parametrize("algorithm", ["winograd", "blocked"])
def test_3x3_conv_relu_pool(strategy, dtype, algorithm, c_in, c_out, padding, H, W, batch, bias, relu_first):
    """A 3x3 stride-1 convolution with more than DIRECT_MAX_CHANNELS inputs, fused with ReLU and the
    2x2 pool, goes by the register-blocked sums (up to blocked_max_channels; the same bits as the
    three layers one by one, whose convolution goes the same way: the crop pools, backward spreads
    dy to the winners first) or by Winograd F(2x2, 3x3) (another rounding): output, input gradient
    (with and without) and parameter gradients against the three layers run one by one and against
    torch; NaN reaches exactly the windows whose receptive field holds it."""
    import minicnn as mc
    current = strategy(blocked_relu_pool=algorithm == "blocked")
    assert current.winograd and current.direct_max_channels < c_in <= current.blocked_max_channels
    pair = [nn.ReLU(), nn.MaxPool2d(2)] if relu_first else [nn.MaxPool2d(2), nn.ReLU()]
    net = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=padding, bias=bias), *pair).to(dtype)
    x = random_input((batch, c_in, H, W), dtype)
    tol = tolerance(dtype)

    def close(a, b, what):
        np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, np.abs(b).max()), err_msg=what)

    def same(a, b, what):
        if algorithm == "blocked":
            np.testing.assert_array_equal(a, b, err_msg=what)
        else:
            close(a, b, what)

    with mc.backend.use_backend("numba"):
        expected, dy, expected_dx, expected_grads = run_layers_one_by_one(net, x)
        y = net(x)
        assert [type(step).__name__ for step in net.steps] == ["ConvReLUPool"]
        assert net.steps[0]._saved.record.algorithm == algorithm
        same(y, expected, "output")
        same(net.backward(dy), expected_dx, "input gradient")
        for k, p in net.named_parameters():
            same(p.grad, expected_grads[k], k)
        net.zero_grad()
        net(x)
        assert net.backward(dy, input_grad=False) is None
        for k, p in net.named_parameters():
            same(p.grad, expected_grads[k], k)
        x_nan = x.copy()
        x_nan[0, 0, 2, 3] = np.nan
        with mc.no_grad():
            y_nan = net(x_nan)
            conv_nan = net[0](x_nan)              # NaN where the receptive field holds the pixel
        nan_windows = np.isnan(conv_nan[:, :, :2 * y.shape[2], :2 * y.shape[3]]).reshape(
            batch, c_out, y.shape[2], 2, y.shape[3], 2).any(axis=(3, 5))
        np.testing.assert_array_equal(np.isnan(y_nan), nan_windows)
        assert nan_windows.any()
        # torch in float64 on the same float32 values: sums of thousands of float32 terms (the
        # weight gradient at batch 64) differ from it by more than atol, so atol scales with the array
        conv64 = torch.nn.Conv2d(c_in, c_out, 3, padding=padding, bias=bias).to(torch.float64)
        conv64.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in net[0].state_dict().items()})
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
        yt = torch.nn.functional.max_pool2d(torch.relu(conv64(xt)), 2)
        yt.backward(torch.from_numpy(dy.astype(np.float64)))
        net.zero_grad()
        close(net(x), yt.detach().numpy(), "output vs torch")
        close(net.backward(dy), xt.grad.numpy(), "input gradient vs torch")
        for k, p in conv64.named_parameters():
            close(net[0].weight.grad if k == "weight" else net[0].bias.grad, p.grad.numpy(), k + " vs torch")


@pytest.mark.parametrize("poison", ["none", "inf in the input", "NaN in the input", "inf in the weights"])
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_sparse_backward_through_relu_pool_matches_torch(monkeypatch, dtype, poison):
    """LeNet's second block (6 -> 16 channels, 5x5) at batch 40, several chunks: the backward from
    the pool's winners matches torch in float64. Where an inf or NaN sits in the input or the
    weights, the step runs as its three exact ops instead ('composed'), so that products by zero make
    NaN as they do in torch: at exactly torch's places, in the output and every gradient (the wide
    GEMM used to multiply inf weights by its wrapped columns' zeros: more NaN than torch's)."""
    import minicnn as mc
    from minicnn.backend import numba_conv, numba_sparse
    sparse_chunks = []
    real = numba_sparse.backward_chunk
    monkeypatch.setattr(numba_sparse, "backward_chunk", lambda *a: sparse_chunks.append(1) or real(*a))
    net = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)).to(dtype)
    x = random_input((40, 6, 14, 14), dtype)
    if poison == "inf in the input":
        x[3, 2, 5, 6] = np.inf
    elif poison == "NaN in the input":
        x[3, 2, 5, 6] = np.nan
    elif poison == "inf in the weights":
        net[0].weight.data[2, 1, 0, 3] = -np.inf
    torch_net = torch.nn.Sequential(torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2)).double()
    torch_net.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in net.state_dict().items()})
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    yt = torch_net(xt)
    dy = random_input(tuple(yt.shape), dtype)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    tol = tolerance(dtype)
    with mc.backend.use_backend("numba"):
        y = net(x)
        assert net.steps[0]._saved.record.algorithm == ("sparse" if poison == "none" else "composed")
        dx = net.backward(dy)
    n_chunks = -(-40 // numba_conv._rows_chunk(40, 150 * (9 * 14 + 10) * x.itemsize))
    assert n_chunks >= 4
    assert len(sparse_chunks) == (n_chunks if poison == "none" else 0)
    for ours, theirs in [(y, yt), (dx, xt.grad), (net[0].weight.grad, torch_net[0].weight.grad),
                         (net[0].bias.grad, torch_net[0].bias.grad)]:
        theirs = theirs.detach().numpy()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(ours[finite], theirs[finite], rtol=tol["rtol"],
                                   atol=tol["atol"] * max(1.0, np.abs(theirs[finite]).max()))
    if poison != "none":
        assert np.isnan(net[0].weight.grad).any() or np.isnan(dx).any()


@pytest.mark.parametrize("layer_kind", ["conv 5x5", "conv 3x3 (Winograd)", "conv 3x3 stride 2", "depthwise"])
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_numba_convolutions_with_inf_or_nan_match_torch_nan_for_nan(dtype, layer_kind):
    """A convolution whose input or weights hold inf or NaN gives NaN and inf at exactly torch's places on
    Numba (by the exact im2col path: the wide layout's dropped positions and Winograd's transforms
    would add NaNs torch does not have)."""
    import minicnn as mc
    make = {"conv 5x5": lambda lib: lib.Conv2d(6, 8, 5, padding=1),
            "conv 3x3 (Winograd)": lambda lib: lib.Conv2d(6, 8, 3, padding=1),
            "conv 3x3 stride 2": lambda lib: lib.Conv2d(6, 8, 3, stride=2, padding=1),
            "depthwise": lambda lib: lib.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)}[layer_kind]
    for poison in ("inf in the weights", "inf in the input", "NaN in the input"):
        layer = make(nn).to(dtype)
        x = random_input((5, 6, 9, 10), dtype)
        if poison == "inf in the weights":
            layer.weight.data[2, 0, 1, 1] = np.inf
        else:
            # the last column, which the wide layout's wrapped positions read, of a sample in the last task
            x[-1, 2, 5, 9] = np.inf if poison == "inf in the input" else np.nan
        ref = make(torch.nn).double()
        ref.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.state_dict().items()})
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
        yt = ref(xt)
        dy = random_input(tuple(yt.shape), dtype)
        yt.backward(torch.from_numpy(dy.astype(np.float64)))
        with mc.backend.use_backend("numba"):
            y = layer(x)
            layer.zero_grad()
            dx = layer.backward(dy)
        for ours, theirs, what in [(y, yt, "output"), (dx, xt.grad, "input gradient"),
                                   (layer.weight.grad, ref.weight.grad, "weight gradient")]:
            theirs = theirs.detach().numpy()
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=f"{poison}: {what}")
            np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs), err_msg=f"{poison}: {what}")


def test_a_model_follows_the_strategy_in_force(dtype):
    """A model that has run keeps no stale plan: changing Numba's strategy (as tests and benchmarks
    do) changes the steps of its next forward, and changing it back restores them."""
    import minicnn as mc
    from minicnn.backend import numba_strategy
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU()).to(dtype)
    x = random_input((2, 4, 10, 10), dtype)

    def steps():
        with mc.backend.use_backend("numba"):
            y = net(x)
            net.backward(np.ones_like(y))
        return [type(step).__name__ for step in net.steps]
    assert steps() == ["ConvReLUPool", "ConvBatchNorm"]
    with numba_strategy.use(fuse_conv_relu_pool=False):
        assert steps() == ["Conv2d", "MaxPool2d", "ReLU", "ConvBatchNorm"]
        with numba_strategy.use(fuse_conv_batchnorm=False):
            assert steps() == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "BatchNormReLU"]
    assert steps() == ["ConvReLUPool", "ConvBatchNorm"]


def test_conv_relu_pool_is_not_fused_where_it_does_not_fit(dtype):
    """Only stride-1 convolutions followed by ReLU and a 2x2/2 pool without padding are fused, and
    only on Numba; a too-small input still gets the pool's own error."""
    import minicnn as mc
    cases = [nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2)),
             nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3)),
             nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, 1)),
             nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.MaxPool2d(2)),
             nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2))]
    x = random_input((2, 1, 9, 9), dtype)
    for net in cases:
        net = net.to(dtype)
        with mc.backend.use_backend("numba"):
            net(x)
        assert "ConvReLUPool" not in [type(step).__name__ for step in net.steps], net
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)).to(dtype)
    with mc.backend.use_backend("numpy"):
        net(x)
    assert "ConvReLUPool" not in [type(step).__name__ for step in net.steps]
    net.eval()
    with mc.backend.use_backend("numba"), pytest.raises(ValueError, match="larger than the padded input"):
        net(random_input((2, 1, 3, 4), dtype))
    with mc.backend.use_backend("numba"), pytest.raises(ValueError, match=r"Conv2d\(1, 2.*expected input \(N, 1, H, W\)"):
        net(random_input((2, 3, 9, 9), dtype))                      # the convolution's own error, fused or not


@pytest.mark.parametrize("channels", [1, 8], ids=["direct", "gemm"])
def test_fused_relu_pool_breaks_ties_and_treats_nan_as_the_pool(dtype, channels):
    """The fused epilogue's vectorized sweep (no NaN) and its exact redo (planes with NaN) must pick
    the same winner as MaxPool2d (the first maximum; a NaN wins over everything before it) and give
    the same bits as ReLU (-0.0 becomes 0): small integers make ties everywhere, zeros of both signs
    and NaN planes included."""
    from minicnn.backend import numba_ops
    x = rng.integers(-2, 3, (4, channels, 9, 10)).astype(dtype)
    x[1, 0, 2:5, 3:6] = np.nan
    w = rng.integers(-1, 2, (5, channels, 3, 3)).astype(dtype)
    x[2] = -1
    w[0] = 0                                # sample 2's first plane: -0.0 + 0 * -1 + ... = -0.0 (direct)
    b = np.array([-0.0, 0.0, 1.0, -1.0, 0.5], dtype=dtype)
    from minicnn.backend import numba_conv, numba_strategy
    forward, backward = numba_strategy.conv_algorithms(channels, w.shape, (1, 1), (1, 0), (1, 1), 1, fused=True)
    y, fused = numba_conv._planes_forward(x, w, b, (1, 1), (1, 0), (1, 1), True, forward, backward)   # NaN and all
    conv, _ = numba_conv._planes_forward(x, w, b, (1, 1), (1, 0), (1, 1), False, forward, backward)   # unfused
    pooled, pool = numba_ops.maxpool2d_forward(conv, (2, 2), (2, 2), (0, 0))
    idx = pool[0]
    expected, _ = numba_ops.relu_forward(pooled)
    N, C, PH, PW = pooled.shape
    windows = conv[:, :, :2 * PH, :2 * PW].reshape(N, C, PH, 2, PW, 2)
    ties = (windows == pooled[:, :, :, None, :, None]).sum(axis=(3, 5)) > 1
    assert ties.mean() > 0.2                                 # the test means something
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(expected))
    np.testing.assert_array_equal(fused.pooled[1], idx)
    assert np.isnan(y).any() and (idx != 0).any()
    if channels == 1:
        assert np.signbit(pooled[2, 0]).any() and not np.signbit(y[2, 0]).any()


@pytest.mark.parametrize("short_row", [0, 10**9], ids=["by channel", "by sample"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(5, 7, 6, 7), (3, 4, 20, 20), (1, 3, 2, 3), (2, 3, 1, 1)])
def test_numba_batchnorm_both_pass_orders_match_torch(strategy, dtype, short_row, relu, shape):
    """Numba's training-mode batch norm goes channel by channel through long rows and sample by
    sample through short ones (numba_strategy.batchnorm_short_row): each order, forced on every
    shape, against torch (output, input gradient, weight and bias gradients, running statistics)."""
    from minicnn import backend
    strategy(batchnorm_short_row=short_row)
    layers = [nn.BatchNorm2d(shape[1])] + ([nn.ReLU()] if relu else [])
    refs = [torch.nn.BatchNorm2d(shape[1])] + ([torch.nn.ReLU()] if relu else [])
    net = nn.Sequential(*layers).to(dtype)
    _randomize_bn(net[0], dtype)
    ref = torch.nn.Sequential(*refs)
    with backend.use_backend("numba"):
        assert_matches_torch(net, ref, random_input(shape, dtype) * 2 + 0.3, **tolerance(dtype))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm,shape", [(lambda: nn.BatchNorm2d(5), (4, 5, 6, 7)), (lambda: nn.BatchNorm1d(6), (9, 6)),
                                        (lambda: nn.BatchNorm2d(3, affine=False), (1, 3, 4, 4)),
                                        (lambda: nn.BatchNorm2d(16), (37, 16, 20, 20))])
def test_batchnorm_relu_fused_equals_the_layers(dtype, norm, shape, training):
    """On Numba a batch norm followed by a ReLU runs as one batchnorm_relu step (in training; in eval
    the two layers run one after the other): output, input gradient, parameter gradients and
    running statistics equal the two layers run one by one, bit for bit (NaN included), and torch."""
    import minicnn as mc
    net = nn.Sequential(norm(), nn.ReLU()).to(dtype)
    _randomize_bn(net[0], dtype)
    net.train(training)
    x = random_input(shape, dtype) * 2 + 0.3
    x[0, 0] = np.nan
    with mc.backend.use_backend("numba"):
        before = {k: v.copy() for k, v in net.state_dict().items()}
        expected, dy, expected_dx, expected_grads = run_layers_one_by_one(net, x)
        after = {k: v.copy() for k, v in net.state_dict().items()}
        net.load_state_dict(before)
        y = net(x)
        assert [type(step).__name__ for step in net.steps] == ["BatchNormReLU"]
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_array_equal(net.backward(dy), expected_dx)
        for k, p in net.named_parameters():
            np.testing.assert_array_equal(p.grad, expected_grads[k], err_msg=k)
        for k, v in net.state_dict().items():
            np.testing.assert_array_equal(v, after[k], err_msg=k)
        net.load_state_dict(before)
        x[0, 0] = 0.5
        ref = torch.nn.Sequential(torch.nn.BatchNorm2d(shape[1]) if len(shape) == 4 else torch.nn.BatchNorm1d(shape[1]),
                                  torch.nn.ReLU())
        if not net[0].affine:
            ref[0] = type(ref[0])(shape[1], affine=False)
        tol = dict(tolerance(dtype))
        # the bias gradient sums dy over 14,800 values a channel at the largest shape: in float32
        # a sum that cancels to 0.09 from terms of size 1 differs from torch's order by ~3e-5
        tol["atol"] *= max(1.0, (x.size / shape[1]) ** 0.5 / 10)
        assert_matches_torch(net, ref, x, **tol)


@pytest.mark.parametrize("ours,theirs", [
    (lambda: nn.BatchNorm2d(6), lambda: torch.nn.BatchNorm2d(6)),
    (lambda: nn.MaxPool2d(2), lambda: torch.nn.MaxPool2d(2)),
    (lambda: nn.MaxPool2d(3, 2, 1), lambda: torch.nn.MaxPool2d(3, 2, 1)),
    (lambda: nn.AvgPool2d(3, 2, 1), lambda: torch.nn.AvgPool2d(3, 2, 1)),
], ids=["batchnorm", "maxpool 2x2", "maxpool 3x3 s2 p1", "avgpool 3x3 s2 p1"])
def test_large_inputs_split_over_the_cores_match_torch(strategy, dtype, ours, theirs):
    """On Numba, batch norm and pooling of a large tensor run in chunks of channels or samples on
    the cores (the strategy's split_bytes): the same as torch, and the same bits as one chunk."""
    import minicnn as mc
    from minicnn.backend import numba_strategy
    x = random_input((37, 6, 30, 26), dtype)
    assert x.nbytes >= numba_strategy.current().split_bytes   # the test means something
    layer = ours().to(dtype)
    with mc.backend.use_backend("numba"):
        y, dx = assert_matches_torch(layer, theirs(), x, **tolerance(dtype))
        with numba_strategy.use(split_bytes=2**62):                # one chunk
            layer.zero_grad()
            np.testing.assert_array_equal(layer(x), y)
            np.testing.assert_array_equal(layer.backward(np.random.default_rng(0).standard_normal(y.shape).astype(dtype)), dx)


THREE_BY_THREE_CASES = [          # c_in, c_out, padding, H, W, batch
    (32, 64, 1, 14, 14, 40),       # FashionCNN's second block, several tasks
    (4, 3, 0, 9, 12, 1),           # odd output height, batch 1
    (5, 2, 1, 4, 7, 3),            # odd output width, padded
    (6, 4, 0, 3, 3, 2),            # a 1x1 output: one clipped tile
    (8, 5, 2, 5, 6, 5),            # padding wider than the kernel's reach
    (16, 16, 1, 28, 28, 9),        # ResNet14's first stage
    (12, 9, 3, 6, 5, 2),           # output channels not a multiple of 8 and odd; padding past 2
    (64, 64, 1, 7, 7, 3),          # ResNet14's last stage
]
STRIDE2_CASES = [
    (16, 32, 1, 28, 28, 9),        # ResNet14's second stage's first convolution
    (32, 64, 1, 14, 14, 3),        # and the third's
    (7, 9, 0, 9, 8, 2),            # no padding, odd height, even width
    (12, 5, 3, 5, 6, 1),           # padding past 2, batch 1
    (5, 8, 2, 3, 3, 2),            # a 3x3 output from a 3x3 input
]


@pytest.mark.parametrize("algorithm,stride,c_in,c_out,padding,H,W,batch",
                         [("winograd", 1) + case for case in THREE_BY_THREE_CASES] +
                         [("blocked", 1) + case for case in THREE_BY_THREE_CASES] +
                         [("blocked", 2) + case for case in STRIDE2_CASES])
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.filterwarnings("ignore::minicnn.nn.StateReuseWarning")      # forwards only, to see the path
def test_3x3_convolution(strategy, dtype, algorithm, stride, c_in, c_out, padding, H, W, batch):
    """A 3x3 convolution with more than direct_max_channels inputs and no pool after it goes by
    Winograd F(2x2, 3x3) (stride 1) with tiles covering the whole output (clipped at an odd edge), or
    by register-blocked sums (stride 1 or 2: output channels padded to blocks of 8, dw from dy by
    vectors of output channels, dx the same sums on dy, by phase at stride 2): output, input and
    parameter gradients against torch in float64, also without the input gradient; with inf and
    NaN in the input, NaN and inf at exactly torch's places."""
    import minicnn as mc
    strategy(blocked_max_channels=0 if algorithm == "winograd" else 64)
    layer = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding).to(dtype)
    x = random_input((batch, c_in, H, W), dtype)
    tol = tolerance(dtype)

    def close(a, b, what):
        np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, np.abs(b).max()), err_msg=what)

    conv64 = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding).to(torch.float64)
    conv64.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.state_dict().items()})
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    yt = conv64(xt)
    dy = random_input(tuple(yt.shape), dtype)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    with mc.backend.use_backend("numba"):
        x_before = x.copy()
        y = layer(x)
        assert layer._saved.record.algorithm == algorithm
        np.testing.assert_array_equal(x, x_before)                # the input is never written
        close(y, yt.detach().numpy(), "output")
        close(layer.backward(dy), xt.grad.numpy(), "input gradient")
        close(layer.weight.grad, conv64.weight.grad.numpy(), "weight gradient")
        close(layer.bias.grad, conv64.bias.grad.numpy(), "bias gradient")
        with_dx = layer.weight.grad.copy()
        layer.zero_grad()
        layer(x)
        assert layer.backward(dy, input_grad=False) is None
        np.testing.assert_array_equal(layer.weight.grad, with_dx)           # the same chunks, the same bits
        # inf and NaN in the input: the blocked sums multiply torch's pairs of values only, forward and
        # backward (Winograd's transforms would subtract infs: it goes by im2col)
        x[0, -1, H // 2, W // 2] = np.nan
        x[-1, 0, 0, W - 1] = np.inf
        x[-1, 0, H - 1, 0] = -np.inf
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
        conv64.zero_grad()
        yt = conv64(xt)
        yt.backward(torch.from_numpy(dy.astype(np.float64)))
        layer.zero_grad()
        y = layer(x)
        assert layer._saved.record.algorithm == ("blocked" if algorithm == "blocked" else "im2col")
        dx = layer.backward(dy)
        for ours, theirs, what in [(y, yt, "output"), (dx, xt.grad, "input gradient"),
                                   (layer.weight.grad, conv64.weight.grad, "weight gradient")]:
            theirs = theirs.detach().numpy()
            for where in (np.isnan, np.isposinf, np.isneginf):
                np.testing.assert_array_equal(where(ours), where(theirs), err_msg=what)
            finite = np.isfinite(theirs)
            np.testing.assert_allclose(ours[finite], theirs[finite], rtol=tol["rtol"],
                                       atol=tol["atol"] * np.abs(theirs[finite]).max(initial=1.0), err_msg=what)
        assert np.isnan(y).any() and not np.isfinite(layer.weight.grad).all()
        x[0, -1, H // 2, W // 2] = x[-1, 0, 0, W - 1] = x[-1, 0, H - 1, 0] = 0.0
        # an inf weight would multiply the zeros of dx's wide dy: im2col
        layer.weight.data[0, 0, 1, 1] = np.inf
        layer(x)
        assert layer._saved.record.algorithm == "im2col"


CONV_BN_CASES = [  # (c_in, c_out, kernel, stride, padding, groups, bias, affine, relu, batch, H, W)
    (16, 24, 3, 1, 1, 1, False, True, True, 2, 9, 7),       # the blocked sums, normalized as they crop
    (8, 16, 3, 2, 1, 1, True, True, False, 1, 11, 10),      # blocked at stride 2, no ReLU, a bias
    (4, 8, 3, 1, 0, 1, False, False, True, 3, 6, 6),        # blocked, no padding, batch norm without affine
    (16, 16, 3, 1, 2, 1, True, True, True, 37, 14, 14),     # blocked, in several tasks
    (3, 8, 3, 1, 1, 1, False, True, True, 2, 8, 8),         # direct sums: each task normalizes its samples
    (1, 16, 3, 1, 1, 1, True, True, True, 37, 12, 12),      # the same in several tasks (a model's first layer)
    (8, 16, 1, 1, 0, 1, False, True, True, 2, 7, 7),        # pointwise: each task normalizes its samples
    (8, 16, 1, 2, 0, 1, True, True, False, 37, 9, 8),       # pointwise at a stride, a bias, in several tasks
    (64, 64, 1, 1, 0, 1, False, True, True, 5, 16, 16),     # pointwise by the blocked sums
    (64, 64, 1, 2, 0, 1, False, True, True, 9, 32, 32),     # the same at a stride
    (8, 8, 3, 1, 1, 8, False, True, True, 2, 9, 9),         # depthwise
    (80, 8, 3, 1, 1, 1, False, True, False, 1, 6, 6),       # past blocked_max_channels: Winograd
]


@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding,groups,bias,affine,relu,batch,H,W", CONV_BN_CASES)
def test_conv_batchnorm_inference_fused_equals_the_layers(monkeypatch, dtype, c_in, c_out, kernel, stride, padding,
                                                          groups, bias, affine, relu, batch, H, W):
    """On Numba a convolution followed by a batch norm (and a ReLU) runs as one conv2d_batchnorm step:
    in inference one op (the blocked sums normalize each row as they crop it), the bits of the layers
    run one by one, also with inf and NaN in the input (NaN and inf where torch has them); with
    gradients on, or in training, the layers themselves (output,
    gradients and running statistics as one by one); and torch's output in eval mode."""
    import minicnn as mc
    from minicnn.backend import numba_blocked, numba_ops
    normalized, passes = [], []
    forward, in_place = numba_blocked.forward, numba_ops._normalize_eval_in_place
    monkeypatch.setattr(numba_blocked, "forward", lambda *a, normalize=None: normalized.append(normalize is not None)
                        or forward(*a, normalize=normalize))
    monkeypatch.setattr(numba_ops, "_normalize_eval_in_place", lambda *a: passes.append(1) or in_place(*a))

    def layers(lib):
        found = [lib.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups, bias=bias),
                 lib.BatchNorm2d(c_out, affine=affine)]
        return found + [lib.ReLU()] if relu else found
    net = nn.Sequential(*layers(nn)).to(dtype)
    _randomize_bn(net[1], dtype)
    x = random_input((batch, c_in, H, W), dtype) * 2 + 0.3
    with mc.backend.use_backend("numba"):
        net.eval()
        with mc.no_grad(), mc.nn.chain.as_written():
            expected = net(x)
        normalized.clear()
        passes.clear()
        with mc.no_grad():
            y = net(x)
        assert [type(step).__name__ for step in net.steps] == ["ConvBatchNorm"]
        blocked = kernel == 3 and groups == 1 and 3 < c_in <= 64
        assert normalized == ([True] if blocked else [])
        assert bool(passes) == (groups > 1 or c_in > 64)     # depthwise, Winograd: a pass of its own after
        np.testing.assert_array_equal(y, expected)
        ref = torch.nn.Sequential(*layers(torch.nn)).to(torch.float64 if dtype == np.float64 else torch.float32)
        ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()})
        with torch.no_grad():
            theirs = ref.eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(expected, theirs, rtol=tolerance(dtype)["rtol"], atol=tolerance(dtype)["atol"] * 10)
        poisoned = x.copy()
        poisoned[0, 0, 1, :2] = [np.nan, np.inf]
        poisoned[-1, -1, -1, -1] = -np.inf
        poisoned[0, -1, 2, 2] = np.nan                    # a pixel a 1x1 convolution at stride 2 reads too
        normalized.clear()
        with mc.no_grad():
            y = net(poisoned)
            assert normalized == ([True] if blocked else [])        # not refused: no im2col on the way
            with mc.nn.chain.as_written():
                one_by_one = net(poisoned)
        with torch.no_grad():
            theirs = ref(torch.from_numpy(poisoned)).numpy()
        np.testing.assert_array_equal(y, one_by_one)
        for where in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(where(y), where(theirs))
        assert np.isnan(y).any()
        np.testing.assert_allclose(y, theirs, rtol=tolerance(dtype)["rtol"], atol=tolerance(dtype)["atol"] * 10)
        for training in (False, True):                       # gradients on: the layers themselves
            net.train(training)
            net.zero_grad()
            before = {k: v.copy() for k, v in net.state_dict().items()}
            expected, dy, expected_dx, expected_grads = run_layers_one_by_one(net, x)
            after = {k: v.copy() for k, v in net.state_dict().items()}
            net.load_state_dict(before)
            np.testing.assert_array_equal(net(x), expected)
            np.testing.assert_array_equal(net.backward(dy), expected_dx)
            for k, p in net.named_parameters():
                np.testing.assert_array_equal(p.grad, expected_grads[k], err_msg=f"{k}, training={training}")
            for k, v in net.state_dict().items():
                np.testing.assert_array_equal(v, after[k], err_msg=k)


def test_conv_batchnorm_step_lets_a_misfit_batch_norm_say_why():
    import minicnn as mc
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()).eval()
    with mc.backend.use_backend("numba"), mc.no_grad():
        with pytest.raises(ValueError, match="BatchNorm2d"):
            net(random_input((2, 4, 5, 5), np.float32))
