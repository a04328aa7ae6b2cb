"""Models to and from PyTorch: the same network, the same state_dict names, the same weights.

    torch_model = minicnn.interop.to_torch(model)          # a torch.nn.Module, weights copied
    model = minicnn.interop.from_torch(torch_model)        # a trainable minicnn model, weights copied

torch is imported only when one of these is called. Every layer minicnn has maps to its torch.nn
namesake with the same arguments; Sequential to torch.nn.Sequential with the same child names;
Residual to minicnn.interop.torch_residual_class() (a torch module with body, shortcut and
activation, the same formula); SqueezeExcitation to torch_squeeze_excitation_class() (torchvision's
SqueezeExcitation written again; torchvision's own converts back too). Dtypes (float32, float64)
and train/eval modes are kept. A module either side has no counterpart for is refused with its
name and place in the model, before anything is built.
"""
import functools
from collections import OrderedDict

import numpy as np

from . import nn


def _torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError("minicnn.interop needs PyTorch: pip install torch") from err
    return torch


@functools.cache
def torch_residual_class():
    """The torch twin of minicnn.nn.Residual: forward(x) = activation(body(x) + shortcut(x)), the
    shortcut the identity when None (made on first use, so that torch is imported only then)."""
    torch = _torch()

    class Residual(torch.nn.Module):
        """activation(body(x) + shortcut(x)); shortcut None is the identity (minicnn.nn.Residual)."""

        def __init__(self, body, shortcut=None, activation=None):
            super().__init__()
            self.body, self.shortcut, self.activation = body, shortcut, activation

        def forward(self, x):
            y = self.body(x) + (x if self.shortcut is None else self.shortcut(x))
            return y if self.activation is None else self.activation(y)

    return Residual


@functools.cache
def torch_squeeze_excitation_class():
    """The torch twin of minicnn.nn.SqueezeExcitation, written as torchvision.ops.SqueezeExcitation
    (the same children and formula; torchvision's own converts too, from_torch takes either)."""
    torch = _torch()

    class SqueezeExcitation(torch.nn.Module):
        """x * scale_activation(fc2(activation(fc1(avgpool(x)))))."""

        def __init__(self, input_channels, squeeze_channels, activation=torch.nn.ReLU,
                     scale_activation=torch.nn.Sigmoid):
            super().__init__()
            self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc1 = torch.nn.Conv2d(input_channels, squeeze_channels, 1)
            self.fc2 = torch.nn.Conv2d(squeeze_channels, input_channels, 1)
            self.activation = activation()
            self.scale_activation = scale_activation()

        def forward(self, x):
            return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))

    return SqueezeExcitation


def _is_squeeze_excitation(m):
    """Our twin, or torchvision.ops.SqueezeExcitation (not imported here: torchvision is optional)."""
    kind = type(m)
    return kind is torch_squeeze_excitation_class() or (
        kind.__name__ == "SqueezeExcitation" and kind.__module__.startswith("torchvision."))


# ------------------------------------------------------------------ minicnn -> torch

def to_torch(model):
    """A torch.nn.Module computing what ``model`` computes, with a copy of its weights and buffers
    (same state_dict keys), in the model's dtype and mode, frozen parameters frozen, on the CPU."""
    torch = _torch()
    twin = _to_torch_module(model, "model", torch)
    state = {k: torch.from_numpy(np.array(_host(v))) for k, v in model.state_dict().items()}
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    twin = twin.to(dtype)
    twin.load_state_dict(state, strict=True)
    for (_, ours), (_, theirs) in zip(model.named_modules(), twin.named_modules()):
        theirs.training = ours.training
    for (_, ours), (_, theirs) in zip(model.named_parameters(), twin.named_parameters()):
        theirs.requires_grad = ours.requires_grad             # frozen stays frozen
    return twin


def _host(a):
    from . import backend
    return backend.to_numpy(a)


def _to_torch_module(m, where, torch):
    t = torch.nn
    if isinstance(m, nn.Sequential):
        return t.Sequential(OrderedDict((name, _to_torch_module(child, f"{where}.{name}", torch))
                                        for name, child in m._modules.items()))
    if isinstance(m, nn.Residual):
        child = lambda c, name: None if c is None else _to_torch_module(c, f"{where}.{name}", torch)  # noqa: E731
        return torch_residual_class()(child(m.body, "body"), child(m.shortcut, "shortcut"),
                                      child(m.activation, "activation"))
    if isinstance(m, nn.SqueezeExcitation):
        twin = torch_squeeze_excitation_class()(m.fc1.in_channels, m.fc1.out_channels)
        twin.activation = _to_torch_module(m.activation, f"{where}.activation", torch)
        twin.scale_activation = _to_torch_module(m.scale_activation, f"{where}.scale_activation", torch)
        return twin
    kind = type(m)
    if kind is nn.Conv2d:
        return t.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                        bias=m.bias is not None)
    if kind is nn.Linear:
        return t.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        cls = t.BatchNorm1d if kind is nn.BatchNorm1d else t.BatchNorm2d
        return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                   track_running_stats=m.track_running_stats)
    if kind is nn.MaxPool2d:
        return t.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if kind is nn.AvgPool2d:
        return t.AvgPool2d(m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad)
    twin = _namesake(m, nn, t)
    if twin is not None:
        return twin
    raise ValueError(f"to_torch: {where} is a {kind.__name__}, which has no torch counterpart here "
                     f"(minicnn's own layers, Sequential and Residual convert)")


# ------------------------------------------------------------------ torch -> minicnn

def from_torch(module):
    """A minicnn model computing what the torch ``module`` computes, with a copy of its weights and
    buffers, in its dtype and mode, frozen parameters (requires_grad False) frozen. A layer minicnn lacks (or an argument it does not support, such as
    ceil_mode) raises ValueError naming it and its place, before anything is copied."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    ours = _from_torch_module(module, type(module).__name__, torch)
    state = module.state_dict()
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) > 1:
        raise ValueError(f"from_torch: the module mixes dtypes {sorted(str(d) for d in dtypes)}; convert it to one")
    dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(next(iter(dtypes), torch.float32))
    if dtype is None:
        raise ValueError(f"from_torch: parameters of dtype {next(iter(dtypes))} are not supported (float32 or float64)")
    ours.to(dtype)
    ours.load_state_dict({k: v.detach().cpu().numpy() for k, v in state.items()})
    for (_, theirs), (_, mine) in zip(module.named_modules(), ours.named_modules()):
        object.__setattr__(mine, "training", theirs.training)
    for (_, theirs), (_, mine) in zip(module.named_parameters(), ours.named_parameters()):
        mine.requires_grad = theirs.requires_grad
    return ours


def _from_torch_module(m, where, torch):
    t = torch.nn
    if isinstance(m, t.Sequential):
        return nn.Sequential(OrderedDict((name, _from_torch_module(child, f"{where}.{name}", torch))
                                         for name, child in m._modules.items()))
    if isinstance(m, torch_residual_class()):
        child = lambda c, name: None if c is None else _from_torch_module(c, f"{where}.{name}", torch)  # noqa: E731
        return nn.Residual(child(m.body, "body"), child(m.shortcut, "shortcut"), child(m.activation, "activation"))
    if _is_squeeze_excitation(m):
        activation = _from_torch_module(m.activation, f"{where}.activation", torch)
        scale_activation = _from_torch_module(m.scale_activation, f"{where}.scale_activation", torch)
        return nn.SqueezeExcitation(m.fc1.in_channels, m.fc1.out_channels, lambda: activation, lambda: scale_activation)

    def refuse(what):
        raise ValueError(f"from_torch: {where} ({type(m).__name__}) {what}")

    kind = type(m)
    if kind is t.Conv2d:
        if m.padding_mode != "zeros":
            refuse(f"has padding_mode={m.padding_mode!r}; minicnn pads with zeros only")
        try:
            return nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                             bias=m.bias is not None)
        except ValueError as err:                  # padding='same' with unequal borders
            refuse(f"cannot be built here: {err}")
    if kind is t.Linear:
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if kind in (t.BatchNorm1d, t.BatchNorm2d):
        cls = nn.BatchNorm1d if kind is t.BatchNorm1d else nn.BatchNorm2d
        return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                   track_running_stats=m.track_running_stats)
    if kind is t.MaxPool2d:
        if m.ceil_mode or m.return_indices or _pair(m.dilation) != (1, 1):
            refuse("uses ceil_mode, return_indices or dilation, which minicnn's MaxPool2d lacks")
        return nn.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if kind is t.AvgPool2d:
        if m.ceil_mode or m.divisor_override is not None:
            refuse("uses ceil_mode or divisor_override, which minicnn's AvgPool2d lacks")
        return nn.AvgPool2d(m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad)
    if kind is t.AdaptiveMaxPool2d and m.return_indices:
        refuse("returns indices, which minicnn's AdaptiveMaxPool2d does not")
    if kind is t.Flatten:
        if (m.start_dim, m.end_dim) != (1, -1):
            refuse(f"flattens dims {m.start_dim}..{m.end_dim}; minicnn's Flatten joins every axis after the first")
        return nn.Flatten()
    twin = _namesake(m, t, nn)
    if twin is not None:
        return twin
    refuse("has no minicnn counterpart (minicnn converts torch.nn.Sequential, "
           "minicnn.interop.torch_residual_class(), torchvision's SqueezeExcitation and the layers minicnn has)")


# Layers built alike on both sides: the same class name, the same constructor arguments, read back
# from the same attributes (the other layers need a check or a translation and have their own lines).
_NAMESAKES = {
    "AdaptiveAvgPool2d": ("output_size",), "AdaptiveMaxPool2d": ("output_size",),
    "LeakyReLU": ("negative_slope",), "GELU": ("approximate",), "Hardtanh": ("min_val", "max_val"),
    "Dropout": ("p",), "Dropout2d": ("p",), "Softmax": ("dim",), "LogSoftmax": ("dim",),
    "GroupNorm": ("num_groups", "num_channels", "eps", "affine"),
    "ReLU": (), "ReLU6": (), "Sigmoid": (), "Tanh": (), "SiLU": (), "Hardsigmoid": (), "Hardswish": (),
    "Identity": (), "Flatten": (),
}


def _namesake(m, source, target):
    """m's namesake in the target library (minicnn.nn or torch.nn) with m's arguments, or None when
    m's class is not source's class of that name (subclasses and other layers have their own rules)."""
    name = type(m).__name__
    if name not in _NAMESAKES or type(m) is not getattr(source, name, None):
        return None
    return getattr(target, name)(**{a: getattr(m, a) for a in _NAMESAKES[name]})


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)
