"""A table of a model's layers, output shapes and parameter counts."""
import numpy as np

from ..nn.chain import as_written
from ..nn.module import no_grad


def summary(model, input_shape, dtype=np.float32):
    """Return the table for one sample of ``input_shape`` (C, H, W), e.g. (1, 28, 28), as text.

    Runs one forward pass of a batch of one zero image in eval mode (the model's mode and batch-norm
    statistics are left as they were) and notes every module's output shape: layers inside
    containers, residual branches included, each on its own row, indented under their container.
    """
    x = np.zeros((1,) + tuple(input_shape), dtype=model_dtype(model, dtype))
    shapes = {}
    modules = [(name, m) for name, m in model.named_modules() if name]
    for name, module in modules:
        _record_output(module, name, shapes)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with no_grad(), as_written():              # every layer by itself, in order, nothing fused
            model(x)
    finally:
        for _, module in modules:
            module.__dict__.pop("forward", None)
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    rows = [("Layer", "Output shape", "Params")]
    for name, module in model.named_modules():
        if not name:
            continue
        depth = name.count(".")
        count = sum(p.size for p in module.parameters())
        shape = str(shapes[name]) if name in shapes else ""
        rows.append((f"{'  ' * depth}{name}: {type(module).__name__}", shape, f"{count:,}" if not module._modules else ""))
    total = model.num_parameters()
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
    rule = "-" * len(fmt(rows[0]))
    lines = [f"{type(model).__name__}, input {tuple(input_shape)}", rule, fmt(rows[0]), rule]
    lines += [fmt(r) for r in rows[1:]] + [rule, f"Total parameters: {total:,}"]
    trainable = model.num_parameters(trainable_only=True)
    if trainable != total:                                  # some frozen (requires_grad False)
        lines.append(f"Trainable parameters: {trainable:,} (frozen: {total - trainable:,})")
    return "\n".join(lines)


def model_dtype(model, default):
    """The dtype of the model's first parameter (default without parameters)."""
    first = next(iter(model.parameters()), None)
    return default if first is None else first.dtype


def _record_output(layer, name, shapes):
    """Wrap layer.forward for one call: note its output's shape under name."""
    original = layer.forward

    def forward(*args, **kwargs):
        y = original(*args, **kwargs)
        shapes[name] = tuple(y.shape)
        return y
    object.__setattr__(layer, "forward", forward)
