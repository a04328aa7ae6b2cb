"""Squeeze and excitation: a block that reweights its input's channels by a gate computed from the
input itself (Hu et al. 2018; MobileNetV3 and EfficientNet put one in each block).

    x (N, C, H, W) -> mean over H, W (N, C, 1, 1) -> 1x1 conv to S channels -> activation
      -> 1x1 conv back to C channels -> scale_activation = gate (N, C, 1, 1);   y = x * gate
"""
from .. import backend
from ._checks import check_input
from .activation import ReLU, Sigmoid
from .conv import Conv2d
from .module import Module
from .pool import AdaptiveAvgPool2d


class SqueezeExcitation(Module):
    """torchvision.ops.SqueezeExcitation: y = x * scale_activation(fc2(activation(fc1(avgpool(x))))).

    Backward is the product rule: x reaches y twice, directly (dx = dy * gate) and through the gate
    (dgate = the sum over each plane of dy * x, sent back through the gate's layers), and the input
    gradient is the sum of the two. Children and state_dict keys are torchvision's (fc1.weight,
    fc1.bias, fc2.weight, fc2.bias).

    Args: input_channels C, squeeze_channels S; activation, scale_activation: classes (or functions)
        making a Module, called with no arguments (default ReLU and Sigmoid; MobileNetV3 takes Hardsigmoid).
    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, input_channels, squeeze_channels, activation=ReLU, scale_activation=Sigmoid):
        super().__init__()
        self.input_channels = input_channels
        self.avgpool = AdaptiveAvgPool2d(1)
        self.fc1 = Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def gate(self, x):
        """The factor of each channel, (N, C, 1, 1)."""
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))

    def forward(self, x):
        check_input(self, x, f"(N, {self.input_channels}, H, W)", 4, self.input_channels,
                    params_dtype=self.fc1.weight.dtype)
        gate = self.gate(x)
        y = backend.ops_for(x).scale_channels(x, gate)
        self.save_for_backward(y, x=x, gate=gate)
        return y

    def backward(self, dy):
        saved = self.saved(dy)
        ops = backend.ops_for(dy)
        dx, dgate = ops.scale_channels_backward(dy, saved.x, saved.gate)
        for layer in (self.scale_activation, self.fc2, self.activation, self.fc1, self.avgpool):
            dgate = layer.backward(dgate)
        return ops.add(dx, dgate)
