"""One helper that runs a minicnn layer and its torch twin on the same input and compares
output, input gradient, every parameter gradient and every buffer, with shapes and dtypes.

DEVICE 'cuda' (set by the any_backend fixture) runs the minicnn layer on CuPy arrays and the
torch layer on CUDA; inputs and comparisons stay NumPy arrays."""
import numpy as np
import torch

from minicnn.backend import to_numpy

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
DEVICE = "cpu"


def on_device(a):
    """A NumPy array moved to DEVICE (CuPy there when it is 'cuda')."""
    if DEVICE == "cpu":
        return a
    import cupy
    return cupy.asarray(a)


def torch_device(t):
    return t.to(DEVICE) if DEVICE != "cpu" else t


def to_torch(a, requires_grad=False):
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_() if requires_grad else t


def copy_state_to_torch(layer, torch_layer):
    """Load the minicnn layer's state_dict into the torch module (same names and shapes)."""
    state = {k: to_torch(to_numpy(v)) for k, v in layer.state_dict().items()}
    torch_layer.load_state_dict(state, strict=True)


def assert_close(ours, theirs, rtol, atol, what):
    ours = to_numpy(ours)
    theirs = theirs.detach().cpu().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != torch {theirs.dtype}"
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)


def assert_matches_torch(layer, torch_layer, x, rtol, atol, dy=None, seed=0):
    """Forward and backward through both; returns (y, dx) of minicnn for further checks."""
    torch_layer = torch_layer.to(TORCH_DTYPES[x.dtype])
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
    assert ours.keys() == theirs.keys()
    for name, p in ours.items():
        assert_close(p.grad, theirs[name].grad, rtol, atol, f"{layer!r} gradient of {name}")
    torch_buffers = dict(torch_layer.named_buffers())
    for name, b in layer.named_buffers():
        assert_close(b, torch_buffers[name], rtol, atol, f"{layer!r} buffer {name}")
    return y, dx


class TorchResidual(torch.nn.Module):
    """minicnn.nn.Residual written in torch: activation(body(x) + shortcut(x)), children named alike."""

    def __init__(self, body, shortcut=None, activation=None):
        super().__init__()
        self.body, self.shortcut, self.activation = body, shortcut, activation

    def forward(self, x):
        y = self.body(x) + (x if self.shortcut is None else self.shortcut(x))
        return y if self.activation is None else self.activation(y)


def torch_basic_block(in_channels, out_channels, stride=1):
    """minicnn.models.basic_block in torch."""
    tnn = torch.nn
    body = tnn.Sequential(tnn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), tnn.BatchNorm2d(out_channels),
                          tnn.ReLU(), tnn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
                          tnn.BatchNorm2d(out_channels))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = tnn.Sequential(tnn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                  tnn.BatchNorm2d(out_channels))
    return TorchResidual(body, shortcut, tnn.ReLU())
