"""Float64 central-difference gradient checks of every layer and of the small models."""
import zlib

import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn
from minicnn.gradcheck import tie_free_input

rng = np.random.default_rng(1)
LAYERS = [
    ("conv k3 s1 p1", lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 6, 5)),
    ("conv k(2,3) s2 p(1,0)", lambda: nn.Conv2d(3, 2, (2, 3), stride=2, padding=(1, 0)), (1, 3, 7, 8)),
    ("conv no bias", lambda: nn.Conv2d(1, 2, 5, stride=3, padding=2, bias=False), (2, 1, 9, 9)),
    ("maxpool k2", lambda: nn.MaxPool2d(2), (2, 3, 6, 6)),
    ("maxpool k3 s1 p1", lambda: nn.MaxPool2d(3, 1, 1), (1, 2, 5, 6)),
    ("maxpool k3 s2", lambda: nn.MaxPool2d(3, 2), (2, 1, 7, 7)),
    ("avgpool k2", lambda: nn.AvgPool2d(2), (2, 2, 4, 6)),
    ("avgpool k3 s2 p1 excl", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (1, 2, 7, 5)),
    ("batchnorm2d train", lambda: nn.BatchNorm2d(3), (4, 3, 3, 3)),
    ("batchnorm2d eval", lambda: nn.BatchNorm2d(3).eval(), (2, 3, 3, 3)),
    ("batchnorm1d train", lambda: nn.BatchNorm1d(5), (6, 5)),
    ("relu", nn.ReLU, (3, 7)),
    ("leakyrelu", lambda: nn.LeakyReLU(0.1), (3, 7)),
    ("sigmoid", nn.Sigmoid, (3, 7)),
    ("tanh", nn.Tanh, (3, 7)),
    ("linear", lambda: nn.Linear(6, 4), (3, 6)),
    ("flatten", nn.Flatten, (2, 3, 2, 2)),
    ("dropout", lambda: nn.Dropout(0.4), (4, 6)),
    ("dropout2d", lambda: nn.Dropout2d(0.4), (3, 4, 2, 3)),
    ("tinybnnet", mc.models.TinyBNNet, (2, 1, 28, 28)),
    ("lenet", mc.models.LeNet, (2, 1, 28, 28)),
    # on Numba, a fused step computed by Winograd F(2x2, 3x3) (odd output: the last row unpooled)
    ("conv3x3 relu pool", lambda: nn.Sequential(nn.Conv2d(5, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)), (3, 5, 7, 8)),
    ("mnistcnn", mc.models.MnistCNN, (2, 1, 28, 28)),
    # on Numba, a fused step whose backward comes from the pool's winners (numba_sparse), padded, odd output
    ("conv5x5 relu pool", lambda: nn.Sequential(nn.Conv2d(6, 4, 5, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
     (3, 6, 9, 10)),
    ("conv dilation 2", lambda: nn.Conv2d(2, 3, 3, padding=2, dilation=2), (2, 2, 7, 6)),
    ("conv groups 2 dilation (2,1) s2", lambda: nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(2, 1), groups=2),
     (2, 4, 9, 8)),
    ("conv depthwise", lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3), (2, 3, 6, 7)),
    ("conv depthwise s2 no bias", lambda: nn.Conv2d(4, 4, 5, stride=2, padding=2, groups=4, bias=False), (2, 4, 9, 8)),
    ("adaptive avgpool (3, 2)", lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    ("adaptive avgpool global", lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 4)),
    ("adaptive maxpool (3, 2)", lambda: nn.AdaptiveMaxPool2d((3, 2)), (2, 3, 7, 5)),
    ("adaptive maxpool global", lambda: nn.AdaptiveMaxPool2d(1), (2, 3, 5, 4)),
    ("silu", nn.SiLU, (3, 7)),
    ("gelu", nn.GELU, (3, 7)),
    ("gelu tanh", lambda: nn.GELU(approximate="tanh"), (3, 7)),
    ("hardtanh", lambda: nn.Hardtanh(-0.5, 0.8), (3, 7)),
    ("relu6", nn.ReLU6, (3, 7)),
    ("hardsigmoid", nn.Hardsigmoid, (3, 7)),
    ("hardswish", nn.Hardswish, (3, 7)),
    ("identity", nn.Identity, (3, 7)),
    ("group norm", lambda: nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    ("group norm one group no affine", lambda: nn.GroupNorm(1, 3, affine=False), (3, 3, 5)),
    ("softmax", lambda: nn.Softmax(dim=1), (3, 7)),
    ("log softmax channels", lambda: nn.LogSoftmax(dim=1), (2, 4, 3, 3)),
    ("squeeze excitation", lambda: nn.SqueezeExcitation(4, 2), (2, 4, 3, 5)),
    ("squeeze excitation hard", lambda: nn.SqueezeExcitation(3, 5, nn.Hardswish, nn.Hardsigmoid), (2, 3, 4, 4)),
    ("residual identity skip", lambda: nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh()),
                                                   activation=nn.ReLU()), (2, 3, 5, 5)),
    ("residual conv skip", lambda: mc.models.basic_block(2, 4, stride=2), (3, 2, 6, 7)),
    ("resnet14", mc.models.ResNet14, (2, 1, 28, 28)),
    ("mobilenetmnist", mc.models.MobileNetMNIST, (2, 1, 28, 28)),
    ("mobilenetv3mnist", mc.models.MobileNetV3MNIST, (2, 1, 28, 28)),
]


def tie_free(shape):
    return tie_free_input(shape, rng)


# The two deep models: tens of thousands of ReLU units (50,000 in MobileNetMNIST's first layer alone)
# behind batch norm over a batch of 2; a step of +-eps in an early weight moves several units across
# their kinks by amounts too small to be told apart, so at eps 1e-6 central differences resolve their
# gradients to ~1e-4 only, depending on the draw (ResNet14 over 6 draws: up to 4.8e-4 at 1e-5, 2.0e-4
# at 1e-6, 2.5e-7 at 1e-7; MobileNetMNIST: 1.6e-3 and 3.4e-4 for one draw, at most 2.1e-6 at 1e-7
# over 6): the error shrinks with eps, the mark of non-smoothness, not of a wrong backward. They are
# checked at eps 1e-7; MobileNetMNIST's threshold leaves room for its worst draw. Both backwards equal torch's autograd to 1e-10
# (tests/test_models_vs_torch.py).
EPS = {"resnet14": 1e-7, "mobilenetmnist": 1e-7}
THRESHOLDS = {"mobilenetmnist": 1e-5}


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_layer_gradients_match_central_differences(name, make, shape):
    """Each case draws its weights and input from its own seed: the same numbers whichever tests
    run before it (with one shared generator, a subset of the tests gave resnet14 other numbers)."""
    seed = zlib.crc32(name.encode())
    mc.manual_seed(seed)
    x = tie_free_input(shape, np.random.default_rng(seed))
    errors = mc.gradcheck(make(), x, eps=EPS.get(name, 1e-6), max_entries=60)
    assert set(errors) >= {"input"}
    assert max(errors.values()) < THRESHOLDS.get(name, 1e-6), errors


@pytest.mark.parametrize("make", [nn.ReLU6, nn.Hardsigmoid, nn.Hardswish, lambda: nn.Hardtanh(-2.5, 4.0)],
                         ids=["relu6", "hardsigmoid", "hardswish", "hardtanh"])
def test_piecewise_activations_match_central_differences_on_every_piece(make):
    """Inputs over [-8, 8] (the layer list's [-2, 2] never reaches +-3 or 6), none within 1e-3 of a corner."""
    x = tie_free_input((4, 10), np.random.default_rng(5)) * 4
    assert min(np.abs(x - corner).min() for corner in (-3, -2.5, 0, 3, 4, 6)) > 1e-3
    assert x.min() < -3 and x.max() > 6
    errors = mc.gradcheck(make(), x, eps=1e-6)
    assert errors["input"] < 1e-6, errors


def test_gradcheck_detects_a_wrong_backward():
    class WrongReLU(nn.ReLU):
        def backward(self, dy):
            return super().backward(dy) * 1.01
    errors = mc.gradcheck(WrongReLU(), tie_free((3, 4)))
    assert errors["input"] > 1e-3


def test_gradcheck_leaves_the_module_untouched():
    layer = nn.BatchNorm2d(2)
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    mc.gradcheck(layer, tie_free((3, 2, 2, 2)))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert layer.weight.dtype == np.float32


def test_cross_entropy_gradient_numerically():
    logits = rng.standard_normal((4, 5))
    labels = np.array([0, 4, 2, 2])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss_fn(logits, labels)
    analytic = loss_fn.backward()
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        for sign in (1, -1):
            shifted = logits.copy()
            shifted[idx] += sign * 1e-6
            numeric[idx] += sign * float(nn.CrossEntropyLoss(label_smoothing=0.1)(shifted, labels)) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
