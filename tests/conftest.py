"""Shared fixtures: the CPU backend under test, dtypes with their tolerances, and the gpu marker."""
import os

import numpy as np
import pytest

import minicnn
from minicnn import backend as mc_backend

TOLERANCES = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with CuPy (skipped otherwise)")
    config.addinivalue_line("markers", "data: needs the MNIST files (MINICNN_DATA)")


@pytest.fixture(params=["numpy", "numba"])
def cpu_backend(request):
    """Run the test once per CPU backend; a backend that cannot load is skipped with the reason."""
    try:
        with mc_backend.use_backend(request.param):
            yield request.param
    except ImportError as err:
        pytest.skip(str(err))


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    minicnn.manual_seed(1234)
    yield


def tolerance(dtype):
    return TOLERANCES[np.dtype(dtype).type]


def data_root():
    return os.environ.get("MINICNN_DATA")
