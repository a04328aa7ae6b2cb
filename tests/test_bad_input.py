"""Bad input gets a clear ValueError or TypeError naming the layer, what it expected and what came."""
import numpy as np
import pytest

import minicnn as mc
import minicnn.nn as nn

x4 = np.zeros((2, 3, 8, 8), dtype=np.float32)


@pytest.mark.parametrize("layer,x,error,pattern", [
    (nn.Conv2d(3, 4, 3), np.zeros((3, 8, 8), np.float32), ValueError, r"Conv2d\(3, 4.*expected input \(N, 3, H, W\), got \(3, 8, 8\)"),
    (nn.Conv2d(3, 4, 3), np.zeros((2, 1, 8, 8), np.float32), ValueError, r"expected input \(N, 3, H, W\), got \(2, 1, 8, 8\)"),
    (nn.Conv2d(3, 4, 5), np.zeros((1, 3, 2, 2), np.float32), ValueError, r"kernel 5x5 is larger than the padded input 2x2"),
    (nn.Conv2d(3, 4, 3), np.zeros((2, 3, 8, 8), np.int64), TypeError, r"Conv2d.*float32 or float64 input, got dtype int64"),
    (nn.Conv2d(3, 4, 3), np.zeros((2, 3, 8, 8), object), TypeError, r"got dtype object"),
    (nn.Conv2d(3, 4, 3), [[1.0]], TypeError, r"numpy or cupy array, got list"),
    (nn.Conv2d(3, 4, 3), np.zeros((2, 3, 8, 8), np.float64), TypeError, r"input dtype float64 does not match the layer's float32"),
    (nn.MaxPool2d(3), np.zeros((1, 1, 2, 2), np.float32), ValueError, r"MaxPool2d.*window 3x3 is larger than the padded input 2x2"),
    (nn.MaxPool2d(2), np.zeros((4, 4), np.float32), ValueError, r"MaxPool2d.*expected input \(N, C, H, W\), got \(4, 4\)"),
    (nn.AvgPool2d(2), np.zeros((1, 1, 4, 4), np.uint8), TypeError, r"AvgPool2d.*got dtype uint8"),
    (nn.BatchNorm2d(3), np.zeros((2, 4, 5, 5), np.float32), ValueError, r"BatchNorm2d\(3.*expected input \(N, C, H, W\) with C = num_features, got \(2, 4, 5, 5\)"),
    (nn.BatchNorm1d(3), np.zeros((1, 3), np.float32), ValueError, r"more than 1 value per channel"),
    (nn.Linear(10, 2), np.zeros((4, 9), np.float32), ValueError, r"Linear\(in_features=10.*expected input \(N, 10\), got \(4, 9\)"),
    (nn.ReLU(), np.zeros(3, np.int32), TypeError, r"ReLU\(\).*got dtype int32"),
])
def test_forward_rejects_bad_input(layer, x, error, pattern):
    with pytest.raises(error, match=pattern):
        layer(x)


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(0, 3, 3), lambda: nn.Conv2d(1, 3, 0), lambda: nn.Conv2d(1, 3, 3, stride=0),
                                  lambda: nn.Conv2d(1, 3, (1, 2, 3)), lambda: nn.MaxPool2d(2, padding=2),
                                  lambda: nn.Dropout(1.0), lambda: nn.Linear(3.5, 2), lambda: nn.CrossEntropyLoss("avg"),
                                  lambda: nn.BatchNorm2d(3, momentum=2)])
def test_constructor_rejects_bad_hyperparameters(make):
    with pytest.raises((ValueError, TypeError)):
        make()


@pytest.mark.parametrize("layer", [nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Linear(3, 2), nn.BatchNorm2d(2),
                                   nn.CrossEntropyLoss(), mc.models.LeNet()], ids=lambda m: type(m).__name__)
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        layer.backward(np.zeros((1, 1), np.float32)) if not isinstance(layer, nn.CrossEntropyLoss) else layer.backward()


def test_backward_rejects_a_gradient_of_the_wrong_shape():
    layer = nn.Conv2d(3, 4, 3)
    layer(x4)
    with pytest.raises(ValueError, match=r"expected a gradient of the output's shape \(2, 4, 6, 6\), got \(2, 4, 6\)"):
        layer.backward(np.zeros((2, 4, 6), np.float32))


def test_backward_after_no_grad_forward_is_refused():
    layer = nn.Linear(3, 2)
    with mc.no_grad():
        layer(np.zeros((1, 3), np.float32))
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("labels,error,pattern", [
    (np.array([0, 10]), ValueError, r"labels must be in \[0, 10\) for 10 classes, got 10"),
    (np.array([-1, 2]), ValueError, r"got -1"),
    (np.array([0.0, 1.0]), TypeError, r"integer class labels \(N,\), got float64 array"),
    (np.array([0, 1, 2]), ValueError, r"expected labels of shape \(2,\)"),
    ([0, 1], TypeError, r"got list"),
])
def test_cross_entropy_rejects_bad_labels(labels, error, pattern):
    with pytest.raises(error, match=pattern):
        nn.CrossEntropyLoss()(np.zeros((2, 10), np.float32), labels)


def test_cross_entropy_rejects_bad_logits():
    with pytest.raises(ValueError, match=r"expected logits \(N, K\), got \(2, 3, 4\)"):
        nn.CrossEntropyLoss()(np.zeros((2, 3, 4), np.float32), np.array([0, 1]))
