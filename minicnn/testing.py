"""Compare a minicnn layer or model with its PyTorch twin: the helper the test suite uses, for your
own layers too (torch is imported only when these run).

    from minicnn.testing import assert_matches_torch
    assert_matches_torch(MyLayer(), torch_twin, x, rtol=1e-10, atol=1e-12)   # x: a float64 NumPy batch

It loads the minicnn module's state_dict into the torch module (the same names and shapes), runs
both forward on x and backward on the same random dy, and compares the output, the input gradient,
every parameter gradient and every buffer, shapes and dtypes included. DEVICE = 'cuda' runs the
minicnn module on CuPy arrays and the torch module on CUDA (the test suite's any_backend fixture).
"""
import numpy as np

from . import backend
from .backend import to_numpy

DEVICE = "cpu"


def _torch():
    import torch
    return torch


def torch_dtype(dtype):
    torch = _torch()
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]


def on_device(a):
    """A NumPy array moved to DEVICE (a CuPy array there when it is 'cuda')."""
    if DEVICE == "cpu":
        return a
    return backend.device_converter(DEVICE)(a)


def torch_device(t):
    return t.to(DEVICE) if DEVICE != "cpu" else t


def to_torch(a, requires_grad=False):
    """A torch tensor holding a copy of the array a."""
    t = _torch().from_numpy(np.array(to_numpy(a), copy=True))
    return t.requires_grad_() if requires_grad else t


def copy_state_to_torch(layer, torch_layer):
    """Load the minicnn module's state_dict into the torch module (same names and shapes)."""
    state = {k: to_torch(v) for k, v in layer.state_dict().items()}
    torch_layer.load_state_dict(state, strict=True)


def assert_close(ours, theirs, rtol, atol, what):
    """Same shape, same dtype, and values within rtol/atol (numpy.testing.assert_allclose)."""
    torch = _torch()
    ours = to_numpy(ours)
    theirs = theirs.detach().cpu().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != torch {theirs.dtype}"
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)


def assert_matches_torch(layer, torch_layer, x, rtol, atol, dy=None, seed=0):
    """Forward and backward through both; AssertionError naming what differs. Returns minicnn's
    (y, dx) for further checks. x is a float32 or float64 NumPy array; the torch module is cast to
    its dtype and put in the minicnn module's mode first."""
    torch_layer = torch_layer.to(torch_dtype(x.dtype))
    copy_state_to_torch(layer, torch_layer)
    torch_layer.train(layer.training)
    torch_layer = torch_device(torch_layer)
    if DEVICE != "cpu":
        layer.to(DEVICE)

    y = layer(on_device(x))
    xt = torch_device(to_torch(x)).requires_grad_()
    yt = torch_layer(xt)
    assert_close(y, yt, rtol, atol, f"{layer!r} forward")

    if dy is None:
        dy = np.random.default_rng(seed).standard_normal(y.shape).astype(x.dtype)
    layer.zero_grad()
    dx = layer.backward(on_device(dy))
    yt.backward(torch_device(to_torch(dy)))
    assert_close(dx, xt.grad, rtol, atol, f"{layer!r} input gradient")

    theirs = dict(torch_layer.named_parameters())
    ours = dict(layer.named_parameters())
    assert ours.keys() == theirs.keys(), f"parameters {sorted(ours)} != torch {sorted(theirs)}"
    for name, p in ours.items():
        assert_close(p.grad, theirs[name].grad, rtol, atol, f"{layer!r} gradient of {name}")
    torch_buffers = dict(torch_layer.named_buffers())
    for name, b in layer.named_buffers():
        assert_close(b, torch_buffers[name], rtol, atol, f"{layer!r} buffer {name}")
    return y, dx
