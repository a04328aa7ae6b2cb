"""Shared fixtures: the CPU backend under test, dtypes with their tolerances, and the gpu marker."""
import dataclasses
import os

import numpy as np
import pytest

import minicnn
from minicnn import backend as mc_backend

TOLERANCES = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with CuPy (skipped otherwise)")
    config.addinivalue_line("markers", "data: needs the MNIST files (MINICNN_DATA)")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may download: datasets that are not found raise instead (tests of the downloader
    serve the files from a local server and lift this)."""
    monkeypatch.setenv("MINICNN_OFFLINE", "1")


@pytest.fixture(params=["numpy", "numba"])
def cpu_backend(request):
    """Run the test once per CPU backend; a backend that cannot load is skipped with the reason."""
    try:
        with mc_backend.use_backend(request.param):
            yield request.param
    except ImportError as err:
        pytest.skip(str(err))


def gpu_reason():
    """None when CuPy and a CUDA device are usable, else why not."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
        return None if count > 0 else "no CUDA device"
    except Exception as err:  # ImportError without CuPy, CUDARuntimeError without a driver
        return f"no usable GPU ({type(err).__name__}: {err})"


GPU_REASON = gpu_reason()


@pytest.fixture(params=["numpy", "numba", pytest.param("cupy", marks=pytest.mark.gpu)])
def any_backend(request):
    """Like cpu_backend, plus 'cupy': the layer and its input move to the GPU and are compared
    with torch on CUDA (TF32 off, so float32 means float32 there too)."""
    import torch_compare
    if request.param != "cupy":
        try:
            with mc_backend.use_backend(request.param):
                yield request.param
        except ImportError as err:
            pytest.skip(str(err))
        return
    if GPU_REASON is not None:
        pytest.skip(GPU_REASON)
    import torch
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here: the GPU reference is torch on CUDA")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch_compare.set_device("cuda")
    try:
        yield "cupy"
    finally:
        torch_compare.set_device("cpu")


@pytest.fixture
def strategy():
    """strategy(field=value, ...) changes the Numba backend's strategy (backend/numba_strategy.py) for
    the rest of the test, e.g. strategy(winograd=False) to pin an algorithm; restored afterwards."""
    numba_strategy = pytest.importorskip("minicnn.backend.numba_strategy")
    previous = numba_strategy.current()

    def change(**changes):
        numba_strategy.set_current(dataclasses.replace(numba_strategy.current(), **changes))
        return numba_strategy.current()

    yield change
    numba_strategy.set_current(previous)


def dropout_mask(layer):
    """The mask the Dropout layer's last forward drew (None if it dropped nothing), through the
    contract: its backward op applied to ones."""
    saved = layer.__dict__.get("_saved")
    if saved is None or saved.record is None:
        return None
    ops = mc_backend.ops_for(saved.record)
    return ops.dropout_backward(ops.xp.ones(saved.out_shape, saved.out_dtype), saved.record)


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    minicnn.manual_seed(1234)
    yield
    mc_backend.settle()         # no test's deferred weight gradients run during the next one


def tolerance(dtype):
    return TOLERANCES[np.dtype(dtype).type]


def data_root():
    return os.environ.get("MINICNN_DATA")
