"""Group normalization (Wu and He, 2018), as torch.nn.GroupNorm: the channels of each sample are
split into G groups, and each group is normalized by its own mean and biased variance (over its
channels and every position), then scaled and shifted per channel. Nothing depends on the batch:
the same in training and eval, and as good for batches of 1 or 2 as for 256.
"""
import math

import numpy as np

from .. import backend
from ._checks import check_input, count
from .module import Module, Parameter, place_on


class GroupNorm(Module):
    """Args: num_groups G (dividing num_channels), num_channels C, eps (added to the variance),
        affine (a per-channel weight and bias, initialized to 1 and 0).
    Shape: (N, C, *) -> the same (images (N, C, H, W), or (N, C) and (N, C, L)).
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=np.float32):
        super().__init__()
        name = f"GroupNorm({num_groups}, {num_channels})"
        self.num_groups = count(num_groups, "num_groups", name)
        self.num_channels = count(num_channels, "num_channels", name)
        if self.num_channels % self.num_groups:
            raise ValueError(f"{name}: num_channels must be divisible by num_groups")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}")
        self.eps, self.affine = float(eps), bool(affine)
        if self.affine:
            self.weight = Parameter(np.ones(num_channels, dtype=dtype))
            self.bias = Parameter(np.zeros(num_channels, dtype=dtype))
        place_on(self, device)

    def _params(self, ops, dtype):
        if self.affine:
            return self.weight.data, self.bias.data
        return ops.xp.ones(self.num_channels, dtype=dtype), ops.xp.zeros(self.num_channels, dtype=dtype)

    def forward(self, x):
        check_input(self, x, f"(N, {self.num_channels}, *)", range(2, 33), self.num_channels,
                    params_dtype=self.weight.dtype if self.affine else None)
        ops = backend.ops_for(x)
        gamma, beta = self._params(ops, x.dtype)
        y4, record = ops.group_norm_forward(self._grouped(x), gamma, beta, self.eps)
        y = y4.reshape(x.shape)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        record = self.saved(dy).record
        ops = backend.ops_for(dy)
        dx4, dgamma, dbeta = ops.group_norm_backward(self._grouped(dy), record, self._params(ops, dy.dtype)[0])
        if self.affine:
            self.weight.accumulate_grad(dgamma, owned=True)
            self.bias.accumulate_grad(dbeta, owned=True)
        return dx4.reshape(dy.shape)

    def _grouped(self, a):
        """a (N, C, *) viewed as (N, G, C/G, L)."""
        G = self.num_groups
        return a.reshape(a.shape[0], G, self.num_channels // G, math.prod(a.shape[2:]))

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
