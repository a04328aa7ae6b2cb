"""Optimizer steps on the GPU: a whole list of parameters in one kernel launch (kernels/optim.cu).

The kernels read device tables: one pointer per array (parameters, gradients, state), the offsets
of each array in their virtual concatenation, and the hyper-parameters. Parameters, gradients and
state keep their addresses from step to step, so the tables are made once and cached by value
(never inside a CUDA-graph capture, where host-to-device copies are not allowed).

For a captured CUDA graph (cuda_graph.py) the hyper-parameters live in a buffer per update (keyed
by its parameters' addresses) that the graph reads; before each replay the graph step runs the
optimizer's step() inside only_hyper_parameters(), where these functions write this step's values
(a scheduler's learning rate, Adam's bias corrections) into those buffers and launch nothing.
"""
import contextlib
import math

import cupy as cp
import numpy as np

from .cupy_kernels import capturing, launch

_tables = {}           # (dtype, tuple of numbers) -> device array holding them
captured_tables = []   # the tables a capture in progress reads: its graph must keep them alive
_hyper_buffers = {}    # (kind, pointer table key) -> the buffer a captured graph reads hyper-parameters from
_only_hyper = False    # inside only_hyper_parameters()


def cached_table(values, dtype):
    """A cached device copy of a small tuple of numbers: pointer tables, offsets, hyper-parameters.
    The cache is emptied when it grows large (eager steps with fresh gradients make new tables); a
    captured graph holds on to its own tables (see captured_tables)."""
    key = (dtype, values)
    table = _tables.get(key)
    if table is None:
        if len(_tables) > 512:
            _tables.clear()
        table = _tables[key] = cp.asarray(np.array(values, dtype=dtype))
    if capturing():
        captured_tables.append(table)
    return table


@contextlib.contextmanager
def only_hyper_parameters():
    """Within: sgd_update and adam_update write their hyper-parameters for a graph replay, and
    launch nothing."""
    global _only_hyper
    previous, _only_hyper = _only_hyper, True
    try:
        yield
    finally:
        _only_hyper = previous


def _hyper(kind, key, values, dtype):
    """The device array of hyper-parameters the kernel reads: cached by value eagerly; the update's
    own buffer for a graph (written only outside the capture)."""
    if not (_only_hyper or capturing()):
        return cached_table(tuple(float(v) for v in values), dtype)
    buffer = _hyper_buffers.get((kind, key))
    if buffer is None or buffer.size != len(values) or buffer.dtype != dtype:
        if capturing():
            raise RuntimeError("minicnn: an optimizer update met its first CUDA-graph capture without the "
                               "hyper-parameter buffer the graph step prepares (only_hyper_parameters)")
        buffer = _hyper_buffers[(kind, key)] = cp.zeros(len(values), dtype=dtype)
    if _only_hyper:
        buffer[...] = cp.asarray(np.array(values, dtype=dtype))
    return buffer


def _group_tables(*lists):
    """(dtype, total size, offsets table, one pointer table per list, the first list's key). Arrays
    are checked when their tables are first made (a table seen before holds arrays that passed)."""
    first = lists[0]
    dtype = first[0].dtype
    keys = [tuple(a.data.ptr for a in arrays) for arrays in lists]
    if any((np.uint64, key) not in _tables for key in keys):
        for arrays in lists:
            for a in arrays:
                if a.dtype != dtype or not a.flags.c_contiguous:
                    raise ValueError("minicnn fused optimizer: parameters, gradients and state must be contiguous "
                                     f"arrays of one dtype, got {a.dtype} (contiguous={a.flags.c_contiguous})")
    sizes = [0]
    for a in first:
        sizes.append(sizes[-1] + a.size)
    tables = [cached_table(key, np.uint64) for key in keys]
    return dtype, sizes[-1], cached_table(tuple(sizes), np.int64), tables, keys[0]


def sgd_update(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
    """numpy_ops.sgd_update for every array in one launch (optim.cu's sgd_multi); bufs may be params
    again without momentum (never read then)."""
    dtype, total, offsets, (p, g, b), key = _group_tables(params, grads, bufs)
    hyper = _hyper(("sgd", bool(first)), key, (lr, momentum, dampening, weight_decay), dtype)
    if _only_hyper:
        return
    launch("optim.cu", "sgd_multi", dtype, total,
           (p, g, b, offsets, np.int32(len(params)), hyper, np.int32(bool(nesterov)), np.int32(bool(first))))


def adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2, eps, weight_decay,
                step, decoupled, amsgrad):
    """numpy_ops.adam_update for every array in one launch (optim.cu's adam_multi); max_exp_avg_sqs
    may be exp_avg_sqs again without amsgrad (never read then)."""
    dtype, total, offsets, (p, g, m, v, vmax), key = _group_tables(params, grads, exp_avgs, exp_avg_sqs,
                                                                   max_exp_avg_sqs)
    values = (lr, beta1, beta2, eps, weight_decay, lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step))
    hyper = _hyper("adam", key, values, dtype)
    if _only_hyper:
        return
    launch("optim.cu", "adam_multi", dtype, total,
           (p, g, m, v, vmax, offsets, np.int32(len(params)), hyper, np.int32(bool(decoupled)), np.int32(bool(amsgrad))))
