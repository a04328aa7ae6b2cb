"""Containers: modules made of other modules.

    Sequential(*layers)                  runs its children in order; backward runs them in reverse
    Residual(body, shortcut, activation) y = activation(body(x) + shortcut(x)): a skip connection
    ModuleList(modules)                  holds modules for a custom module's own forward and backward
"""
from collections import OrderedDict

from .. import backend
from ._checks import describe
from .chain import Chain, fusing_allowed, is_inference
from .module import Module


class _ModuleSequence(Module):
    """The list protocol of Sequential and ModuleList: len, iteration, indexing (a slice gives a new
    container of the same kind holding the same modules), append and extend."""

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: entry {len(self)} must be a Module, got {describe(module)}")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        modules = list(self._modules.values())
        return self._holding(modules[i]) if isinstance(i, slice) else modules[i]


class Sequential(_ModuleSequence):
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

    @staticmethod
    def _holding(layers):
        return Sequential(*layers)

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
        """(y, summed) of Chain.sum_forward: relu(self(x) + residual) with the sum and ReLU done as the
        last step writes its output where it can (Residual uses it; after a summed forward in
        training, sum_backward is the backward)."""
        return self._chain.sum_forward(list(self._modules.values()), x, residual, relu)

    def sum_backward(self, dy, input_grad=True):
        """(input gradient or None, the sum's gradient) of Chain.sum_backward."""
        return self._chain.sum_backward(dy, input_grad)

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

    A Sequential body whose last step is a convolution with its batch norm adds the skip (and
    applies a ReLU activation) as that step writes its output (Sequential.sum_forward), and in
    training its backward gives the sum's gradient with the batch norm's (sum_backward): the same
    bits, two passes over memory fewer each way.

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
        if (relu or self.activation is None) and isinstance(self.body, Sequential) and fusing_allowed():
            skip = x if self.shortcut is None else self.shortcut(x)     # the sum (and ReLU) as the body's last step writes
            main, summed = self.body.sum_forward(x, skip, relu)
            if summed:
                self.save_for_backward(main, relu_record=None, summed=True)
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
            self.save_for_backward(y, relu_record=record, summed=False)
            return y
        y = ops.add(main, skip)
        if self.activation is not None:
            y = self.activation(y)
        self.save_for_backward(y, relu_record=None, summed=False)
        return y

    def backward(self, dy, input_grad=True):
        """The input gradient: the body's plus the shortcut's (None when not input_grad; then the
        paths that can skip computing theirs do)."""
        ops = backend.ops_for(dy)
        saved = self.saved(dy)
        skip = not input_grad and getattr(self.body, "can_skip_input_grad", False) \
            and (self.shortcut is None or getattr(self.shortcut, "can_skip_input_grad", False))
        if saved.summed:            # the body's last step gave the sum's gradient (dy through the ReLU) with its own
            dx, dy = self.body.sum_backward(dy, input_grad=not skip)
        else:
            if saved.relu_record is not None:
                dy = ops.relu_backward(dy, saved.relu_record)
            elif self.activation is not None:
                dy = self.activation.backward(dy)
            dx = self.body.backward(dy, input_grad=False) if skip else self.body.backward(dy)
        if skip:
            if self.shortcut is not None:
                self.shortcut.backward(dy, input_grad=False)
            return None
        dx = ops.add(dx, dy if self.shortcut is None else self.shortcut.backward(dy))
        return dx if input_grad else None


class ModuleList(_ModuleSequence):
    """A list of modules, registered (so that parameters(), state_dict(), .to() and the optimizers see
    them) under the names '0', '1', ... as torch.nn.ModuleList names them ('blocks.0.weight'). It has
    no forward: a custom module loops over it in its forward, and in reverse in its backward:

        for block in self.blocks: x = block(x)                    # forward
        for block in reversed(self.blocks): dy = block.backward(dy)   # backward
    """

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    @staticmethod
    def _holding(modules):
        return ModuleList(modules)

    def __setitem__(self, i, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList: entry {i} must be a Module, got {describe(module)}")
        name = list(self._modules)[i]                  # IndexError for an index out of range, as a list
        setattr(self, name, module)

    def forward(self, x):
        raise NotImplementedError("ModuleList has no forward: call its modules in your module's forward (and their "
                                  "backward in reverse order in its backward), or use Sequential")

    def backward(self, dy):
        raise NotImplementedError("ModuleList has no backward: call its modules' backward in reverse order in your "
                                  "module's backward, or use Sequential")
