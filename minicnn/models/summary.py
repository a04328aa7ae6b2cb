"""A table of a model's layers, output shapes and parameter counts."""
import numpy as np

from ..nn.container import Sequential
from ..nn.module import no_grad


def summary(model, input_shape, dtype=np.float32):
    """Return the table for one sample of ``input_shape`` (C, H, W), e.g. (1, 28, 28), as text.

    Runs a forward pass of a batch of one zero image layer by layer.
    """
    x = np.zeros((1,) + tuple(input_shape), dtype=dtype)
    rows = [("Layer", "Output shape", "Params")]
    with no_grad():
        for name, layer in _leaves(model):
            x = layer(x)
            count = sum(p.size for p in layer.parameters())
            rows.append((f"{name}: {type(layer).__name__}", str(tuple(x.shape)), f"{count:,}"))
    total = model.num_parameters()
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
    rule = "-" * len(fmt(rows[0]))
    lines = [f"{type(model).__name__}, input {tuple(input_shape)}", rule, fmt(rows[0]), rule]
    lines += [fmt(r) for r in rows[1:]] + [rule, f"Total parameters: {total:,}"]
    return "\n".join(lines)


def _leaves(model, prefix=""):
    """Layers in execution order, descending into nested Sequentials."""
    if not isinstance(model, Sequential):
        yield prefix or type(model).__name__, model
        return
    for name, child in model._modules.items():
        yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
