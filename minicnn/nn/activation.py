"""Activations, as torch.nn's: elementwise ones, Softmax and LogSoftmax along one axis, and Identity.
Shape: any -> same. The backend computes each one (ops.<name>_forward / <name>_backward); the record
keeps what its derivative needs."""

import warnings

from .. import backend
from ._checks import check_float_array
from .module import Module


class ReLU(Module):
    """max(x, 0); derivative 1 where x > 0, else 0 (torch's choice at 0). inplace (torch's flag) is
    accepted and changes nothing: minicnn never overwrites an input, the result is the same."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    @property
    def kind(self):
        """('relu',) for a backend's chain plan (None for subclasses)."""
        return ("relu",) if type(self) is ReLU else None

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).relu_forward(x)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).relu_backward(dy, self.saved(dy).record)


class LeakyReLU(Module):
    """x where x > 0, else negative_slope * x."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope, self.inplace = float(negative_slope), bool(inplace)

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).leaky_relu_forward(x, self.negative_slope)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).leaky_relu_backward(dy, self.saved(dy).record)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed without overflow for large |x|; derivative y * (1 - y)."""

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).sigmoid_forward(x)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).sigmoid_backward(dy, self.saved(dy).record)


class Tanh(Module):
    """tanh(x); derivative 1 - y**2."""

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).tanh_forward(x)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).tanh_backward(dy, self.saved(dy).record)


class SiLU(Module):
    """x * sigmoid(x) (also called swish); derivative s * (1 + x * (1 - s)), s = sigmoid(x). inplace is
    accepted and changes nothing."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).silu_forward(x)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).silu_backward(dy, self.saved(dy).record)


class GELU(Module):
    """x * Phi(x), Phi the standard normal's distribution function, as torch.nn.GELU.

    Args: approximate: 'none' (the exact erf form) or 'tanh' (Phi(x) ~ (1 + tanh(sqrt(2/pi) *
        (x + 0.044715 x^3))) / 2, as torch computes it).
    """

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).gelu_forward(x, self.approximate)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).gelu_backward(dy, self.saved(dy).record)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Hardtanh(Module):
    """x clamped to [min_val, max_val]; derivative 1 strictly inside, 0 at the ends and outside (torch's
    rule). inplace is accepted and changes nothing."""

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__()
        self.min_val, self.max_val, self.inplace = float(min_val), float(max_val), bool(inplace)
        if not self.max_val > self.min_val:
            raise ValueError(f"{type(self).__name__}: max_val must be greater than min_val, got min_val={min_val}, "
                             f"max_val={max_val}")

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).hardtanh_forward(x, self.min_val, self.max_val)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).hardtanh_backward(dy, self.saved(dy).record)

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"


class ReLU6(Hardtanh):
    """min(max(x, 0), 6), MobileNetV2's activation: Hardtanh(0, 6), as torch defines it."""

    def __init__(self, inplace=False):
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self):
        return ""


class Hardsigmoid(Module):
    """relu6(x + 3) / 6, a piecewise-linear sigmoid (MobileNetV3's gate); derivative 1/6 strictly
    inside (-3, 3), else 0. inplace is accepted and changes nothing."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).hardsigmoid_forward(x)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).hardsigmoid_backward(dy, self.saved(dy).record)


class Hardswish(Module):
    """x * relu6(x + 3) / 6, MobileNetV3's activation; derivative 0 up to -3, x / 3 + 1/2 between, 1 from
    3 on (torch's rule at the ends). inplace is accepted and changes nothing."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        check_float_array(self, x)
        y, record = backend.ops_for(x).hardswish_forward(x)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).hardswish_backward(dy, self.saved(dy).record)


class _AlongDim(Module):
    """A layer normalizing along one axis, dim (torch's implicit choice when None, with its warning)."""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def _axis(self, x):
        check_float_array(self, x)
        if self.dim is None:
            axis = 0 if x.ndim in (0, 1, 3) else 1
            warnings.warn(f"{type(self).__name__}: implicit dimension choice ({axis}) as torch makes it, deprecated "
                          f"there; give dim=, e.g. {type(self).__name__}(dim=1) for (N, K) scores", UserWarning,
                          stacklevel=3)
            return axis
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"{self!r}: dim {self.dim} is out of range for an input of {x.ndim} dimensions "
                             f"{tuple(x.shape)}")
        return self.dim % x.ndim

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """exp(x) / sum(exp(x)) along dim, as torch.nn.Softmax (probabilities: for a model's output at
    inference; train with CrossEntropyLoss on the scores instead). Shape: any -> same."""

    def forward(self, x):
        y, record = backend.ops_for(x).softmax_forward(x, self._axis(x))
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).softmax_backward(dy, self.saved(dy).record)


class LogSoftmax(_AlongDim):
    """log(softmax(x)) along dim, computed without overflow, as torch.nn.LogSoftmax; with NLLLoss
    it gives CrossEntropyLoss. Shape: any -> same."""

    def forward(self, x):
        y, record = backend.ops_for(x).log_softmax_forward(x, self._axis(x))
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).log_softmax_backward(dy, self.saved(dy).record)


class Identity(Module):
    """Returns its input (a placeholder, as torch.nn.Identity); backward returns dy. Arguments are
    accepted and ignored, as torch does."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        self.save_for_backward(x)
        return x

    def backward(self, dy):
        self.saved(dy)
        return dy
