"""Optimizer base: parameter groups, per-parameter state, zero_grad and state dicts (torch layout).

A subclass implements ``_group_step(group, params, states)``, which updates a list of parameters of
one backend and dtype through one grouped op of the backend (ops.sgd_update, ops.adam_update): the
reference loops over the arrays, the GPU updates them all in one kernel launch.
"""
from .. import backend
from ..nn.module import Parameter


# Entries a learning-rate scheduler adds to a parameter group (torch's names), kept in its state dict
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


class Optimizer:
    """Base: param_groups (dicts of 'params' and hyper-parameters), per-parameter state, zero_grad(),
    step(), state_dict()/load_state_dict() in torch's layout. Subclasses give the update."""
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

    def zero_grad(self, set_to_none=True):
        """Forget every gradient: set to None (torch's default), or fill with zeros in place, which
        keeps each gradient at its address (what a captured CUDA graph needs)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad.fill(0)

    def step(self):
        """One update of every parameter that has a gradient, a group at a time."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for batch in _same_backend_and_dtype(params):
                self._group_step(group, batch, [self._state_of(p) for p in batch])

    def _state_of(self, p):
        """p's state, its arrays moved to p's device first if the model moved since (model.to)."""
        state = self.state.setdefault(p, {})
        for k, v in state.items():
            if backend.is_array(v):
                state[k] = backend.on_device_of(v, p.data)
        return state

    def _group_step(self, group, params, states):
        """Update params (a list of one backend and dtype) with the group's hyper-parameters through
        one of the backend's grouped ops (ops.sgd_update, ops.adam_update)."""
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
        """Restore hyper-parameters and state saved by state_dict(). Everything is checked before
        anything changes: ValueError, and this optimizer as it was, if the state was saved from a
        different set of parameters, by another kind of optimizer, or lacks an entry a step needs."""
        name = type(self).__name__
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if groups is None or "state" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and "
                             f"'param_groups', got {type(state_dict).__name__}")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"{name}.load_state_dict: the saved state has groups of sizes "
                             f"{[len(g['params']) for g in groups]}, this optimizer "
                             f"{[len(g['params']) for g in self.param_groups]}")
        saved_state = {int(k): v for k, v in state_dict["state"].items()}
        settings, new_state = [], {}
        for group, saved in zip(self.param_groups, groups):
            hyper = {k: v for k, v in saved.items() if k != "params" and k not in SCHEDULER_KEYS}
            if set(hyper) != set(self.defaults):
                raise ValueError(f"{name}.load_state_dict: the state was saved by another optimizer (hyper-parameters "
                                 f"{sorted(hyper)}; {name} has {sorted(self.defaults)})")
            settings.append({k: v for k, v in saved.items() if k != "params"})
            merged = {**group, **settings[-1]}
            for p, index in zip(group["params"], saved["params"]):
                if int(index) in saved_state:
                    state = self._restore(p, saved_state[int(index)], index)
                    lacking = self._state_keys(merged) - set(state)
                    if lacking:
                        raise ValueError(f"{name}.load_state_dict: the state of parameter {index} lacks "
                                         f"{sorted(lacking)} (saved by another optimizer?)")
                    new_state[p] = state
        for group, values in zip(self.param_groups, settings):
            group.update(values)
        self.state = new_state

    def _state_keys(self, group):
        """The state entries a parameter that has taken a step must have (subclasses say)."""
        return set()

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


def _same_backend_and_dtype(params):
    """params in runs that one grouped op can take: the same array type and dtype (normally one run)."""
    runs = {}
    for p in params:
        runs.setdefault((type(p.data), p.data.dtype, type(p.grad), p.grad.dtype), []).append(p)
    return list(runs.values())
