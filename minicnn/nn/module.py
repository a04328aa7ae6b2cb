"""Module, Parameter and Sequential: the containers every layer is built from.

A Module owns Parameters (trainable arrays with a ``.grad``), buffers (state such as batch-norm
running statistics) and child Modules, registered by plain attribute assignment as in torch.
``forward(x)`` computes and caches what ``backward(dy)`` needs; ``backward`` returns the input
gradient and *adds* parameter gradients into ``.grad``, as torch does.
"""
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np

from .. import backend
from ._checks import check_grad, describe

_grad_enabled = True


class no_grad:
    """Context manager for inference: layers keep nothing for backward, saving memory and time.

    ``with minicnn.no_grad(): probs = net(x)``
    """

    def __enter__(self):
        global _grad_enabled
        self.previous, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self.previous


def is_grad_enabled():
    return _grad_enabled


class Parameter:
    """A trainable array. ``data`` holds the values, ``grad`` the accumulated gradient (or None)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        if not backend.is_array(data) or data.dtype.kind != "f":
            raise TypeError(f"Parameter: expected a floating numpy or cupy array, got {describe(data)}")
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def accumulate_grad(self, g, owned=False):
        """Add ``g`` into ``.grad`` (which starts as None, like torch's). ``owned``: g is a fresh
        array nobody else holds, so a first gradient can be kept as it is instead of copied."""
        if self.grad is None:
            keep = owned and g.dtype == self.data.dtype and g.shape == self.data.shape
            self.grad = g if keep else g.astype(self.data.dtype, copy=True)
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and network. Subclasses define ``forward`` and ``backward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ registration

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if isinstance(value, (Parameter, Module)):
            self._forget(name)
            table = self._parameters if isinstance(value, Parameter) else self._modules
            table[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        elif name in self._parameters or name in self._modules:
            raise TypeError(f"{type(self).__name__}.{name} must stay a "
                            f"{type(getattr(self, name)).__name__}, got {describe(value)}")
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name):
        for table in (self._parameters, self._buffers, self._modules, self.__dict__):
            table.pop(name, None)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name, array):
        """Register a non-trainable array that belongs in the state_dict (e.g. running_mean)."""
        self._forget(name)
        self._buffers[name] = array

    # ------------------------------------------------------------ traversal

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        for module_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix=""):
        for module_name, module in self.named_modules(prefix):
            for name, b in module._buffers.items():
                yield (f"{module_name}.{name}" if module_name else name), b

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------ modes and gradients

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ------------------------------------------------------------ state

    def state_dict(self):
        """Ordered name -> array copy of every parameter and buffer, named as torch names them."""
        return OrderedDict((name, array.copy()) for name, array in self._state_arrays())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        Raises ValueError listing every missing, unexpected (when strict) and mis-shaped entry.
        Returns (missing_keys, unexpected_keys).
        """
        own = OrderedDict(self._state_arrays())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [f"{k}: checkpoint {tuple(np.shape(state_dict[k]))}, model {tuple(a.shape)}"
                      for k, a in own.items() if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(a.shape)]
        problems = []
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        if mismatched:
            problems.append("wrong shape: " + "; ".join(mismatched))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: the state does not fit the model\n  "
                             + "\n  ".join(problems))
        for key, target in own.items():
            if key in state_dict:          # in place, so every reference to the array sees the new values
                target[...] = backend.xp_for(target).asarray(state_dict[key]).astype(target.dtype, copy=False)
        return missing, unexpected

    def _state_arrays(self):
        """(name, live array) for every parameter and buffer, in state_dict order."""
        yield from ((name, p.data) for name, p in self.named_parameters())
        yield from self.named_buffers()

    # ------------------------------------------------------------ dtype and device

    def to(self, target):
        """Convert floating parameters and buffers to a dtype (np.float32/np.float64) or move
        everything to a device ('cpu' or 'cuda'). Returns self."""
        if isinstance(target, str):
            convert = backend.device_converter(target)
        else:
            dtype = np.dtype(target)
            if dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}.to: expected a floating dtype or a device, got {target!r}")
            convert = lambda a: a.astype(dtype) if a.dtype.kind == "f" else a  # noqa: E731
        for p in self.parameters():
            p.data = convert(p.data)
            if p.grad is not None:
                p.grad = convert(p.grad)
        for m in self.modules():
            for name, b in m._buffers.items():
                m._buffers[name] = convert(b)
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    # ------------------------------------------------------------ computing

    def save_for_backward(self, output, **values):
        """Keep what backward needs (unless inside no_grad), plus the output's shape and dtype
        to check the incoming gradient against."""
        saved = None
        if _grad_enabled:
            saved = SimpleNamespace(out_shape=output.shape, out_dtype=output.dtype, **values)
        object.__setattr__(self, "_saved", saved)

    def saved(self, dy):
        """What forward saved, after checking that forward ran and that dy fits its output."""
        saved = self.__dict__.get("_saved")
        if saved is None:
            raise RuntimeError(f"{self!r}: backward() called before forward() "
                               "(or after a forward inside no_grad())")
        check_grad(self, dy, saved.out_shape, saved.out_dtype)
        return saved

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ printing

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Runs its children in order; backward runs them in reverse. Children are named '0', '1', ...

    Inference (eval mode under no_grad) runs large batches through all layers INFERENCE_CHUNK
    samples at a time: every sample's result is independent of the others there, and the
    intermediate activations of a chunk stay in the cache instead of being fresh, page-faulting
    memory the size of the whole batch (measured at batch 1000 on 2 Xeon cores: LeNet 21k -> 37k
    images/s, MnistCNN 5.6k -> 7.5k). Layers that mix samples in eval mode would not allow this.
    GPU batches run whole: there, chunks would only multiply the kernel launches.

    A ReLU followed by max pooling runs after the pooling instead, on a quarter of the values
    (2x2 windows), and backward follows the order forward ran: the output and every gradient
    are the very same (see _pool_before_activation). Where the backend can, a convolution with
    its ReLU and 2x2 pool runs as one step (nn.fused.ConvReLUPool), again with the same results.
    """
    can_skip_input_grad = True
    INFERENCE_CHUNK = 128

    def __init__(self, *layers):
        super().__init__()
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
        if not _grad_enabled and not self.training and getattr(x, "ndim", 0) > 0 and not backend.is_cupy_array(x) \
                and len(x) > self.INFERENCE_CHUNK and self._all_layers_eval():
            parts = [self._run(x[i:i + self.INFERENCE_CHUNK]) for i in range(0, len(x), self.INFERENCE_CHUNK)]
            return backend.xp_for(parts[0]).concatenate(parts)
        return self._run(x)

    def _run(self, x):
        from .fused import fuse                             # fused.py imports the layers, which import this
        layers = _pool_before_activation(self._modules.values())
        if backend.is_array(x):
            layers = fuse(layers, backend.ops_for(x))
        object.__setattr__(self, "_order", layers)          # the order backward retraces
        with backend.pass_scope(x):
            for layer in layers:
                x = layer(x)
        return x

    def _all_layers_eval(self):
        return all(not m.training for m in self.modules())

    def backward(self, dy, input_grad=True):
        """Backpropagate dy through the layers in reverse; returns the input gradient.

        input_grad=False lets the first layer skip computing a gradient nobody will read (the
        images' gradient during training; torch skips it too since images need no grad) and
        returns None. fit() uses it.
        """
        layers = self.__dict__.get("_order") or list(self._modules.values())
        with backend.pass_scope(dy):
            for layer in reversed(layers[1:]):
                dy = layer.backward(dy)
            first = layers[0]
            if not input_grad and getattr(first, "can_skip_input_grad", False):
                return first.backward(dy, input_grad=False)
            dx = first.backward(dy)
        return dx if input_grad else None


def _pool_before_activation(layers):
    """The layers with every (activation, max pool) pair swapped where the activation commutes
    with taking a maximum (ReLU), so the activation runs on the pooled values only. Nothing
    changes but the work: max(relu(window)) = relu(max(window)) exactly (NaN included), and the
    gradient reaches the same pixel with the same value: the window's winner when its maximum is
    positive (or NaN), and nowhere (a zero) when it is not, since ReLU's derivative is 0 there."""
    layers = list(layers)
    for i in range(len(layers) - 1):
        if getattr(layers[i], "commutes_with_max_pool", False) and getattr(layers[i + 1], "is_max_pool", False):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return layers
