"""Layers with hand-written forward and backward passes, named and shaped as in torch.nn."""
from .activation import (GELU, Hardsigmoid, Hardswish, Hardtanh, Identity, LeakyReLU, LogSoftmax, ReLU, ReLU6, SiLU,
                         Sigmoid, Softmax, Tanh)
from .batchnorm import BatchNorm1d, BatchNorm2d
from .container import ModuleList, Residual, Sequential
from .conv import Conv2d
from .dropout import Dropout, Dropout2d
from .excitation import SqueezeExcitation
from .groupnorm import GroupNorm
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss, NLLLoss
from .module import Module, Parameter, StateReuseWarning, is_grad_enabled, no_grad
from .pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "Module", "Parameter", "Sequential", "Residual", "ModuleList", "no_grad", "is_grad_enabled", "StateReuseWarning",
    "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "BatchNorm1d", "BatchNorm2d",
    "GroupNorm",
    "Dropout", "Dropout2d", "SqueezeExcitation",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "GELU", "Hardtanh", "ReLU6", "Hardsigmoid", "Hardswish",
    "Identity", "Linear", "Flatten", "CrossEntropyLoss", "NLLLoss", "Softmax", "LogSoftmax",
]
