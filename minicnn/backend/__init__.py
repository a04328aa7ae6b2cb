"""The one door between layers and array code.

A layer asks ``ops = ops_for(x)`` and calls ``ops.im2col(...)``, ``ops.maxpool2d_forward(...)``
and so on; it never imports numba or cupy. Each backend is a module exposing the same functions
with the same signatures (see ``numpy_ops`` for the readable reference):

    numpy  plain NumPy, the reference every other backend is tested against
    numba  Numba-compiled CPU kernels (when numba is importable)
    cupy   CUDA kernels on CuPy arrays (chosen whenever the array is a CuPy array)

For NumPy arrays the fastest available CPU backend is used unless one is forced with the
environment variable ``MINICNN_BACKEND=numpy|numba`` or with :func:`set_backend`.
"""
import contextlib
import importlib
import os

import numpy as np

CPU_BACKENDS = ("numpy", "numba")
_forced = None          # set_backend(...) or MINICNN_BACKEND; None means "fastest available"
_default = None         # the fastest available CPU backend, found on first use
_loaded = {}


def _load(name):
    """Import backend ``name`` once; raise ImportError with a helpful message if impossible."""
    if name not in _loaded:
        module = {"numpy": "numpy_ops", "numba": "numba_ops", "cupy": "cupy_ops"}[name]
        try:
            _loaded[name] = importlib.import_module(f"{__name__}.{module}")
        except ImportError as err:
            hint = {"numba": "pip install numba", "cupy": "pip install 'minicnn[cuda]'"}.get(name, "")
            _loaded[name] = f"minicnn backend {name!r} is not available ({err}); {hint}"
    if isinstance(_loaded[name], str):
        # a fresh exception each time: re-raising one stored instance would chain every
        # traceback (and the arrays in its frames) onto it
        raise ImportError(_loaded[name])
    return _loaded[name]


def _available(name):
    try:
        _load(name)
        return True
    except ImportError:
        return False


def available_backends():
    """Names of the backends that import on this machine, e.g. ['numpy', 'numba']."""
    return [name for name in ("numpy", "numba", "cupy") if _available(name)]


def set_backend(name):
    """Force the CPU backend for NumPy arrays: 'numpy', 'numba', or None for the fastest.

    Returns the previous setting so it can be restored.
    """
    global _forced
    if name is not None and name not in CPU_BACKENDS:
        raise ValueError(f"set_backend: expected one of {CPU_BACKENDS} or None, got {name!r}")
    if name is not None:
        _load(name)
    previous, _forced = _forced, name
    return previous


def get_backend():
    """Name of the backend used for NumPy arrays right now."""
    global _default
    if _forced is not None:
        return _forced
    if _default is None:
        _default = "numba" if _available("numba") else "numpy"
    return _default


class use_backend:
    """Context manager: ``with use_backend('numpy'): ...`` runs the block on that CPU backend."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = set_backend(self.name)
        return self

    def __exit__(self, *exc):
        set_backend(self.previous)


def is_cupy_array(x):
    return type(x).__module__.startswith("cupy")


def is_array(x):
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def to_numpy(a):
    """A NumPy view or copy of ``a`` (CuPy arrays are copied to the host)."""
    return a.get() if is_cupy_array(a) else np.asarray(a)


def device_converter(device):
    """A function that moves an array to ``device`` ('cpu' or 'cuda')."""
    if device == "cpu":
        return to_numpy
    if device == "cuda" or device.startswith("cuda:"):
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # ImportError, or CUDA runtime errors when no GPU is present
            raise RuntimeError(f"device 'cuda' requested but not usable: {err}. "
                               "Install CuPy (pip install 'minicnn[cuda]') on a machine with an NVIDIA GPU.") from err
        return cupy.asarray
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def ops_for(x):
    """The primitive table for array ``x`` (CuPy arrays get the CUDA backend)."""
    if is_cupy_array(x):
        return _load("cupy")
    return _load(get_backend())


def pass_scope(x):
    """The context a whole forward or backward pass of a model runs in, for arrays like x: on the
    Numba backend NumPy's BLAS is held to one thread throughout (minicnn's own threads share the
    cores, see cores.one_blas_thread) instead of being switched for each of the ~25 products of a
    step and back (LeNet's training step at batch 64 and 256: 2.5% faster on 2 Xeon cores)."""
    scope = getattr(ops_for(x), "pass_scope", None)
    return scope() if scope is not None else contextlib.nullcontext()


def xp_for(x):
    """The array module (numpy or cupy) that owns ``x``."""
    if is_cupy_array(x):
        import cupy
        return cupy
    return np


_env = os.environ.get("MINICNN_BACKEND")
if _env:
    set_backend(_env.strip().lower())
