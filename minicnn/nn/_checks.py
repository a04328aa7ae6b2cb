"""Input checks shared by layers, so every error names the layer, what it expected and what came."""
import numpy as np

from .. import backend

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(value):
    """Short description of a value for error messages: 'int64 array of shape (2, 3)', 'list'."""
    if backend.is_array(value):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    return type(value).__name__


def check_float_array(layer, x, what="input"):
    """TypeError unless x is a float32/float64 numpy or cupy array."""
    if not backend.is_array(x):
        raise TypeError(f"{layer!r}: expected the {what} as a numpy or cupy array, got {describe(x)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{layer!r}: expected a float32 or float64 {what}, got dtype {x.dtype} "
                        f"(convert with x.astype(np.float32))")


def check_input(layer, x, shape_desc, ndim, channels=None, channel_axis=1, params_dtype=None):
    """Validate a layer input: float array, ``ndim`` dimensions (an int, a tuple of allowed
    counts, or None for any count >= 1), ``channels`` along ``channel_axis``, dtype equal to the layer's parameters."""
    check_float_array(layer, x)
    allowed = range(1, 33) if ndim is None else (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed or (channels is not None and x.shape[channel_axis] != channels):
        raise ValueError(f"{layer!r}: expected input {shape_desc}, got {tuple(x.shape)}")
    if params_dtype is not None and x.dtype != params_dtype:
        raise TypeError(f"{layer!r}: input dtype {x.dtype} does not match the layer's {params_dtype} "
                        f"parameters (use model.to(np.{x.dtype}) or x.astype(np.{params_dtype}))")


def check_grad(layer, dy, expected_shape, expected_dtype):
    """Validate an upstream gradient against the shape and dtype of the cached forward output."""
    check_float_array(layer, dy, what="gradient")
    if tuple(dy.shape) != tuple(expected_shape):
        raise ValueError(f"{layer!r}.backward: expected a gradient of the output's shape "
                         f"{tuple(expected_shape)}, got {tuple(dy.shape)}")
    if dy.dtype != expected_dtype:
        raise TypeError(f"{layer!r}.backward: expected a {expected_dtype} gradient like the output, got {dy.dtype}")


def pair(value, name, layer_name, minimum):
    """Normalize an int-or-pair hyper-parameter to a tuple of two ints >= minimum."""
    pair_ = (value, value) if isinstance(value, (int, np.integer)) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair_ is None or len(pair_) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair_):
        raise TypeError(f"{layer_name}: {name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in pair_):
        raise ValueError(f"{layer_name}: {name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in pair_)


def count(value, name, layer_name, minimum=1):
    """Validate a positive integer hyper-parameter such as a channel count."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{layer_name}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{layer_name}: {name} must be >= {minimum}, got {value}")
    return int(value)
