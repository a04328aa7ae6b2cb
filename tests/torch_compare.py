"""The comparison helper lives in the package (minicnn.testing: users test their own layers with
it); this module re-exports it for the tests, with the torch twins of minicnn's blocks (written
here again on purpose: a reference that does not lean on minicnn.interop.torch_residual_class)."""
import numpy as np
import torch

from minicnn import testing
from minicnn.testing import (assert_close, assert_matches_torch, copy_state_to_torch, on_device,  # noqa: F401
                             to_torch, torch_device)

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def set_device(device):
    """'cpu' or 'cuda': where assert_matches_torch runs both modules."""
    testing.DEVICE = device


class TorchResidual(torch.nn.Module):
    """minicnn.nn.Residual written in torch: activation(body(x) + shortcut(x)), children named alike."""

    def __init__(self, body, shortcut=None, activation=None):
        super().__init__()
        self.body, self.shortcut, self.activation = body, shortcut, activation

    def forward(self, x):
        y = self.body(x) + (x if self.shortcut is None else self.shortcut(x))
        return y if self.activation is None else self.activation(y)


class TorchSqueezeExcitation(torch.nn.Module):
    """torchvision.ops.SqueezeExcitation (torchvision is not a test dependency): the same children."""

    def __init__(self, input_channels, squeeze_channels, activation=torch.nn.ReLU, scale_activation=torch.nn.Sigmoid):
        super().__init__()
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc1 = torch.nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = torch.nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation, self.scale_activation = activation(), scale_activation()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


def torch_basic_block(in_channels, out_channels, stride=1):
    """minicnn.models.basic_block in torch."""
    tnn = torch.nn
    body = tnn.Sequential(tnn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), tnn.BatchNorm2d(out_channels),
                          tnn.ReLU(), tnn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
                          tnn.BatchNorm2d(out_channels))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = tnn.Sequential(tnn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                  tnn.BatchNorm2d(out_channels))
    return TorchResidual(body, shortcut, tnn.ReLU())
