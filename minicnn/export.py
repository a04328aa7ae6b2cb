"""Models to and from ONNX, built and checked with the onnx package (pip install 'minicnn[export]').

    minicnn.export.to_onnx(model, "lenet.onnx", input_shape=(1, 28, 28))     # then onnxruntime, etc.
    model = minicnn.export.from_onnx("lenet.onnx")                            # a trainable minicnn model

Export writes one graph, input 'input' (N, C, H, W) with a dynamic batch axis N, output 'output',
the weights as initializers named by their state_dict keys, opset 20, checked by onnx.checker
(with shape inference) before it is written atomically. Each layer maps to its ONNX operator:

    Conv2d Conv (pads, strides, dilations, group)   Linear Gemm (transB=1; MatMul + Add past 2-D)
    MaxPool2d MaxPool    AvgPool2d AveragePool      AdaptiveAvgPool2d(1) GlobalAveragePool, other
    BatchNorm1d/2d BatchNormalization (eval form)      sizes dividing the input AveragePool
    AdaptiveMaxPool2d: likewise GlobalMaxPool, MaxPool
    ReLU Relu   LeakyReLU LeakyRelu   Sigmoid       Tanh   GELU Gelu   SiLU Sigmoid + Mul
    Hardtanh, ReLU6 Clip   Hardsigmoid HardSigmoid (alpha 1/6, beta 1/2)   Hardswish HardSwish
    Softmax Softmax   LogSoftmax LogSoftmax (axis: the layer's dim)
    Flatten Flatten   Dropout, Dropout2d Dropout (identity in inference)   Identity Identity
    Residual: both paths from one tensor, Add, then the activation; Sequential: in order
    SqueezeExcitation: its gate (GlobalAveragePool, Conv, activation, Conv, activation), then Mul

Import reads the same operators back (and what torch.onnx.export writes for such networks, batch
norms folded into convolutions included): a chain becomes a Sequential, two paths from one tensor
meeting at an Add become a Residual (a Relu right after the Add its activation), x * Sigmoid(x)
becomes SiLU, x times such a gate a SqueezeExcitation. An operator outside this set, or a graph
of another shape, is refused with a ValueError naming the node; nothing is built from a file that
does not check.
"""
import json

import numpy as np

from . import __version__, nn
from .checkpoint import atomic_write_bytes

OPSET = 20           # the first with Gelu
TRACKED_KEY = "minicnn.num_batches_tracked"    # metadata: {batch norm's path prefix: its count}


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as err:
        raise ImportError("ONNX export and import need the onnx package: pip install 'minicnn[export]'") from err
    return onnx, helper, numpy_helper


# ------------------------------------------------------------------ export

def to_onnx(model, path, input_shape, dtype=np.float32, opset=OPSET):
    """Write ``model`` (eval-mode semantics: batch norm by its running statistics, dropout off) as an
    ONNX file at ``path`` for inputs (N, *input_shape); returns the onnx ModelProto. Raises
    ValueError naming any module that has no ONNX form here."""
    onnx, helper, numpy_helper = _onnx()
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"to_onnx: dtype must be float32 or float64, got {dtype}")
    shapes = _input_shapes(model, input_shape, dtype)
    graph = _Graph(helper, numpy_helper, dtype)
    output = graph.emit(model, "", "input", shapes)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    x_info = helper.make_tensor_value_info("input", elem, ["N", *input_shape])
    y_shape = ["N", *shapes["__output__"][1:]]
    graph.nodes.append(helper.make_node("Identity", [output], ["output"], name="output"))
    y_info = helper.make_tensor_value_info("output", elem, y_shape)
    proto = helper.make_model(helper.make_graph(graph.nodes, type(model).__name__, [x_info], [y_info],
                                                graph.initializers),
                              opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="minicnn", producer_version=__version__)
    proto.ir_version = min(proto.ir_version, 10)          # readable by onnxruntime releases of 2025 and later
    if graph.batches_tracked:         # metadata, not an initializer no node reads (onnxruntime warns of those)
        helper.set_model_props(proto, {TRACKED_KEY: json.dumps(graph.batches_tracked)})
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString())
    return proto


def _input_shapes(model, input_shape, dtype):
    """{module path: the shape of its input} from one eval-mode pass of a zero batch of one (the
    model's mode is left as it was)."""
    from .nn.chain import as_written
    from .nn.module import no_grad
    shapes = {}
    modules = list(model.named_modules())
    for name, module in modules:
        original = module.forward

        def forward(x, *rest, _f=original, _n=name):
            shapes[_n] = tuple(x.shape)
            return _f(x, *rest)
        object.__setattr__(module, "forward", forward)
    modes = [(m, m.training) for _, m in modules]
    try:
        model.eval()
        with no_grad(), as_written():
            y = model(np.zeros((1, *input_shape), dtype=model_dtype(model, dtype)))
        shapes["__output__"] = tuple(y.shape)
    finally:
        for _, module in modules:
            module.__dict__.pop("forward", None)
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    return shapes


def model_dtype(model, default):
    first = next(iter(model.parameters()), None)
    return default if first is None else first.dtype


class _Graph:
    """The nodes and initializers being built; emit() adds one module and returns its output's name."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, dtype
        self.nodes, self.initializers, self._names = [], [], set()
        self.batches_tracked = {}          # batch norm's path -> num_batches_tracked, kept as metadata

    def tensor(self, name, array, dtype=None):
        array = np.asarray(array, dtype=dtype or self.dtype)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, name, **attributes):
        out = self._unique(name or op)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attributes))
        return out

    def _unique(self, name):
        candidate, i = name, 1
        while candidate in self._names:
            i += 1
            candidate = f"{name}_{i}"
        self._names.add(candidate)
        return candidate

    def emit(self, m, path, x, shapes):
        host = _host_state(m)
        p = f"{path}." if path else ""
        if isinstance(m, nn.Sequential):
            for name, child in m._modules.items():
                x = self.emit(child, p + name, x, shapes)
            return x
        if isinstance(m, nn.Residual):
            main = self.emit(m.body, p + "body", x, shapes)
            skip = x if m.shortcut is None else self.emit(m.shortcut, p + "shortcut", x, shapes)
            y = self.node("Add", [main, skip], p + "add")
            return y if m.activation is None else self.emit(m.activation, p + "activation", y, shapes)
        if isinstance(m, nn.SqueezeExcitation):
            gate = x
            for name in ("avgpool", "fc1", "activation", "fc2", "scale_activation"):
                gate = self.emit(getattr(m, name), p + name, gate, shapes)
            return self.node("Mul", [x, gate], path)
        kind = type(m)
        if kind is nn.Conv2d:
            inputs = [x, self.tensor(p + "weight", host["weight"])]
            if m.bias is not None:
                inputs.append(self.tensor(p + "bias", host["bias"]))
            (PH, PW) = m.padding
            return self.node("Conv", inputs, path, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                             pads=[PH, PW, PH, PW], dilations=list(m.dilation), group=m.groups)
        if kind is nn.Linear:
            weight = host["weight"]
            if len(shapes[path]) == 2:
                inputs = [x, self.tensor(p + "weight", weight)]
                if m.bias is not None:
                    inputs.append(self.tensor(p + "bias", host["bias"]))
                return self.node("Gemm", inputs, path, transB=1)
            y = self.node("MatMul", [x, self.tensor(p + "weight_t", weight.T)], path + ".matmul")
            return y if m.bias is None else self.node("Add", [y, self.tensor(p + "bias", host["bias"])], path)
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            if not m.track_running_stats:
                raise ValueError(f"to_onnx: {path} ({kind.__name__}) keeps no running statistics: its eval form "
                                 "normalizes by each batch's own, which ONNX's BatchNormalization cannot express")
            C = m.num_features
            names = ("weight", "bias") if m.affine else ("unit_scale", "zero_shift")     # from_onnx: affine=False
            scale = host["weight"] if m.affine else np.ones(C)
            shift = host["bias"] if m.affine else np.zeros(C)
            inputs = [x, self.tensor(p + names[0], scale), self.tensor(p + names[1], shift),
                      self.tensor(p + "running_mean", host["running_mean"]),
                      self.tensor(p + "running_var", host["running_var"])]
            momentum = 0.9 if m.momentum is None else 1 - m.momentum
            self.batches_tracked[p] = int(host["num_batches_tracked"])     # read back by from_onnx
            return self.node("BatchNormalization", inputs, path, epsilon=m.eps, momentum=momentum)
        if kind is nn.MaxPool2d:
            (PH, PW) = m.padding
            return self.node("MaxPool", [x], path, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                             pads=[PH, PW, PH, PW])
        if kind is nn.AvgPool2d:
            (PH, PW) = m.padding
            return self.node("AveragePool", [x], path, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                             pads=[PH, PW, PH, PW], count_include_pad=int(m.count_include_pad))
        if kind in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
            H, W = shapes[path][2:]
            OH, OW = (H if s is None else s for s, H in zip(m.output_size, (H, W)))
            average = kind is nn.AdaptiveAvgPool2d
            if (OH, OW) == (1, 1):
                return self.node("GlobalAveragePool" if average else "GlobalMaxPool", [x], path)
            if H % OH or W % OW:
                raise ValueError(f"to_onnx: {path} ({kind.__name__}{(OH, OW)}) on a {H}x{W} input has windows of "
                                 "unequal sizes, which no ONNX pooling operator expresses")
            return self.node("AveragePool" if average else "MaxPool", [x], path, kernel_shape=[H // OH, W // OW],
                             strides=[H // OH, W // OW])
        if kind is nn.ReLU:
            return self.node("Relu", [x], path)
        if kind is nn.LeakyReLU:
            return self.node("LeakyRelu", [x], path, alpha=m.negative_slope)
        if kind is nn.Sigmoid:
            return self.node("Sigmoid", [x], path)
        if kind is nn.Tanh:
            return self.node("Tanh", [x], path)
        if kind is nn.GELU:
            return self.node("Gelu", [x], path, approximate=m.approximate)
        if kind is nn.SiLU:
            s = self.node("Sigmoid", [x], path + ".sigmoid")
            return self.node("Mul", [x, s], path)
        if kind in (nn.Hardtanh, nn.ReLU6):
            bounds = [self.tensor(p + "min", m.min_val), self.tensor(p + "max", m.max_val)]
            return self.node("Clip", [x, *bounds], path)
        if kind is nn.Hardsigmoid:
            return self.node("HardSigmoid", [x], path, alpha=1 / 6, beta=0.5)
        if kind in (nn.Softmax, nn.LogSoftmax):
            ndim = len(shapes[path])
            axis = (0 if ndim in (0, 1, 3) else 1) if m.dim is None else m.dim % ndim      # torch's implicit choice
            return self.node(kind.__name__, [x], path, axis=axis)
        if kind is nn.Hardswish:
            return self.node("HardSwish", [x], path)
        if kind is nn.Flatten:
            return self.node("Flatten", [x], path, axis=1)
        if kind in (nn.Dropout, nn.Dropout2d):         # the identity in inference; from_onnx gives Dropout
            return self.node("Dropout", [x, self.tensor(p + "ratio", m.p)], path)
        if kind is nn.Identity:
            return self.node("Identity", [x], path)
        if kind is nn.GroupNorm:
            raise ValueError(f"to_onnx: {path} (GroupNorm) has no ONNX form here: opset {OPSET}'s "
                             "GroupNormalization scales per group, torch's GroupNorm per channel (opset 21 fixed it)")
        raise ValueError(f"to_onnx: {path or 'the model'} is a {kind.__name__}, which has no ONNX form here "
                         "(minicnn's own layers, Sequential and Residual export)")


def _host_state(m):
    """The module's own parameters and buffers as host NumPy arrays."""
    from . import backend
    own = {name: p.data for name, p in m._parameters.items() if p is not None}
    own.update(m._buffers)
    return {k: backend.to_numpy(v) for k, v in own.items()}


# ------------------------------------------------------------------ import

SUPPORTED = ("Conv", "Gemm", "MatMul", "Add", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
             "GlobalMaxPool", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Mul", "Flatten", "Dropout", "Identity",
             "Clip", "HardSigmoid", "HardSwish", "Softmax", "LogSoftmax")


def from_onnx(path):
    """A trainable minicnn model (a Sequential, residual blocks where the graph branches) computing
    what the ONNX file at ``path`` computes, its weights copied from the initializers. ValueError,
    one line, for a file that is not ONNX, does not check, or holds an operator or a graph shape
    outside what to_onnx writes."""
    onnx, helper, numpy_helper = _onnx()
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except FileNotFoundError:
        raise
    except Exception as err:                               # DecodeError, ValidationError, truncated files
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"from_onnx: {path}: not a valid ONNX model ({message})") from None
    return _Importer(proto, numpy_helper).model()


def _batches_tracked(proto):
    """to_onnx's metadata {batch norm's path prefix: num_batches_tracked}; {} when absent or unreadable
    (a file from elsewhere: the counts start at 0, as they would in a fresh model)."""
    text = next((p.value for p in proto.metadata_props if p.key == TRACKED_KEY), None)
    try:
        tracked = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(tracked, dict):
        return {}
    return {k: v for k, v in tracked.items() if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}


class _Importer:
    def __init__(self, proto, numpy_helper):
        graph = proto.graph
        self.opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=1)
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.batches_tracked = _batches_tracked(proto)
        for node in graph.node:                               # Constant nodes: initializers by another name
            if node.op_type == "Constant":
                value = next(a for a in node.attribute if a.name == "value")
                self.inits[node.output[0]] = numpy_helper.to_array(value.t)
        self.nodes = [n for n in graph.node if n.op_type != "Constant"]
        for node in self.nodes:
            if node.op_type not in SUPPORTED:
                raise ValueError(f"from_onnx: node {node.name or node.output[0]!r} is a {node.op_type}, which minicnn "
                                 f"does not import (supported: {', '.join(SUPPORTED)})")
        inputs = [i for i in graph.input if i.name not in self.inits]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ValueError(f"from_onnx: expected one input and one output, got {len(inputs)} and {len(graph.output)}")
        self.input, self.output = inputs[0].name, graph.output[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        self.rank = {self.input: len(dims) if dims else 4}
        self.consumers = {}
        for node in self.nodes:
            for name in node.input:
                if name and name not in self.inits:
                    self.consumers.setdefault(name, []).append(node)
        floats = {a.dtype for a in self.inits.values() if a.dtype.kind == "f"}
        self.dtype = np.float64 if floats == {np.dtype(np.float64)} else np.float32

    def model(self):
        layers, end = self.chain(self.input, stop=None)
        if end != self.output:
            raise ValueError(f"from_onnx: the graph's output {self.output!r} is not reached by one chain from its input")
        return nn.Sequential(*layers).to(self.dtype) if layers else nn.Sequential(nn.Identity())

    def chain(self, tensor, stop):
        """(layers, end tensor): the modules from tensor on, until the tensor that feeds the Add ``stop``
        (or the graph's output)."""
        layers = []
        while True:
            users = self.consumers.get(tensor, [])
            if stop is not None and stop in users:
                if len(users) != 1:
                    raise ValueError(f"from_onnx: tensor {tensor!r} feeds {len(users)} nodes inside a branch")
                return layers, tensor
            if not users:
                return layers, tensor
            if len(users) == 1 and users[0].op_type == "Add" and not self._adds_a_constant(users[0]):
                raise ValueError(f"from_onnx: node {users[0].name!r} adds two tensors outside a residual pattern")
            if len(users) == 1:
                node = users[0]
                module, tensor = self.layer(node, tensor)
                if module is not None:
                    layers.append(module)
                continue
            module, tensor = self.branches(tensor, users)
            layers.append(module)

    def branches(self, tensor, users):
        """SiLU (x * Sigmoid(x)), squeeze and excitation (x * a gate from GlobalAveragePool) or a residual
        block (two paths meeting at one Add)."""
        ops = sorted(n.op_type for n in users)
        if len(users) == 2 and ops == ["Mul", "Sigmoid"]:
            sigmoid = next(n for n in users if n.op_type == "Sigmoid")
            mul = next(n for n in users if n.op_type == "Mul")
            if set(mul.input) == {tensor, sigmoid.output[0]}:
                self.rank[mul.output[0]] = self.rank[tensor]
                return nn.SiLU(), mul.output[0]
        if len(users) == 2 and ops == ["GlobalAveragePool", "Mul"]:
            return self.squeeze_excitation(tensor, users)
        if len(users) != 2:
            raise ValueError(f"from_onnx: tensor {tensor!r} feeds {len(users)} nodes "
                             f"({', '.join(n.name or n.op_type for n in users)}); only residual pairs import")
        add = self._meeting_add(tensor, users)
        ends = {}
        for user in users:
            if user is add:
                ends[tensor] = None                           # the identity path
                continue
            self.consumers[tensor] = [user]                    # walk this path alone
            layers, end = self.chain(tensor, stop=add)
            ends[end] = layers
        self.consumers[tensor] = users
        body_end, skip_end = add.input
        if body_end not in ends or skip_end not in ends:
            raise ValueError(f"from_onnx: the paths from {tensor!r} do not meet at {add.name!r}")
        body, skip = ends[body_end], ends[skip_end]
        if body is None:
            body, skip = skip, None
        out = add.output[0]
        activation = None
        after = self.consumers.get(out, [])
        if len(after) == 1 and after[0].op_type == "Relu":
            activation, out = nn.ReLU(), after[0].output[0]
        self.rank[out] = self.rank[tensor]
        return nn.Residual(nn.Sequential(*body), None if not skip else nn.Sequential(*skip), activation), out

    def squeeze_excitation(self, tensor, users):
        """(SqueezeExcitation, output tensor) for x * gate(x), the gate GlobalAveragePool, 1x1 Conv,
        activation, 1x1 Conv, activation (torchvision's SqueezeExcitation as torch exports it)."""
        mul = next(n for n in users if n.op_type == "Mul")
        self.consumers[tensor] = [n for n in users if n is not mul]         # walk the gate alone
        gate, end = self.chain(tensor, stop=mul)
        self.consumers[tensor] = users
        pointwise = [m for m in gate[1:4:2] if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                     and m.stride == (1, 1) and m.padding == (0, 0) and m.groups == 1 and m.bias is not None]
        if set(mul.input) != {tensor, end} or len(gate) != 5 or len(pointwise) != 2:
            raise ValueError(f"from_onnx: node {mul.name or mul.output[0]!r} multiplies {tensor!r} by a gate that is not "
                             "squeeze and excitation's (GlobalAveragePool, 1x1 Conv with bias, activation, 1x1 Conv "
                             f"with bias, activation); got {', '.join(type(m).__name__ for m in gate)}")
        fc1, fc2 = pointwise
        se = nn.SqueezeExcitation(fc1.in_channels, fc1.out_channels, lambda: gate[2], lambda: gate[4]).to(self.dtype)
        se.load_state_dict({f"{name}.{key}": value for name, fc in (("fc1", fc1), ("fc2", fc2))
                            for key, value in fc.state_dict().items()})
        self.rank[mul.output[0]] = self.rank[tensor]
        return se, mul.output[0]

    def _meeting_add(self, tensor, users):
        """The Add node that both paths from tensor reach first (breadth-first along single consumers,
        and over x * gate(x), SiLU's and squeeze and excitation's, to its Mul)."""
        reach = []
        for user in users:
            seen, node = [], user
            while node is not None:
                seen.append(node)
                if node.op_type == "Add" and not self._adds_a_constant(node):
                    break
                out = node.output[0]
                nxt = self.consumers.get(out, [])
                if len(nxt) > 1:
                    nxt = [n for n in nxt if n.op_type == "Mul" and out in n.input]
                node = nxt[0] if len(nxt) == 1 else None
            reach.append(seen)
        common = [n for n in reach[0] if n.op_type == "Add" and any(n is m for m in reach[1])]
        if not common:
            raise ValueError(f"from_onnx: the two paths from tensor {tensor!r} never meet at an Add")
        return common[0]

    def _adds_a_constant(self, node):
        return any(name in self.inits for name in node.input)

    def attributes(self, node):
        from onnx import helper
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def layer(self, node, x):
        """(module or None, output tensor) for a single-input node reading x."""
        op, a, out = node.op_type, self.attributes(node), node.output[0]
        where = f"from_onnx: node {node.name or out!r} ({op})"
        rank = self.rank[x]
        self.rank[out] = rank
        init = self.inits

        def need(condition, what):
            if not condition:
                raise ValueError(f"{where} {what}")

        def pads2(pads, n_dims=2):
            pads = list(pads or [0] * (2 * n_dims))
            need(pads[:n_dims] == pads[n_dims:], f"pads {pads} unequally (minicnn pads both sides alike)")
            return tuple(pads[:n_dims])

        if op in ("Conv", "MaxPool", "AveragePool"):
            need(a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID"),
                 f"uses auto_pad={a.get('auto_pad')}; export explicit pads instead")
        if op == "Conv":
            w = init.get(node.input[1])
            need(w is not None and w.ndim == 4, "has weights that are not a 4-D initializer")
            b = init.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            group = a.get("group", 1)
            kernel = tuple(a.get("kernel_shape", w.shape[2:]))
            m = nn.Conv2d(w.shape[1] * group, w.shape[0], kernel, tuple(a.get("strides", (1, 1))),
                          pads2(a.get("pads")), tuple(a.get("dilations", (1, 1))), group, bias=b is not None)
            return self._set(m, weight=w, bias=b), out
        if op == "Gemm":
            need(a.get("transA", 0) == 0 and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0,
                 "uses transA, alpha or beta (minicnn's Linear is x @ W.T + b)")
            w = init.get(node.input[1])
            need(w is not None, "multiplies by a tensor that is not an initializer")
            w = w if a.get("transB", 0) else w.T
            b = init.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            return self._set(m, weight=w, bias=None if b is None else np.broadcast_to(b, (w.shape[0],))), out
        if op == "MatMul":
            w = init.get(node.input[1])
            need(w is not None and w.ndim == 2, "multiplies by a tensor that is not a 2-D initializer")
            after = self.consumers.get(out, [])
            b = None
            if len(after) == 1 and after[0].op_type == "Add" and self._adds_a_constant(after[0]):
                b = next(init[n] for n in after[0].input if n in init)
                out = after[0].output[0]
                self.rank[out] = rank
            m = nn.Linear(w.shape[0], w.shape[1], bias=b is not None)
            return self._set(m, weight=w.T, bias=b), out
        if op == "Add":
            raise ValueError(f"{where} adds a constant outside a Linear layer")
        if op == "BatchNormalization":
            scale, shift, mean, var = (init.get(n) for n in node.input[1:5])
            need(all(v is not None for v in (scale, shift, mean, var)), "normalizes by tensors that are not initializers")
            need(a.get("training_mode", 0) == 0, "is in training mode")
            cls = nn.BatchNorm1d if rank in (2, 3) else nn.BatchNorm2d
            momentum = float(f"{1 - a.get('momentum', 0.9):.6g}")          # stored as float32: 0.9 -> 0.10000002
            affine = not node.input[1].endswith("unit_scale")                # to_onnx's name for affine=False
            m = cls(scale.shape[0], eps=float(f"{a.get('epsilon', 1e-5):.6g}"), momentum=momentum, affine=affine)
            m = self._set(m, weight=scale, bias=shift) if affine else self._set(m)
            m.running_mean[...] = mean
            m.running_var[...] = var
            prefix = node.input[3][:-len("running_mean")]                 # to_onnx's names: prefix + running_mean
            tracked = self.batches_tracked.get(prefix, self.inits.get(prefix + "num_batches_tracked"))
            if tracked is not None and np.shape(tracked) == ():            # (an initializer in files before 2026-12)
                m.num_batches_tracked[...] = tracked
            return m, out
        if op == "MaxPool":
            need(a.get("ceil_mode", 0) == 0 and list(a.get("dilations", [1, 1])) == [1, 1] and
                 a.get("storage_order", 0) == 0, "uses ceil_mode, dilations or storage_order")
            need(len(node.output) == 1 or not node.output[1], "also returns indices")
            kernel = tuple(a["kernel_shape"])
            return nn.MaxPool2d(kernel, tuple(a.get("strides", (1, 1))), pads2(a.get("pads"))), out
        if op == "AveragePool":
            need(a.get("ceil_mode", 0) == 0 and list(a.get("dilations", [1, 1])) == [1, 1], "uses ceil_mode or dilations")
            return nn.AvgPool2d(tuple(a["kernel_shape"]), tuple(a.get("strides", (1, 1))), pads2(a.get("pads")),
                                count_include_pad=bool(a.get("count_include_pad", 0))), out
        if op == "GlobalAveragePool":
            return nn.AdaptiveAvgPool2d(1), out
        if op == "GlobalMaxPool":
            return nn.AdaptiveMaxPool2d(1), out
        if op == "Flatten":
            need(a.get("axis", 1) == 1, f"flattens from axis {a.get('axis')}; minicnn's Flatten joins every axis after the first")
            self.rank[out] = 2
            return nn.Flatten(), out
        if op == "Dropout":
            ratio = init.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            p = float(ratio) if ratio is not None else float(a.get("ratio", 0.5))
            return nn.Dropout(p), out
        if op == "Gelu":
            approximate = a.get("approximate", "none")
            return nn.GELU(approximate.decode() if isinstance(approximate, bytes) else approximate), out
        simple = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Identity": nn.Identity}
        if op in simple:
            return (None if op == "Identity" else simple[op]()), out
        if op == "LeakyRelu":
            return nn.LeakyReLU(a.get("alpha", 0.01)), out
        if op == "Clip":
            bounds = [init.get(name) for name in node.input[1:3] if name]
            need(len(bounds) == 2 and all(b is not None and np.size(b) == 1 for b in bounds),
                 "clips by bounds that are not both constants (minicnn's Hardtanh and ReLU6 take both)")
            low, high = (float(b) for b in bounds)
            return (nn.ReLU6() if (low, high) == (0.0, 6.0) else nn.Hardtanh(low, high)), out
        if op == "HardSigmoid":
            alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
            need(abs(alpha - 1 / 6) < 1e-6 and beta == 0.5,
                 f"has alpha={alpha}, beta={beta}; minicnn's Hardsigmoid is torch's (alpha=1/6, beta=0.5)")
            return nn.Hardsigmoid(), out
        if op == "HardSwish":
            return nn.Hardswish(), out
        if op in ("Softmax", "LogSoftmax"):
            need(self.opset >= 13, f"is of opset {self.opset}, where it normalizes over every axis from its axis on "
                                   "(minicnn's over one); export with opset 13 or later")
            return (nn.Softmax if op == "Softmax" else nn.LogSoftmax)(dim=a.get("axis", -1)), out
        raise ValueError(f"{where} cannot be read as a layer here")

    def _set(self, module, **arrays):
        module.to(self.dtype)
        for name, value in arrays.items():
            if value is not None:
                getattr(module, name).data[...] = np.asarray(value).reshape(getattr(module, name).shape)
        return module
