"""Every model against the same network written with torch.nn.Sequential: same state_dict names
and shapes, and with the same initial weights the same forward, backward, and parameters after
5 SGD-momentum and 5 Adam steps (float64, rtol 1e-8)."""
import numpy as np
import pytest
import torch
from torch import nn as tnn

import minicnn as mc
from conftest import dropout_mask
from torch_compare import copy_state_to_torch, to_torch


def torch_lenet():
    return tnn.Sequential(tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                          tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))


def torch_convnet():
    return tnn.Sequential(tnn.Conv2d(1, 10, 5, 1, 1), tnn.MaxPool2d(2), tnn.ReLU(), tnn.BatchNorm2d(10),
                          tnn.Conv2d(10, 20, 5, 1, 1), tnn.MaxPool2d(2), tnn.ReLU(), tnn.BatchNorm2d(20),
                          tnn.Flatten(), tnn.Linear(500, 60), tnn.Dropout(0.5), tnn.ReLU(),
                          tnn.Linear(60, 20), tnn.Dropout(0.5), tnn.ReLU(), tnn.Linear(20, 10))


def torch_mnistcnn():
    return tnn.Sequential(tnn.Conv2d(1, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(32, 64, 3), tnn.ReLU(),
                          tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(1600, 512), tnn.ReLU(), tnn.Dropout(0.5),
                          tnn.Linear(512, 10))


def torch_tinybnnet():
    return tnn.Sequential(tnn.Conv2d(1, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(4, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Flatten(), tnn.Linear(196, 10))


def torch_fashioncnn():
    layers, c_in = [], 1
    for c in (32, 64, 128):
        layers += [tnn.Conv2d(c_in, c, 3, padding=1, bias=False), tnn.BatchNorm2d(c), tnn.ReLU(), tnn.MaxPool2d(2)]
        c_in = c
    layers += [tnn.Flatten(), tnn.Dropout(0.3), tnn.Linear(1152, 256), tnn.ReLU(), tnn.Dropout(0.3), tnn.Linear(256, 10)]
    return tnn.Sequential(*layers)


def torch_alexnet_mnist():
    return tnn.Sequential(tnn.Conv2d(1, 64, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(3, 1),
                          tnn.Conv2d(64, 192, 3, padding=2), tnn.ReLU(), tnn.MaxPool2d(3, 2),
                          tnn.Conv2d(192, 384, 3, padding=1), tnn.ReLU(), tnn.Conv2d(384, 256, 3, padding=1), tnn.ReLU(),
                          tnn.Conv2d(256, 256, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(3, 2), tnn.Flatten(),
                          tnn.Dropout(), tnn.Linear(9216, 4096), tnn.ReLU(), tnn.Dropout(), tnn.Linear(4096, 4096),
                          tnn.ReLU(), tnn.Linear(4096, 10))


def torch_animalnet():
    layers, c_in = [], 3
    for c in (16, 32, 64, 128, 256):
        layers += [tnn.Conv2d(c_in, c, 3), tnn.ReLU(), tnn.Conv2d(c, c, 3), tnn.ReLU(), tnn.MaxPool2d(2)]
        c_in = c
    layers += [tnn.Flatten(), tnn.Dropout(0.25), tnn.Linear(4096, 256), tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(256, 10)]
    return tnn.Sequential(*layers)


def torch_resnet14():
    from torch_compare import torch_basic_block
    layers, c_in = [tnn.Conv2d(1, 16, 3, padding=1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()], 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(2):
            layers.append(torch_basic_block(c_in, width, 2 if stage > 0 and block == 0 else 1))
            c_in = width
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, 10))


def torch_mobilenet_mnist():
    def separable(c_in, c_out, stride=1):
        return [tnn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), tnn.BatchNorm2d(c_in), tnn.ReLU(),
                tnn.Conv2d(c_in, c_out, 1, bias=False), tnn.BatchNorm2d(c_out), tnn.ReLU()]
    return tnn.Sequential(tnn.Conv2d(1, 32, 3, padding=1, bias=False), tnn.BatchNorm2d(32), tnn.ReLU(),
                          *separable(32, 64), *separable(64, 128, 2), *separable(128, 128), *separable(128, 256, 2),
                          tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(0.2), tnn.Linear(256, 10))


def torch_inverted_residual(c_in, expanded, c_out, kernel, stride, squeeze, activation):
    from torch_compare import TorchResidual, TorchSqueezeExcitation
    layers = []
    if expanded != c_in:
        layers += [tnn.Conv2d(c_in, expanded, 1, bias=False), tnn.BatchNorm2d(expanded), activation()]
    layers += [tnn.Conv2d(expanded, expanded, kernel, stride, kernel // 2, groups=expanded, bias=False),
               tnn.BatchNorm2d(expanded), activation()]
    if squeeze:
        layers.append(TorchSqueezeExcitation(expanded, squeeze, scale_activation=tnn.Hardsigmoid))
    layers += [tnn.Conv2d(expanded, c_out, 1, bias=False), tnn.BatchNorm2d(c_out)]
    return [TorchResidual(tnn.Sequential(*layers))] if stride == 1 and c_in == c_out else layers


def torch_mobilenet_v3_mnist():
    block = torch_inverted_residual
    return tnn.Sequential(tnn.Conv2d(1, 16, 3, padding=1, bias=False), tnn.BatchNorm2d(16), tnn.Hardswish(),
                          *block(16, 16, 16, 3, 2, 8, tnn.ReLU), *block(16, 64, 24, 3, 1, 0, tnn.ReLU),
                          *block(24, 72, 24, 3, 1, 0, tnn.ReLU), *block(24, 96, 40, 5, 2, 24, tnn.Hardswish),
                          *block(40, 160, 40, 5, 1, 40, tnn.Hardswish), *block(40, 120, 48, 5, 1, 32, tnn.Hardswish),
                          tnn.Conv2d(48, 288, 1, bias=False), tnn.BatchNorm2d(288), tnn.Hardswish(),
                          tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(0.2), tnn.Linear(288, 10))


MODELS = [
    (mc.models.LeNet, torch_lenet, 61_706, 4),
    (mc.models.ConvNet, torch_convnet, 36_830, 4),
    (mc.models.MnistCNN, torch_mnistcnn, 843_658, 3),
    (mc.models.TinyBNNet, torch_tinybnnet, 2_174, 4),
    (mc.models.FashionCNN, torch_fashioncnn, 390_634, 3),
    (mc.models.AlexNetMNIST, torch_alexnet_mnist, 56_826_570, 2),
    (mc.models.AnimalNet, torch_animalnet, 2_230_170, 2),
    (mc.models.ResNet14, torch_resnet14, 174_970, 4),
    (mc.models.MobileNetMNIST, torch_mobilenet_mnist, 67_338, 4),
    (mc.models.MobileNetV3MNIST, torch_mobilenet_v3_mnist, 92_314, 4),
]
IDS = [m[0].__name__ for m in MODELS]


class SameMaskDropout(tnn.Module):
    """Stands in for torch's Dropout and applies the mask our Dropout just drew, so both
    networks drop the same units."""

    def __init__(self, ours):
        super().__init__()
        self.ours = ours

    def forward(self, x):
        mask = dropout_mask(self.ours)
        if mask is None:
            return x
        return x * (torch.from_numpy(mask) if isinstance(mask, np.ndarray) else torch.from_dlpack(mask))


def paired(make_ours, make_theirs):
    ours = make_ours().double()
    theirs = make_theirs().double()
    for i, layer in enumerate(ours):
        if isinstance(layer, mc.nn.Dropout):
            theirs[i] = SameMaskDropout(layer)
    copy_state_to_torch(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("make_ours,make_theirs,n_params,batch", MODELS, ids=IDS)
def test_state_dict_names_shapes_and_parameter_count(make_ours, make_theirs, n_params, batch):
    ours, theirs = make_ours(), make_theirs()
    ours_shapes = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    theirs_shapes = [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    assert ours_shapes == theirs_shapes                       # names, shapes and torch's order
    assert ours.num_parameters() == n_params == sum(p.numel() for p in theirs.parameters())
    # weights move both ways without renaming
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for k, v in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[k], v.numpy())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("make_ours,make_theirs,n_params,batch", MODELS, ids=IDS)
def test_training_steps_match_torch(make_ours, make_theirs, n_params, batch, optimizer):
    ours, theirs = paired(make_ours, make_theirs)
    rng = np.random.default_rng(3)
    if optimizer == "sgd":
        opt = mc.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
        opt_t = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = mc.optim.Adam(ours.parameters(), lr=1e-3)
        opt_t = torch.optim.Adam(theirs.parameters(), lr=1e-3)
    loss_fn, loss_fn_t = mc.nn.CrossEntropyLoss(), tnn.CrossEntropyLoss()
    for step in range(5):
        x = rng.standard_normal((batch,) + make_ours.input_shape)
        y = rng.integers(0, 10, batch)
        logits = ours(x)
        loss = loss_fn(logits, y)
        opt.zero_grad()
        dx = ours.backward(loss_fn.backward())
        opt.step()

        xt = to_torch(x, requires_grad=True)
        logits_t = theirs(xt)
        loss_t = loss_fn_t(logits_t, torch.from_numpy(y))
        opt_t.zero_grad()
        loss_t.backward()
        opt_t.step()
        np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-8)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-12)
    theirs_state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        # atol 1e-10: a conv bias followed by batch norm has a true gradient of exactly 0, so what
        # both libraries compute for it is rounding noise (~1e-17), which Adam rescales into steps
        # of ~1e-12 per step in directions that differ between the two; every other entry
        # agrees to rtol 1e-8.
        np.testing.assert_allclose(value, theirs_state[name].numpy(), rtol=1e-8, atol=1e-10, err_msg=name)


EVAL_MODELS = [m for m in MODELS if m[0] not in (mc.models.AlexNetMNIST, mc.models.AnimalNet)]


@pytest.mark.parametrize("make_ours,make_theirs,n_params,batch", EVAL_MODELS, ids=[m[0].__name__ for m in EVAL_MODELS])
def test_eval_mode_matches_torch(make_ours, make_theirs, n_params, batch):
    ours, theirs = paired(make_ours, make_theirs)
    ours.eval(), theirs.eval()
    x = np.random.default_rng(5).standard_normal((batch,) + make_ours.input_shape)
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-8, atol=1e-12)


def test_summary_lists_layers_and_total():
    text = mc.summary(mc.models.LeNet(), (1, 28, 28))
    assert "Conv2d" in text and "(1, 6, 28, 28)" in text and "Total parameters: 61,706" in text
    text = mc.summary(mc.models.AnimalNet(), (3, 256, 256))
    assert "(1, 256, 4, 4)" in text and "2,230,170" in text


def test_get_model_by_name():
    assert isinstance(mc.models.get_model("LeNet"), mc.models.LeNet)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        mc.models.get_model("resnet")
