"""Elementwise activations. Shape: any -> same; each caches what its derivative needs."""

from .. import backend
from ._checks import check_float_array
from .module import Module


class ReLU(Module):
    """max(x, 0); derivative 1 where x > 0, else 0 (torch's choice at 0)."""
    # max(relu(window)) == relu(max(window)) exactly (NaN included): inference may pool first
    commutes_with_max_pool = True

    def forward(self, x):
        check_float_array(self, x)
        y = backend.ops_for(x).relu_forward(x)
        self.save_for_backward(y, y=y)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).relu_backward(dy, self.saved(dy).y)   # y <= 0 exactly where x <= 0


class LeakyReLU(Module):
    """x where x > 0, else negative_slope * x."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        check_float_array(self, x)
        xp = backend.xp_for(x)
        slope = xp.where(x > 0, x.dtype.type(1), x.dtype.type(self.negative_slope))
        y = x * slope
        self.save_for_backward(y, slope=slope)
        return y

    def backward(self, dy):
        return dy * self.saved(dy).slope

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed without overflow for large |x|; derivative y * (1 - y)."""

    def forward(self, x):
        check_float_array(self, x)
        xp = backend.xp_for(x)
        e = xp.exp(-xp.abs(x))                       # never overflows
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        self.save_for_backward(y, y=y)
        return y

    def backward(self, dy):
        y = self.saved(dy).y
        return dy * y * (1 - y)


class Tanh(Module):
    """tanh(x); derivative 1 - y**2."""

    def forward(self, x):
        check_float_array(self, x)
        y = backend.xp_for(x).tanh(x)
        self.save_for_backward(y, y=y)
        return y

    def backward(self, dy):
        y = self.saved(dy).y
        return dy * (1 - y * y)
