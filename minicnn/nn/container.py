"""Containers: modules made of other modules.

    Sequential(*layers)    runs its children in order; backward runs them in reverse
"""
from collections import OrderedDict

from ._checks import describe
from .chain import Chain, is_inference
from .module import Module


class Sequential(Module):
    """Runs its children in order; backward runs them in reverse. Children are named '0', '1', ...
    (or as given in an OrderedDict), as torch names them.

    How the chain runs is the backend's plan (nn.chain): some layers may swap places or run fused,
    with the results of the layers run one by one.
    Shape: the first layer's input -> the last layer's output.
    """
    can_skip_input_grad = True

    def __init__(self, *layers):
        super().__init__()
        object.__setattr__(self, "_chain", Chain())
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            for name, layer in layers[0].items():
                setattr(self, name, layer)
        else:
            for i, layer in enumerate(layers):
                if not isinstance(layer, Module):
                    raise TypeError(f"Sequential: argument {i} is {describe(layer)}, not a Module")
                setattr(self, str(i), layer)

    def append(self, layer):
        setattr(self, str(len(self._modules)), layer)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        layers = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*layers[i])
        return layers[i]

    def forward(self, x):
        return self._chain.forward(list(self._modules.values()), x, inference=is_inference(self))

    def backward(self, dy, input_grad=True):
        """Backpropagate dy through the layers in reverse; returns the input gradient.

        input_grad=False lets the first layer skip computing a gradient nobody will read (the
        images' gradient during training; torch skips it too since images need no grad) and
        returns None. fit() uses it.
        """
        return self._chain.backward(list(self._modules.values()), dy, input_grad)

    @property
    def steps(self):
        """The steps the last forward ran: the layers, or fused steps standing for several."""
        return self._chain.steps
