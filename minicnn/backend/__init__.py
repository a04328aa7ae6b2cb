"""The one door between layers and array code.

A layer asks ``ops = ops_for(x)`` and calls ``ops.conv2d_forward(...)``, ``ops.maxpool2d_forward(...)``
and so on; it never imports numba or cupy, and never asks which backend it got. Every backend is a
module with exactly the ops declared in ``contract.py`` (checked when it loads):

    numpy  plain NumPy, the readable reference every other backend is tested against
    numba  Numba-compiled CPU kernels on minicnn's own threads (when numba is importable)
    cupy   CUDA kernels on CuPy arrays (chosen whenever the array is a CuPy array)

For NumPy arrays the fastest available CPU backend is used unless one is forced with the
environment variable ``MINICNN_BACKEND=numpy|numba`` or with :func:`set_backend`. Besides choosing
the backend, this module converts arrays between devices (``to_numpy``, ``device_converter``,
``on_device_of``).
"""
import importlib
import os

import numpy as np

from . import contract

CPU_BACKENDS = ("numpy", "numba")
_forced = None          # set_backend(...) or MINICNN_BACKEND; None means "fastest available"
_default = None         # the fastest available CPU backend, found on first use
_loaded = {}


def _load(name):
    """Import backend ``name`` once; raise ImportError with a helpful message if impossible."""
    if name not in _loaded:
        module = {"numpy": "numpy_ops", "numba": "numba_ops", "cupy": "cupy_ops"}[name]
        try:
            loaded = importlib.import_module(f"{__name__}.{module}")
        except ImportError as err:
            hint = {"numba": "pip install numba", "cupy": "pip install 'minicnn[cuda]'"}.get(name, "")
            _loaded[name] = f"minicnn backend {name!r} is not available ({err}); {hint}"
        else:
            check_backend(loaded)
            _loaded[name] = loaded
    if isinstance(_loaded[name], str):
        # a fresh exception each time: re-raising one stored instance would chain every
        # traceback (and the arrays in its frames) onto it
        raise ImportError(_loaded[name])
    return _loaded[name]


def check_backend(module):
    """Raise TypeError unless ``module`` implements the contract exactly (contract.problems)."""
    found = contract.problems(module)
    if found:
        raise TypeError(f"backend {module.__name__} does not meet the contract:\n  " + "\n  ".join(found))


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


def gpu_devices():
    """[(name, memory in GiB)] of the CUDA devices CuPy sees; RuntimeError saying why when none can be used."""
    try:
        import cupy
        devices = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            devices.append((name, props["totalGlobalMem"] / 2**30))
        return devices
    except Exception as err:  # ImportError without CuPy, CUDA runtime errors without a driver
        raise RuntimeError(f"{type(err).__name__}: {err}") from None


def ops_for(x):
    """The primitive table for array ``x`` (CuPy arrays get the CUDA backend)."""
    if is_cupy_array(x):
        return _load("cupy")
    return _load(get_backend())


def settle():
    """Wait until every array any loaded backend's ops have returned is final (the ops' settle)."""
    for module in list(_loaded.values()):
        if not isinstance(module, str):
            module.settle()


def on_device_of(a, ref):
    """a on the device of the array ref: unchanged when both are there, else moved (optimizer state
    following its parameter after model.to)."""
    if is_cupy_array(a) == is_cupy_array(ref):
        return a
    return device_converter("cuda" if is_cupy_array(ref) else "cpu")(a)


def device_collective(comm, like):
    """How the ranks of the mpi4py communicator comm sum buffers of arrays like ``like``: None for
    NumPy arrays (the caller sums host buffers with MPI), an NcclSum (backend/nccl.py: on the GPUs,
    with NCCL) for CuPy arrays. Every rank must call it together."""
    if not is_cupy_array(like):
        return None
    from .nccl import NcclSum
    return NcclSum(comm)


def use_gpu(index):
    """Make CUDA device ``index`` modulo the number of devices the current one (for this process's
    arrays from now on); returns the device number used. RuntimeError when no GPU can be used."""
    count = len(gpu_devices())
    if count == 0:
        raise RuntimeError("no CUDA device is visible to this process")
    import cupy
    cupy.cuda.Device(index % count).use()
    return index % count


def cpu_threads():
    """How many threads run minicnn's CPU work (the Numba backend's; 1 without Numba)."""
    if not _available("numba"):
        return 1
    from . import cores
    return cores.threads()


def set_cpu_threads(n):
    """Run minicnn's CPU work on n threads (MINICNN_THREADS at start-up); results are the same."""
    from . import cores
    cores.set_threads(n)


def xp_for(x):
    """The array module (numpy or cupy) that owns ``x``."""
    if is_cupy_array(x):
        import cupy
        return cupy
    return np


_env = os.environ.get("MINICNN_BACKEND")
if _env:
    set_backend(_env.strip().lower())
