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
    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if momentum < 0:
            raise ValueError(f"SGD: invalid momentum {momentum} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _hyper_values(self, group, params, states):
        return (group["lr"], group["momentum"], group["dampening"], group["weight_decay"])

    def _gpu_group_step(self, group, params, states):
        """The group in one launch (kernels/optim.cu, sgd_multi); parameters whose momentum
        buffer starts now get a second launch with first=1."""
        from ..backend import cupy_ops
        hyper = self._hyper(group, self._hyper_values(group, params, states), params[0].data.dtype)
        if not group["momentum"]:
            datas = [p.data for p in params]
            cupy_ops.sgd_multi(datas, [p.grad for p in params], datas, hyper, False, False)
            return
        starting = [("momentum_buffer" not in state) for state in states]
        for p, state, start in zip(params, states, starting):
            if start:
                state["momentum_buffer"] = backend.xp_for(p.data).empty_like(p.data)
        for first in (False, True):
            chosen = [i for i, s in enumerate(starting) if s == first]
            if chosen:
                cupy_ops.sgd_multi([params[i].data for i in chosen], [params[i].grad for i in chosen],
                                   [states[i]["momentum_buffer"] for i in chosen], hyper, group["nesterov"], first)

    def _update(self, p, grad, group, state):
        momentum, wd = group["momentum"], group["weight_decay"]
        fused = getattr(backend.ops_for(p.data), "sgd_step", None)
        if fused is not None and p.data.flags.c_contiguous:      # the same steps in one pass (Numba)
            first = momentum and "momentum_buffer" not in state
            if first:
                state["momentum_buffer"] = backend.xp_for(p.data).empty_like(p.data)
            buf = state.get("momentum_buffer", p.data)            # unused without momentum
            fused(p.data, grad, buf, group["lr"], momentum, group["dampening"], wd, group["nesterov"], first)
            return
        if wd:
            grad = grad + wd * p.data
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * grad
