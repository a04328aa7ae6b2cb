"""Numerical gradient check: compare backward() with central differences in float64.

For a module f and a fixed random upstream gradient dy, the scalar L(x, params) = sum(f(x) * dy)
has dL/dx = f.backward(dy). Each checked entry v is perturbed by +-eps and
    numeric = (L(v + eps) - L(v - eps)) / (2 * eps)
The reported error of a tensor is max(|analytic - numeric| - noise) / max(max|numeric|, max|analytic|, 1e-3):
relative to the tensor's largest gradient, so entries that are nearly zero do not dominate.
``noise`` = 8 * machine-eps * max(|L(v+eps)|, |L(v-eps)|) / (2*eps) is the rounding resolution of
the difference quotient itself: disagreement below it is not evidence of anything (it matters for
gradients that are exactly zero, such as a conv bias followed by batch norm).
Entries where the step crosses a kink (a ReLU input or a max-pool tie within eps, common in deep
networks) have no derivative to compare: they are recognized by one-sided differences that
disagree, (L(v+eps) - L(v)) vs (L(v) - L(v-eps)), and skipped.
"""
import copy

import numpy as np

from . import backend, random
from .nn.module import Module, no_grad


class GradcheckResult(dict):
    """name -> relative error beyond rounding noise (what pass/fail should use); ``raw`` holds
    the plain relative errors max|analytic - numeric| / scale, noise included."""

    def __init__(self):
        super().__init__()
        self.raw = {}


def gradcheck(module, x, eps=1e-6, max_entries=None, seed=0):
    """Check the input gradient and every parameter gradient of ``module`` at ``x``.

    Args:
        module: any minicnn Module (it is copied and converted to float64; the original is
            left untouched). Dropout masks are held fixed during the check.
        x: an input batch (numpy array); converted to float64.
        eps: the finite-difference step.
        max_entries: check at most this many randomly chosen entries per tensor (None: all).
        seed: seeds dy and the choice of entries.
    Returns:
        GradcheckResult (a dict): 'input' and each parameter name -> maximum relative error
        beyond rounding noise; ``.raw`` has the same without the noise allowance.
    """
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck: expected a minicnn Module, got {type(module).__name__}")
    if not backend.is_array(x) or x.dtype.kind != "f":
        raise TypeError(f"gradcheck: expected a floating numpy array input, got {type(x).__name__}")
    model = copy.deepcopy(module).to("cpu").to(np.float64)
    x = np.array(backend.to_numpy(x), dtype=np.float64)
    rng = np.random.default_rng(seed)
    generators = [random.get_rng()] + [m._rng for m in model.modules() if getattr(m, "_rng", None) is not None]
    states = [g.bit_generator.state for g in generators]

    def loss(inp):
        for g, state in zip(generators, states):
            g.bit_generator.state = state
        with no_grad():                                  # only values: nothing kept for a backward
            return float(np.sum(model(inp) * dy))

    for g, state in zip(generators, states):
        g.bit_generator.state = state
    y = model(x)
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dy)
    center = loss(x)
    analytic = {"input": (dx, x)}
    analytic.update({name: (p.grad, p.data) for name, p in model.named_parameters()})

    errors = GradcheckResult()
    for name, (grad, values) in analytic.items():
        flat_values = values.reshape(-1)
        picks = np.arange(flat_values.size)
        if max_entries is not None and flat_values.size > max_entries:
            picks = rng.choice(flat_values.size, size=max_entries, replace=False)
        numeric, noise = np.empty(len(picks)), np.empty(len(picks))
        for k, i in enumerate(picks):
            original = flat_values[i]
            flat_values[i] = original + eps
            plus = loss(x)
            flat_values[i] = original - eps
            minus = loss(x)
            flat_values[i] = original
            numeric[k] = (plus - minus) / (2 * eps)
            noise[k] = 8 * np.finfo(np.float64).eps * max(abs(plus), abs(minus)) / (2 * eps)
            if abs((plus - center) - (center - minus)) / eps > 1e-3 * abs(numeric[k]) + 1e3 * noise[k]:
                noise[k] = np.inf                                    # a kink: skip this entry
        approx = np.zeros(len(picks)) if grad is None else grad.reshape(-1)[picks]
        scale = max(np.abs(numeric).max(initial=0), np.abs(approx).max(initial=0), 1e-3)
        excess = np.maximum(np.abs(approx - numeric) - noise, 0)
        errors[name] = float(excess.max(initial=0) / scale)
        usable = np.isfinite(noise)
        errors.raw[name] = float(np.abs(approx - numeric)[usable].max(initial=0) / scale)
    return errors


def tie_free_input(shape, rng):
    """A shuffled linspace in [-2, 2] without exact zeros: no ties for max pooling, no input
    sitting on a ReLU kink."""
    n = int(np.prod(shape))
    return rng.permutation(np.linspace(-2, 2, n) + 0.37 / n).reshape(shape)


def layer_cases():
    """(name, factory, input shape) for one small instance of every layer: what
    ``minicnn gradcheck`` and benchmarks/gradcheck.py check."""
    from . import nn
    return [
        ("Conv2d(2, 3, k3, s1, p1)", lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 6, 5)),
        ("Conv2d(3, 2, k(2,3), s2, p(1,0))", lambda: nn.Conv2d(3, 2, (2, 3), stride=2, padding=(1, 0)), (1, 3, 7, 8)),
        ("MaxPool2d(2)", lambda: nn.MaxPool2d(2), (2, 3, 6, 6)),
        ("MaxPool2d(3, stride=1, padding=1)", lambda: nn.MaxPool2d(3, 1, 1), (1, 2, 5, 6)),
        ("MaxPool2d(3, stride=2)", lambda: nn.MaxPool2d(3, 2), (2, 1, 7, 7)),
        ("AvgPool2d(3, stride=2, padding=1)", lambda: nn.AvgPool2d(3, 2, 1), (1, 2, 7, 5)),
        ("BatchNorm2d(3) train", lambda: nn.BatchNorm2d(3), (4, 3, 3, 3)),
        ("BatchNorm2d(3) eval", lambda: nn.BatchNorm2d(3).eval(), (2, 3, 3, 3)),
        ("BatchNorm1d(5) train", lambda: nn.BatchNorm1d(5), (6, 5)),
        ("Dropout(0.4)", lambda: nn.Dropout(0.4), (4, 6)),
        ("ReLU", nn.ReLU, (3, 7)),
        ("LeakyReLU(0.1)", lambda: nn.LeakyReLU(0.1), (3, 7)),
        ("Sigmoid", nn.Sigmoid, (3, 7)),
        ("Tanh", nn.Tanh, (3, 7)),
        ("Linear(6, 4)", lambda: nn.Linear(6, 4), (3, 6)),
        ("Flatten", nn.Flatten, (2, 3, 2, 2)),
        ("Conv2d(2, 4, k3, p2, dilation 2, groups 2)", lambda: nn.Conv2d(2, 4, 3, padding=2, dilation=2, groups=2),
         (2, 2, 7, 6)),
        ("Conv2d depthwise(4, k3, s2, p1)", lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), (2, 4, 7, 8)),
        ("AdaptiveAvgPool2d((3, 2))", lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
        ("AdaptiveAvgPool2d(1)", lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 5, 4)),
        ("AdaptiveMaxPool2d((3, 2))", lambda: nn.AdaptiveMaxPool2d((3, 2)), (2, 3, 7, 5)),
        ("SiLU", nn.SiLU, (3, 7)),
        ("GELU", nn.GELU, (3, 7)),
        ("GELU(approximate='tanh')", lambda: nn.GELU(approximate="tanh"), (3, 7)),
        ("Hardtanh(-0.5, 0.8)", lambda: nn.Hardtanh(-0.5, 0.8), (3, 7)),
        ("ReLU6", nn.ReLU6, (3, 7)),
        ("Hardsigmoid", nn.Hardsigmoid, (3, 7)),
        ("Hardswish", nn.Hardswish, (3, 7)),
        ("Identity", nn.Identity, (3, 7)),
        ("GroupNorm(2, 4)", lambda: nn.GroupNorm(2, 4), (2, 4, 3, 3)),
        ("Softmax(dim=1)", lambda: nn.Softmax(dim=1), (3, 7)),
        ("LogSoftmax(dim=1)", lambda: nn.LogSoftmax(dim=1), (3, 7)),
        ("SqueezeExcitation(4, 2)", lambda: nn.SqueezeExcitation(4, 2), (2, 4, 3, 5)),
        ("Residual (basic block, 1x1 shortcut)", lambda: _basic_block(2, 4, 2), (3, 2, 6, 7)),
    ]


def _basic_block(in_channels, out_channels, stride):
    from .models import basic_block
    return basic_block(in_channels, out_channels, stride)
