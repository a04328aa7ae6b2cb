"""Weight initialization: torch's defaults for fresh layers (uniform, default_bound) and torch.nn.init's
functions for a model's own scheme, with torch's names, arguments and formulas:

    def init_weights(m):
        if isinstance(m, mc.nn.Conv2d):
            mc.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            mc.nn.init.zeros_(m.bias)
    model.apply(init_weights)

Each ``*_`` function fills a Parameter (or a NumPy or CuPy array) in place and returns it. The
random ones draw from minicnn's generator (minicnn.manual_seed): the same distributions as torch's,
not the same numbers.
"""
import math

import numpy as np

from .. import backend, random


def uniform(shape, bound, dtype=np.float32):
    """Samples U(-bound, bound) from minicnn's global generator (see minicnn.manual_seed)."""
    return random.get_rng().uniform(-bound, bound, size=shape).astype(dtype)


def default_bound(fan_in):
    """torch's default for Conv2d and Linear: kaiming_uniform(a=sqrt(5)) for the weight and
    the bias alike reduce to U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


# ------------------------------------------------------------------ torch.nn.init

def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (torch's table): 1 for linear, conv and sigmoid, 5/3
    for tanh, sqrt(2) for relu, sqrt(2 / (1 + slope^2)) for leaky_relu (slope param, default 0.01),
    3/4 for selu."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor):
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel): in * kernel size, out * kernel size."""
    shape = _array(tensor).shape
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out cannot be computed for a tensor of {len(shape)} dimensions "
                         f"(shape {tuple(shape)}); they need at least 2 (out, in, ...)")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def uniform_(tensor, a=0.0, b=1.0):
    """Fill with U(a, b)."""
    return _fill(tensor, lambda rng, shape: rng.uniform(a, b, size=shape))


def normal_(tensor, mean=0.0, std=1.0):
    """Fill with N(mean, std^2)."""
    return _fill(tensor, lambda rng, shape: rng.normal(mean, std, size=shape))


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Fill with N(mean, std^2) restricted to [a, b] (values outside are drawn again)."""
    if not a < b:
        raise ValueError(f"trunc_normal_: needs a < b, got a={a}, b={b}")

    def draw(rng, shape):
        values = rng.normal(mean, std, size=shape)
        outside = (values < a) | (values > b)
        while outside.any():
            values[outside] = rng.normal(mean, std, size=int(outside.sum()))
            outside = (values < a) | (values > b)
        return values
    return _fill(tensor, draw)


def constant_(tensor, val):
    """Fill with val."""
    return _fill(tensor, lambda rng, shape: np.full(shape, val, dtype=np.float64))


def ones_(tensor):
    return constant_(tensor, 1.0)


def zeros_(tensor):
    return constant_(tensor, 0.0)


def xavier_uniform_(tensor, gain=1.0):
    """Glorot: U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = math.sqrt(3.0) * gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain=1.0):
    """Glorot: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def _kaiming_std(tensor, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He: U(-bound, bound), bound = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).
    A tensor without elements is left as it is (torch's no-op)."""
    if _array(tensor).size == 0:
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He: N(0, std^2), std = gain / sqrt(fan), gain = calculate_gain(nonlinearity, a)."""
    if _array(tensor).size == 0:
        return tensor
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity))


def _array(tensor):
    """The array behind a Parameter (or the array itself)."""
    from .module import Parameter
    array = tensor.data if isinstance(tensor, Parameter) else tensor
    if not backend.is_array(array) or array.dtype.kind != "f":
        raise TypeError(f"expected a Parameter or a floating NumPy or CuPy array, got {type(tensor).__name__}")
    return array


def _fill(tensor, draw):
    """Write draw(minicnn's generator, shape) (float64 on the host) into tensor's array in place,
    in its dtype and on its device; returns tensor."""
    array = _array(tensor)
    values = np.asarray(draw(random.get_rng(), array.shape)).astype(array.dtype)
    array[...] = backend.on_device_of(values, array)
    return tensor
