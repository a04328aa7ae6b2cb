"""Adam and AdamW with torch.optim's update, in the same order of operations:

    g = grad + weight_decay * p              (Adam: L2 penalty in the gradient)
    p = p * (1 - lr * weight_decay)          (AdamW: decoupled decay, instead)
    m = m + (1 - beta1) * (g - m)            (torch's lerp)
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
amsgrad uses the running maximum of v in the denominator.
"""
import math

from .. import backend
from .optimizer import Optimizer


class Adam(Optimizer):
    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        name = type(self).__name__
        if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be two numbers in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"{name}: invalid eps {eps} (must be >= 0)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def _init_state(self, p, group, state):
        if not state:
            xp = backend.xp_for(p.data)
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)

    def _hyper_values(self, group, params, states):
        """Advances every state's step (they move together within a group on the GPU path) and
        returns [lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt] as torch computes them."""
        lr, (beta1, beta2) = group["lr"], group["betas"]
        for state in states:
            state["step"] += 1
        step = states[0]["step"]
        if any(state["step"] != step for state in states):
            raise RuntimeError(f"{type(self).__name__}: the parameters of one group are at different steps; "
                               "the fused GPU update needs them in step")
        return (lr, beta1, beta2, group["eps"], group["weight_decay"], lr / (1 - beta1 ** step),
                math.sqrt(1 - beta2 ** step))

    def _gpu_group_step(self, group, params, states):
        """The whole group in one launch (kernels/optim.cu, adam_multi)."""
        from ..backend import cupy_ops
        for p, state in zip(params, states):
            self._init_state(p, group, state)
        if len({state["step"] for state in states}) > 1:    # some parameter skipped steps: one by one
            for p, state in zip(params, states):
                self._update(p, p.grad, group, state)
            return
        hyper = self._hyper(group, self._hyper_values(group, params, states), params[0].data.dtype)
        vs = [s["exp_avg_sq"] for s in states]
        cupy_ops.adam_multi([p.data for p in params], [p.grad for p in params], [s["exp_avg"] for s in states], vs,
                            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else vs, hyper,
                            self.decoupled_weight_decay, group["amsgrad"])

    def _update(self, p, grad, group, state):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        self._init_state(p, group, state)
        state["step"] += 1
        if wd and self.decoupled_weight_decay:
            p.data *= 1 - lr * wd
        elif wd:
            grad = grad + wd * p.data
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1 - beta1) * (grad - m)
        v *= beta2
        v += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            xp = backend.xp_for(v)
            xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step = state["step"]
        step_size = lr / (1 - beta1 ** step)
        denom = backend.xp_for(v).sqrt(v) / math.sqrt(1 - beta2 ** step) + eps
        p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as torch)."""
    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
