"""Fully connected layer and the Flatten that usually precedes it.

    x (N, in_features)   W (out_features, in_features)   b (out_features,)
    y = x @ W.T + b      (N, out_features); leading dimensions beyond N are allowed
"""
import math

import numpy as np

from .. import backend
from ._checks import check_float_array, check_input, count
from .init import default_bound, uniform
from .module import Module, Parameter, place_on


class Linear(Module):
    """Affine map of the last axis, as torch.nn.Linear.

    Shape: (*, in_features) -> (*, out_features).
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=np.float32):
        super().__init__()
        name = f"Linear({in_features}, {out_features})"
        self.in_features = count(in_features, "in_features", name)
        self.out_features = count(out_features, "out_features", name)
        bound = default_bound(in_features)
        self.weight = Parameter(uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(uniform((out_features,), bound, dtype)) if bias else None
        place_on(self, device)

    def forward(self, x):
        check_input(self, x, f"(N, {self.in_features})", None, self.in_features, channel_axis=-1,
                    params_dtype=self.weight.dtype)
        x2 = x.reshape(-1, self.in_features)
        y = backend.ops_for(x).matmul(x2, self.weight.data.T)
        if self.bias is not None:
            y += self.bias.data
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        self.save_for_backward(y, x2=x2, x_shape=x.shape)
        return y

    def backward(self, dy):
        s = self.saved(dy)
        dy2 = dy.reshape(-1, self.out_features)
        matmul = backend.ops_for(dy).matmul
        self.weight.accumulate_grad(matmul(dy2.T, s.x2), owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(dy2.sum(axis=0), owned=True)
        return matmul(dy2, self.weight.data).reshape(s.x_shape)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Joins every axis after the first: (N, C, H, W) -> (N, C*H*W). torch's start_dim and end_dim
    are accepted at their defaults (1, -1) only."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        if (start_dim, end_dim) != (1, -1):
            raise ValueError(f"Flatten: start_dim={start_dim}, end_dim={end_dim} are not supported (only 1, -1: "
                             "every axis after the batch axis)")

    def forward(self, x):
        check_float_array(self, x)
        if x.ndim < 1:
            raise ValueError(f"{self!r}: expected input with a batch axis (N, ...), got a scalar")
        y = x.reshape(x.shape[0], math.prod(x.shape[1:]))            # explicit: an empty batch too
        self.save_for_backward(y, x_shape=x.shape)
        return y

    def backward(self, dy):
        return dy.reshape(self.saved(dy).x_shape)
