"""Stochastic gradient descent with momentum, dampening, weight decay and Nesterov, with
torch.optim.SGD's update, in the same order of operations:

    g = grad + weight_decay * p
    buf = g                                  (first step)
    buf = momentum * buf + (1 - dampening) * g
    g = g + momentum * buf  (nesterov)   or   g = buf
    p = p - lr * g
"""
from .. import backend
from .optimizer import Optimizer


class SGD(Optimizer):
    """Args: params (or parameter groups), lr, momentum, dampening, weight_decay, nesterov, as torch."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if momentum < 0:
            raise ValueError(f"SGD: invalid momentum {momentum} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _state_keys(self, group):
        return {"momentum_buffer"} if group["momentum"] else set()

    def _group_step(self, group, params, states):
        """Parameters whose momentum buffer starts now (it becomes their gradient) go in a second
        call with first=True."""
        ops = backend.ops_for(params[0].data)
        hyper = (group["lr"], group["momentum"], group["dampening"], group["weight_decay"], group["nesterov"])
        if not group["momentum"]:
            datas = [p.data for p in params]
            ops.sgd_update(datas, [p.grad for p in params], datas, *hyper, False)     # no buffers to read
            return
        starting = ["momentum_buffer" not in state for state in states]
        for p, state, start in zip(params, states, starting):
            if start:
                state["momentum_buffer"] = ops.xp.empty_like(p.data)
        for first in (False, True):
            chosen = [i for i, start in enumerate(starting) if start == first]
            if chosen:
                ops.sgd_update([params[i].data for i in chosen], [params[i].grad for i in chosen],
                               [states[i]["momentum_buffer"] for i in chosen], *hyper, first)
