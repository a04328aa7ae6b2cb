"""A chain of layers run as its backend plans it (backend.contract.plan_chain).

The plan says in which order the layers run (a ReLU after the max pool that follows it, on a
quarter of the values), which runs of layers go as one fused op (nn.fused), and in how large
chunks inference may cut a batch. Results are those of the layers run one by one as written:
the reordering is exact, and a fused op computes what its layers do (up to rounding where its
backend says so). Sequential runs its layers through a Chain; so can any container.
"""
import contextlib

from .. import backend
from .fused import FUSED_STEPS, ConvBatchNorm
from .module import is_grad_enabled

_as_written = False          # inside as_written(): every chain runs its layers one by one, in order


@contextlib.contextmanager
def as_written():
    """Within: chains run their layers one by one in the order they were written, ignoring the
    backend's plan (a summary shows each layer's own output this way)."""
    global _as_written
    previous, _as_written = _as_written, True
    try:
        yield
    finally:
        _as_written = previous


def fusing_allowed():
    """False inside as_written(): then every layer runs by itself (a container asks before it runs
    two of its children as one step)."""
    return not _as_written


class Chain:
    """The steps of some layers under the plans of the backends they have run on.

    forward(x) runs them in the planned order, inside the backend's pass scope, and remembers the
    steps for backward(dy), which retraces them in reverse.
    """

    def __init__(self):
        self._plans = {}        # (backend name, layer ids, kinds, plan) -> (steps, inference chunk)
        self._steps = None      # the steps the last forward ran

    def forward(self, layers, x, inference):
        """Run x through layers; inference (eval mode and no_grad) may cut a large batch in chunks."""
        ops = backend.ops_for(x)
        steps, chunk = self._plan(ops, layers)
        self._steps = steps
        with ops.pass_scope():
            if inference and chunk and getattr(x, "ndim", 0) > 0 and len(x) > chunk:
                parts = [_run(steps, x[i:i + chunk]) for i in range(0, len(x), chunk)]
                return ops.xp.concatenate(parts)
            return _run(steps, x)

    def sum_forward(self, layers, x, residual, relu):
        """(y, summed): with summed, y = relu(the layers' output + residual) (without relu, the sum),
        the sum and ReLU done by the last step as it writes its output (a ConvBatchNorm step that can
        take them; after one in training, sum_backward is the backward); otherwise y is the layers'
        output alone, or None, nothing having run, where the last step is of another kind."""
        ops = backend.ops_for(x)
        steps, _ = self._plan(ops, layers)
        if not steps or not isinstance(steps[-1], ConvBatchNorm):
            return None, False
        self._steps = steps
        with ops.pass_scope():
            h = _run(steps[:-1], x)
            y = steps[-1].sum_forward(h, residual, relu)
            return (y, True) if y is not None else (steps[-1](h), False)

    def backward(self, layers, dy, input_grad=True):
        """The input gradient (None when not input_grad and the first step can skip it)."""
        steps = self._steps or list(layers)
        with backend.ops_for(dy).pass_scope():
            return _backward(steps, dy, input_grad)

    def sum_backward(self, dy, input_grad=True):
        """(the input gradient or None as backward's, the sum's gradient) after a sum_forward that
        summed in training: its last step (a ConvBatchNorm) gives both."""
        steps = self._steps
        with backend.ops_for(dy).pass_scope():
            if len(steps) == 1:
                return steps[0].sum_backward(dy, input_grad)
            dy, dsum = steps[-1].sum_backward(dy)
            return _backward(steps[:-1], dy, input_grad), dsum

    @property
    def steps(self):
        """The steps the last forward ran (layers, and fused steps standing for several)."""
        return list(self._steps or ())

    def _plan(self, ops, layers):
        if _as_written:
            return list(layers), 0
        kinds = tuple(layer.kind for layer in layers)
        plan = ops.plan_chain(kinds)                # asked each time: it may change with the backend's settings
        key = (ops.name, tuple(map(id, layers)), kinds, plan)
        planned = self._plans.get(key)
        if planned is None:
            if len(self._plans) > 8:                # layers replaced many times over: start afresh
                self._plans.clear()
            steps = [layers[indices[0]] if fused is None else FUSED_STEPS[fused](*(layers[i] for i in indices))
                     for fused, indices in plan.steps]
            planned = self._plans[key] = (steps, plan.inference_chunk)
        return planned


def _backward(steps, dy, input_grad):
    if not input_grad:              # a frozen start (no parameter that learns, no input gradient wanted):
        start = next((i for i, step in enumerate(steps) if step.learns()), len(steps))
        for step in steps[:start]:  # nothing there needs a backward, as torch skips it
            step.skip_backward()
        steps = steps[start:]
        if not steps:
            return None
    for step in reversed(steps[1:]):
        dy = step.backward(dy)
    first = steps[0]
    if not input_grad and getattr(first, "can_skip_input_grad", False):
        first.backward(dy, input_grad=False)
        return None
    dx = first.backward(dy)
    return dx if input_grad else None


def _run(steps, x):
    for step in steps:
        x = step(x)
    return x


def is_inference(module):
    """Whether module and all it contains are in eval mode under no_grad: each sample's result is
    then independent of the others (batch norm uses its running statistics)."""
    return not is_grad_enabled() and all(not m.training for m in module.modules())
