"""Optimizer base: parameter groups, per-parameter state, zero_grad and state dicts (torch layout).

A subclass implements ``_update(p, grad, group, state)`` for one parameter; ``step`` calls it for
every parameter that has a gradient.
"""

from .. import backend
from ..nn.module import Parameter


class Optimizer:
    def __init__(self, params, defaults):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = dict(defaults)
        self.param_groups = []
        for group in groups:
            group = {**self.defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{type(self).__name__}: expected minicnn Parameters, got {type(p).__name__}")
            self._validate(group)
            self.param_groups.append(group)
        self.state = {}                       # Parameter -> dict of arrays and counters

    def _validate(self, group):
        if group["lr"] < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {group['lr']} (must be >= 0)")
        if group.get("weight_decay", 0) < 0:
            raise ValueError(f"{type(self).__name__}: invalid weight_decay {group['weight_decay']} (must be >= 0)")

    def zero_grad(self):
        """Forget every gradient (set to None, torch's default)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group, self.state.setdefault(p, {}))

    def _update(self, p, grad, group, state):
        raise NotImplementedError

    # ------------------------------------------------------------ state dicts

    def state_dict(self):
        """{'state': {index: {name: value}}, 'param_groups': [{..., 'params': [index, ...]}]},
        indices counting parameters across groups in order, as torch does."""
        index, state, groups = 0, {}, []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                if p in self.state:
                    state[index] = {k: (v.copy() if backend.is_array(v) else v) for k, v in self.state[p].items()}
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by state_dict(); raises ValueError if it was
        saved from a different set of parameters."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if groups is None or "state" not in state_dict:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with 'state' and "
                             f"'param_groups', got {type(state_dict).__name__}")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved state has groups of sizes "
                             f"{[len(g['params']) for g in groups]}, this optimizer "
                             f"{[len(g['params']) for g in self.param_groups]}")
        saved_state = {int(k): v for k, v in state_dict["state"].items()}
        self.state = {}
        for group, saved in zip(self.param_groups, groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
            for p, index in zip(group["params"], saved["params"]):
                if int(index) in saved_state:
                    self.state[p] = self._restore(p, saved_state[int(index)], index)

    def _restore(self, p, saved, index):
        xp, state = backend.xp_for(p.data), {}
        for k, v in saved.items():
            if backend.is_array(v) and v.ndim > 0:
                if v.shape != p.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: state {k!r} of parameter {index} "
                                     f"has shape {v.shape}, the parameter {p.shape}")
                v = xp.asarray(v, dtype=p.dtype).copy()
            elif backend.is_array(v):
                v = v.item()
            state[k] = v
        return state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines + [")"])
