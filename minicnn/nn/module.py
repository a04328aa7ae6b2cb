"""Module and Parameter: what every layer is built from (containers are in container.py).

A Module owns Parameters (trainable arrays with a ``.grad``), buffers (state such as batch-norm
running statistics) and child Modules, registered by plain attribute assignment as in torch.
``forward(x)`` computes and caches what ``backward(dy)`` needs; ``backward`` returns the input
gradient and *adds* parameter gradients into ``.grad``, as torch does.
"""
import warnings
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np

from .. import backend
from ._checks import check_grad, describe

_grad_enabled = True
_depth = 0              # how many module calls are in progress (the outermost is the user's)


class StateReuseWarning(UserWarning):
    """A forward replaced state that no backward had used (see Module.__call__)."""


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
    """A trainable array. ``data`` holds the values, ``grad`` the accumulated gradient (or None).
    Reading ``grad`` first waits for any gradient the backend is still finishing in the background
    (backend.settle(): the Numba backend sums convolutions' weight gradients on otherwise idle threads).
    ``requires_grad = False`` freezes it as in torch: backward leaves its ``grad`` None, so the
    optimizers, gradient clipping and distributed averaging pass it by."""

    __slots__ = ("data", "_grad", "grad_hook", "_requires_grad")

    def __init__(self, data, requires_grad=True):
        if not backend.is_array(data) or data.dtype.kind != "f":
            raise TypeError(f"Parameter: expected a floating numpy or cupy array, got {describe(data)}")
        self.data = data
        self._grad = None
        self.grad_hook = None   # called with the parameter after each accumulate_grad (distributed training's)
        self.requires_grad = requires_grad

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"Parameter.requires_grad must be True or False, got {describe(value)}")
        self._requires_grad = bool(value)

    def numel(self):
        """The number of values (torch's name; ``size`` is NumPy's)."""
        return self.data.size

    @property
    def grad(self):
        if self._grad is not None:
            backend.settle()
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = value

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
        array nobody else holds, so a first gradient can be kept as it is instead of copied. A
        frozen parameter (requires_grad False) drops g: its grad stays as it was (None after zero_grad)."""
        if not self._requires_grad:
            return
        if self._grad is None:              # (g is kept or copied: a copy reads it, so settle first)
            keep = owned and g.dtype == self.data.dtype and g.shape == self.data.shape
            if not keep:
                backend.settle()
            self._grad = g if keep else g.astype(self.data.dtype, copy=True)
        else:
            self.grad += g
        if self.grad_hook is not None:
            self.grad_hook(self)

    def __repr__(self):
        frozen = "" if self._requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


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
            table = self._parameters if isinstance(value, Parameter) else self._modules
            if name not in table:                   # a replaced child keeps its place, as in torch
                self._forget(name)
            table[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        elif name in self._parameters or name in self._modules:
            raise TypeError(f"{type(self).__name__}.{name} must stay a "
                            f"{type(getattr(self, name)).__name__}, got {describe(value)}")
        else:
            if isinstance(value, (list, tuple, dict)) and any(
                    isinstance(v, Module) for v in (value.values() if isinstance(value, dict) else value)):
                warnings.warn(f"{type(self).__name__}.{name} is a {type(value).__name__} holding Modules: they are not "
                              "registered, so parameters(), state_dict(), .to() and the optimizer will not see them "
                              "(as in torch). Use minicnn.nn.ModuleList (or Sequential)", UserWarning, stacklevel=2)
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

    def named_children(self):
        return iter(self._modules.items())

    def apply(self, fn):
        """fn(module) for every submodule, children first, then this one (torch's order: a custom
        weight initialization, model.apply(init_weights)). Returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def add_module(self, name, module):
        """Register ``module`` (a Module, or None) as the child ``name``, as setattr does."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"add_module: a child's name must be a non-empty string without '.', got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module or None, got {describe(module)}")
        setattr(self, name, module)

    def get_submodule(self, target):
        """The submodule at a dotted path ('3.body.0'); '' is this module."""
        module = self
        for name in target.split(".") if target else []:
            child = module._modules.get(name)
            if child is None:
                raise AttributeError(f"{type(module).__name__} has no submodule {name!r} (in {target!r})")
            module = child
        return module

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

    def num_parameters(self, trainable_only=False):
        """How many values the parameters hold (with trainable_only, only those not frozen)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

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

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) every parameter, as torch's: a frozen one gets no
        gradient, so an optimizer leaves it as it is. Returns self."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # ------------------------------------------------------------ state

    def state_dict(self):
        """Ordered name -> array copy of every parameter and buffer, named as torch names them."""
        return OrderedDict((name, array.copy()) for name, array in self._state_arrays())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        A whole checkpoint is accepted too (minicnn train's model.npz, fit's checkpoints/last.npz:
        its 'model' entry is the state). Raises ValueError listing every missing, unexpected (when
        strict) and mis-shaped entry, and naming any value that is not a real number array (complex
        values are refused, not silently cut to their real part). A one-element array of shape (1,)
        is taken for a scalar (0-d) buffer, as torch takes it (minicnn's own .safetensors files held
        batch norm's num_batches_tracked so until December 2026). Returns (missing_keys, unexpected_keys).
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"load_state_dict into {type(self).__name__}: expected a mapping of names to arrays, "
                            f"got {describe(state_dict)}")
        own = OrderedDict(self._state_arrays())
        inner = state_dict.get("model") if "model" not in own else None
        if hasattr(inner, "keys") and not any(k in own for k in state_dict):
            state_dict = inner                           # a whole checkpoint: its model's state
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [f"{k}: checkpoint {tuple(np.shape(state_dict[k]))}, model {tuple(a.shape)}"
                      for k, a in own.items() if k in state_dict and not _shape_fits(np.shape(state_dict[k]), a.shape)]
        not_real = [f"{k}: {describe(state_dict[k])}" for k in own if k in state_dict
                    and not (backend.is_array(state_dict[k]) or isinstance(state_dict[k], (int, float, np.generic)))
                    or k in state_dict and np.asarray(backend.to_numpy(state_dict[k])).dtype.kind not in "biuf"]
        problems = []
        if not_real:
            problems.append("not real numbers (float, int or bool arrays): " + "; ".join(not_real))
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
                value = backend.xp_for(target).asarray(state_dict[key]).astype(target.dtype, copy=False)
                target[...] = value.reshape(target.shape)
        return missing, unexpected

    def _state_arrays(self):
        """(name, live array) for every parameter and buffer, in torch's state_dict order: module by
        module, each one's parameters, then its buffers."""
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            yield from ((prefix + name, p.data) for name, p in module._parameters.items())
            yield from ((prefix + name, b) for name, b in module._buffers.items())

    # ------------------------------------------------------------ dtype and device

    def to(self, target):
        """Convert floating parameters and buffers to a dtype (np.float32/np.float64) or move
        everything to a device ('cpu' or 'cuda'). Returns self."""
        if isinstance(target, str):
            convert = backend.device_converter(target)
        else:
            dtype = np.dtype(target)
            if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
                raise TypeError(f"{type(self).__name__}.to: minicnn computes in float32 or float64, got {dtype} "
                                f"(use model.to(np.float32), or a device: 'cpu' or 'cuda')")
            convert = lambda a: a.astype(dtype) if a.dtype.kind == "f" else a  # noqa: E731
        for p in self.parameters():
            p.data = convert(p.data)
            if p.grad is not None:
                p.grad = convert(p.grad)
        for m in self.modules():
            for name, b in m._buffers.items():
                m._buffers[name] = convert(b)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None):
        """Move to the GPU (torch's model.cuda()); minicnn uses one GPU per process: device None or 0."""
        if device not in (None, 0, "cuda", "cuda:0"):
            raise ValueError(f"{type(self).__name__}.cuda: minicnn runs on the process's current GPU (device None "
                             f"or 0), got {device!r}; pick the GPU with CUDA_VISIBLE_DEVICES")
        return self.to("cuda")

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    # ------------------------------------------------------------ computing

    def save_for_backward(self, output, **values):
        """Keep what backward needs (unless inside no_grad), plus the output's shape and dtype
        to check the incoming gradient against. Each forward's state serves one backward. A forward
        inside no_grad keeps nothing and leaves the state of the last training forward in place (as in
        torch, evaluating between a forward and its backward does not disturb the backward)."""
        if _grad_enabled:
            saved = SimpleNamespace(out_shape=output.shape, out_dtype=output.dtype, used=False, **values)
            object.__setattr__(self, "_saved", saved)

    def saved(self, dy):
        """What forward saved, after checking that forward ran, that no backward used it yet, and
        that dy fits its output."""
        saved = self.__dict__.get("_saved")
        if saved is None:
            raise RuntimeError(f"{self!r}: backward() called before forward() "
                               "(or after a forward inside no_grad())")
        if saved.used:
            raise RuntimeError(f"{self!r}: backward() ran a second time for one forward (it would add the "
                               "gradients again). Run forward again before each backward; for two losses of one "
                               "forward, add their gradients and run backward once: model.backward(d1 + d2)")
        check_grad(self, dy, saved.out_shape, saved.out_dtype)
        saved.used = True
        return saved

    def learns(self):
        """Whether any parameter in this module learns (requires_grad)."""
        return any(p.requires_grad for p in self.parameters())

    def skip_backward(self):
        """The last forward's backward will not run (nothing before it learns): its state counts as
        used, as after a backward, in this module and all it holds."""
        for module in self.modules():
            saved = module.__dict__.get("_saved")
            if saved is not None:
                saved.used = True

    def awaits_backward(self):
        """The modules inside this one holding a forward's state that no backward has used yet."""
        return [m for m in self.modules() if getattr(m.__dict__.get("_saved"), "used", True) is False]

    # How a backend's plan of a chain of layers sees this layer (backend.contract.plan_chain): a tuple
    # such as ('relu',) for layers whose op the plan may move or fuse, None for any other.
    kind = None

    def forward(self, x):
        """Compute the output from x, keeping what backward needs (self.save_for_backward(y, ...),
        nothing inside no_grad()). Subclasses define it; call the module, model(x), to run it."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, dy):
        """dL/dx for dL/dy = dy (the shape of forward's output): reads what forward kept
        (self.saved(dy)), adds each parameter's gradient into its .grad, returns the input's
        gradient. Subclasses define it; there is no autograd: model.backward(loss_fn.backward())."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def __call__(self, *args, **kwargs):
        """forward(*args). A model called from outside (not by a container) in training mode, while a
        forward's state still waits for its backward, warns: the tutorial order 'forward on the training
        batch, forward on the validation batch, then backward' would train on the validation batch."""
        global _depth
        if _depth == 0 and _grad_enabled and self.training:
            waiting = self.awaits_backward()
            if waiting:
                warnings.warn(f"{type(self).__name__}: a forward in training mode while the previous forward's state "
                              "still waits for its backward; backward will now use this forward's. To evaluate "
                              "between training steps use `with minicnn.no_grad():` (and model.eval()); run "
                              "backward before the next training forward.", StateReuseWarning, stacklevel=2)
        _depth += 1
        try:
            return self.forward(*args, **kwargs)
        finally:
            _depth -= 1

    # ------------------------------------------------------------ printing

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


def _shape_fits(given, own):
    """Whether a state entry of shape ``given`` loads into an array of shape ``own``: the same
    shape, or one value for a scalar."""
    return tuple(given) == tuple(own) or (tuple(own) == () and tuple(given) == (1,))


def place_on(module, device):
    """torch's device= argument of a layer: None or 'cpu' leaves it where it was made, anything else
    moves it there (module.to(device), which says what is wrong with an unknown device)."""
    if device is not None and str(device) != "cpu":
        module.to(str(device))
