"""Adam and AdamW with torch.optim's update, in the same order of operations:

    g = grad + weight_decay * p              (Adam: L2 penalty in the gradient)
    p = p * (1 - lr * weight_decay)          (AdamW: decoupled decay, instead)
    m = m + (1 - beta1) * (g - m)            (torch's lerp)
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
amsgrad uses the running maximum of v in the denominator.
"""
from .. import backend
from .optimizer import Optimizer


class Adam(Optimizer):
    """Args: params (or parameter groups), lr, betas, eps, weight_decay, amsgrad, as torch."""
    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        name = type(self).__name__
        if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be two numbers in [0, 1), got {betas}")
        if eps < 0:
            raise ValueError(f"{name}: invalid eps {eps} (must be >= 0)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def _state_keys(self, group):
        return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group["amsgrad"] else set())

    def _group_step(self, group, params, states):
        """Every state's step advances; parameters at different steps (some skipped a step) go in
        separate calls, one per step count."""
        ops = backend.ops_for(params[0].data)
        for p, state in zip(params, states):
            if not state:
                state.update(step=0, exp_avg=ops.xp.zeros_like(p.data), exp_avg_sq=ops.xp.zeros_like(p.data))
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = ops.xp.zeros_like(p.data)
            state["step"] += 1
        by_step = {}
        for i, state in enumerate(states):
            by_step.setdefault(state["step"], []).append(i)
        beta1, beta2 = group["betas"]
        for step, chosen in by_step.items():
            chosen_states = [states[i] for i in chosen]
            vs = [s["exp_avg_sq"] for s in chosen_states]
            ops.adam_update([params[i].data for i in chosen], [params[i].grad for i in chosen],
                            [s["exp_avg"] for s in chosen_states], vs,
                            [s["max_exp_avg_sq"] for s in chosen_states] if group["amsgrad"] else vs,
                            group["lr"], beta1, beta2, group["eps"], group["weight_decay"], step,
                            self.decoupled_weight_decay, group["amsgrad"])


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as torch)."""
    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
