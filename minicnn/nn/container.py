"""Containers: modules made of other modules.

    Sequential(*layers)                  runs its children in order; backward runs them in reverse
    Residual(body, shortcut, activation) y = activation(body(x) + shortcut(x)): a skip connection
"""
from collections import OrderedDict

from .. import backend
from ._checks import describe
from .chain import Chain, fusing_allowed, is_inference
from .module import Module, is_grad_enabled


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

    def sum_forward(self, x, residual, relu):
        """Inference: (y, summed) of Chain.sum_forward, relu(self(x) + residual) with the sum and ReLU
        done as the last step writes its output where it can (Residual uses it)."""
        return self._chain.sum_forward(list(self._modules.values()), x, residual, relu)

    @property
    def steps(self):
        """The steps the last forward ran: the layers, or fused steps standing for several."""
        return self._chain.steps


class Residual(Module):
    """A skip connection: y = activation(body(x) + shortcut(x)), where a missing shortcut is x
    itself (an identity skip) and a missing activation leaves the sum as it is. ResNet's basic
    block is Residual(conv-BN-ReLU-conv-BN, shortcut=None or 1x1 conv-BN with stride 2, ReLU()).

    Backward is the chain rule through a sum: the sum's gradient goes to both paths, and the input
    gradient is what the body sends back plus what the shortcut sends back (dy itself for the
    identity). Children are named 'body', 'shortcut' and 'activation' (state_dict keys such as
    'body.0.weight'), as the same module written in torch with those attributes names them.

    In inference, a Sequential body whose last step is a convolution with its batch norm adds the
    skip (and applies a ReLU activation) as that step writes its output (Sequential.sum_forward):
    the same bits, one pass over memory fewer.

    Args: body, shortcut (or None), activation (or None): Modules; body(x) and shortcut(x) must
        have the same shape.
    Shape: the body's.
    """
    can_skip_input_grad = True

    def __init__(self, body, shortcut=None, activation=None):
        super().__init__()
        for name, module in (("body", body), ("shortcut", shortcut), ("activation", activation)):
            if module is not None and not isinstance(module, Module):
                raise TypeError(f"Residual: {name} must be a Module or None, got {describe(module)}")
        self.body = body
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x):
        relu = self.activation is not None and self.activation.kind == ("relu",)
        main = skip = None
        if (relu or self.activation is None) and isinstance(self.body, Sequential) and fusing_allowed() \
                and not is_grad_enabled():          # inference: the sum (and ReLU) as the body's last step writes
            skip = x if self.shortcut is None else self.shortcut(x)
            main, summed = self.body.sum_forward(x, skip, relu)
            if summed:
                return main
        if main is None:
            main = self.body(x)
        if skip is None:
            skip = x if self.shortcut is None else self.shortcut(x)
        if tuple(main.shape) != tuple(skip.shape):
            raise ValueError(f"Residual: the body gives {tuple(main.shape)} but the shortcut gives "
                             f"{tuple(skip.shape)} for input {tuple(x.shape)}; give the shortcut a "
                             "convolution that matches the body's channels and stride")
        ops = backend.ops_for(main)
        if relu and fusing_allowed():
            y, record = ops.add_relu_forward(main, skip)        # the sum and its ReLU in one pass
            self.save_for_backward(y, relu_record=record)
            return y
        y = ops.add(main, skip)
        if self.activation is not None:
            y = self.activation(y)
        self.save_for_backward(y, relu_record=None)
        return y

    def backward(self, dy, input_grad=True):
        """The input gradient: the body's plus the shortcut's (None when not input_grad and both
        paths can skip it)."""
        ops = backend.ops_for(dy)
        saved = self.saved(dy)
        if saved.relu_record is not None:
            dy = ops.relu_backward(dy, saved.relu_record)
        elif self.activation is not None:
            dy = self.activation.backward(dy)
        skip = self.shortcut is not None and not input_grad and getattr(self.shortcut, "can_skip_input_grad", False) \
            and getattr(self.body, "can_skip_input_grad", False)
        if skip:
            self.body.backward(dy, input_grad=False)
            self.shortcut.backward(dy, input_grad=False)
            return None
        dx = self.body.backward(dy)
        return ops.add(dx, dy if self.shortcut is None else self.shortcut.backward(dy))
