"""Optimizer base: parameter groups, per-parameter state, zero_grad and state dicts (torch layout).

A subclass implements ``_update(p, grad, group, state)`` for one parameter; ``step`` calls it for
every parameter that has a gradient. On the GPU a subclass may also implement
``_gpu_group_step(group, params, states)``, which updates a whole group with one fused kernel
(kernels/optim.cu); its hyper-parameters come from ``_hyper_values(group, params, states)`` so
that a CUDA-graph replay can recompute and upload them (``prepare_replay``).
"""
import numpy as np

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
        for group in self.param_groups:
            params = _with_grad(group)
            states = [self._state_on_device(p) for p in params]
            if params and self._can_fuse_on_gpu(params):
                self._gpu_group_step(group, params, states)
                continue
            for p, state in zip(params, states):
                self._update(p, p.grad, group, state)

    def _state_on_device(self, p):
        """p's state, its arrays moved to p's device first if the model moved since (model.to)."""
        state = self.state.setdefault(p, {})
        on_gpu = backend.is_cupy_array(p.data)
        for k, v in state.items():
            if backend.is_array(v) and backend.is_cupy_array(v) != on_gpu:
                state[k] = backend.device_converter("cuda" if on_gpu else "cpu")(v)
        return state

    def _can_fuse_on_gpu(self, params):
        if not hasattr(self, "_gpu_group_step") or not backend.is_cupy_array(params[0].data):
            return False
        dtype = params[0].data.dtype          # contiguity is checked where the kernel's tables are made
        return all(backend.is_cupy_array(p.data) and p.data.dtype == dtype and p.grad.dtype == dtype for p in params)

    def _hyper(self, group, values, dtype):
        """The group's hyper-parameters as a device array for the fused kernels. Eagerly: a
        device copy cached by value (no copy at all while they stay the same). While a CUDA
        graph is captured: the group's own buffer, which prepare_replay rewrites before each
        replay."""
        from ..backend import cupy_ops
        if cupy_ops.capturing():
            return self._graph_hyper_buffer(group, len(values), dtype)
        return cupy_ops.cached_table(tuple(float(v) for v in values), dtype)

    def _graph_hyper_buffer(self, group, n, dtype):
        import cupy
        buffers = self.__dict__.setdefault("_graph_hyper", {})
        key = id(group)
        if key not in buffers or buffers[key].size != n or buffers[key].dtype != dtype:
            buffers[key] = cupy.zeros(n, dtype=dtype)
        return buffers[key]

    def prepare_replay(self):
        """Host side of one step for a replayed CUDA graph: advance step counters and write
        this step's hyper-parameters into the buffers the captured kernels read."""
        import cupy
        for group in self.param_groups:
            params = _with_grad(group)
            if params:
                states = [self.state[p] for p in params]
                values = self._hyper_values(group, params, states)
                buffer = self._graph_hyper_buffer(group, len(values), params[0].data.dtype)
                buffer[...] = cupy.asarray(np.array(values, dtype=buffer.dtype))

    def host_state(self):
        """The non-array part of the state (step counters): a capture must not advance it."""
        return {p: {k: v for k, v in st.items() if not backend.is_array(v)} for p, st in self.state.items()}

    def restore_host_state(self, saved):
        for p, values in saved.items():
            self.state[p].update(values)

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


def _with_grad(group):
    """The group's parameters that have a gradient to apply."""
    return [p for p in group["params"] if p.grad is not None]
