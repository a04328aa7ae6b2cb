"""The Numba backend: the contract's ops (backend/contract.py) as Numba-compiled CPU kernels, each
from the module of its concept; an op with nothing faster here is NumPy's (numpy_ops).

Each kernel is a plain single-threaded loop nest compiled by Numba. The cores are used by cutting a
layer's work into tasks (a chunk of samples each) that run on minicnn's own threads (backend.cores),
with NumPy's BLAS held to one thread inside them. How work is cut depends on the shapes alone and
partial sums are added in task order, so results are the same bits on any number of threads.
Every choice of algorithm and budget is in numba_strategy.

    numba_im2col        matmul on the cores, im2col and col2im (strided convolutions)
    numba_conv          the convolutions: which algorithm (numba_strategy), the direct sums and the
                        wide GEMM, numba_winograd, numba_relu_pool (the fused epilogue), numba_sparse,
                        numba_depthwise
    numba_pool          max and average pooling
    numba_norm          batch normalization (and batch norm with the ReLU after it, fused)
    numba_elementwise   ReLU, the hard activations, sums, softmax cross-entropy, the SGD step
"""
import sys as _sys

import numpy as _np

from . import cores as _cores
from . import host_memory as _host_memory
from . import numba_strategy as _strategy
from . import numpy_ops as _reference
from .numba_conv import (conv2d_backward, conv2d_forward, conv2d_relu_maxpool2d_backward,  # noqa: F401
                         conv2d_relu_maxpool2d_forward)
from .numba_conv import fused_batchnorm_eval as _fused_batchnorm_eval
from .numba_elementwise import (add, add_relu_forward, hardsigmoid_backward, hardsigmoid_forward,  # noqa: F401
                                hardswish_backward, hardswish_forward, hardtanh_backward, hardtanh_forward,
                                relu_backward, relu_forward, sgd_update, softmax_cross_entropy_forward)
from .numba_im2col import col2im, im2col, matmul  # noqa: F401
from .numba_norm import (batchnorm_add_relu_backward_train, batchnorm_add_relu_forward_train,  # noqa: F401
                         batchnorm_backward_train, batchnorm_forward_eval, batchnorm_forward_train,
                         batchnorm_relu_backward_train, batchnorm_relu_forward_train)
from .numba_norm import normalize_eval_in_place as _normalize_eval_in_place
from .numba_pool import (adaptive_avgpool2d_backward, adaptive_avgpool2d_forward, avgpool2d_backward,  # noqa: F401
                         maxpool2d_backward, maxpool2d_forward)

_host_memory.keep_freed_memory()             # activations freed by one pass are reused by the next

name = "numba"
xp = _reference.xp
host_read_interval = 1

# NumPy's own is as fast here (few passes over small arrays, or nothing to gain from a loop)
avgpool2d_forward = _reference.avgpool2d_forward
adaptive_maxpool2d_forward = _reference.adaptive_maxpool2d_forward
adaptive_maxpool2d_backward = _reference.adaptive_maxpool2d_backward
batchnorm_backward_eval = _reference.batchnorm_backward_eval
group_norm_forward = _reference.group_norm_forward
group_norm_backward = _reference.group_norm_backward
leaky_relu_forward = _reference.leaky_relu_forward
leaky_relu_backward = _reference.leaky_relu_backward
sigmoid_forward = _reference.sigmoid_forward
sigmoid_backward = _reference.sigmoid_backward
tanh_forward = _reference.tanh_forward
tanh_backward = _reference.tanh_backward
silu_forward = _reference.silu_forward
silu_backward = _reference.silu_backward
gelu_forward = _reference.gelu_forward
gelu_backward = _reference.gelu_backward
scale_channels = _reference.scale_channels
scale_channels_backward = _reference.scale_channels_backward
dropout_forward = _reference.dropout_forward
dropout_backward = _reference.dropout_backward
channel_dropout_forward = _reference.channel_dropout_forward
log_softmax = _reference.log_softmax
softmax_forward = _reference.softmax_forward
softmax_backward = _reference.softmax_backward
log_softmax_forward = _reference.log_softmax_forward
log_softmax_backward = _reference.log_softmax_backward
nll_loss_forward = _reference.nll_loss_forward
nll_loss_backward = _reference.nll_loss_backward
softmax_cross_entropy_backward = _reference.softmax_cross_entropy_backward
raise_pending_errors = _reference.raise_pending_errors
settle = _cores.settle
adam_update = _reference.adam_update
captured_step = _reference.captured_step


def conv2d_batchnorm_eval(x, w, b, stride, padding, dilation, groups, mean, var, eps, gamma, beta, relu, residual):
    """As numpy_ops: in one run where the convolution goes by the blocked sums (they normalize, add
    the residual and rectify as they crop) or is 1x1 without a residual (each task normalizes its
    samples' output), otherwise the convolution, then one pass that normalizes and rectifies its
    output in place (then the residual's sum and the ReLU as numpy_ops adds them)."""
    _reference._check_residual(residual, x, w, stride, padding, dilation)
    y = _fused_batchnorm_eval(x, w, b, stride, padding, dilation, groups, mean, var, eps, gamma, beta, relu,
                              residual)
    if y is not None:
        return y
    y = _np.ascontiguousarray(conv2d_forward(x, w, b, stride, padding, dilation, groups)[0])
    N, OC, OH, OW = y.shape
    _normalize_eval_in_place(y.reshape(N, OC, OH * OW), mean, var, eps, gamma, beta, relu and residual is None)
    return y if residual is None else _reference._sum_and_relu(_sys.modules[__name__], y, residual, relu)


_fused_steps = {}           # (kinds, strategy) -> the steps of plan_chain


def plan_chain(kinds):
    """NumPy's plan (a ReLU after its max pool, inference in chunks), and where numba_strategy
    says so: every stride-1 convolution followed by ReLU and a 2x2 max pool (in either order) as one
    conv2d_relu_maxpool2d step, every other convolution followed by a batch norm (and a ReLU) as one
    conv2d_batchnorm step, every other batch norm followed by a ReLU as one batchnorm_relu step.
    The steps are remembered for each kinds and strategy."""
    plan = _reference.plan_chain(kinds)
    key = (kinds, _strategy.current())
    steps = _fused_steps.get(key)
    if steps is None:
        if len(_fused_steps) > 256:
            _fused_steps.clear()
        steps = _fused_steps[key] = _fuse(kinds, [indices[0] for _, indices in plan.steps])
    return _reference.ChainPlan(steps, plan.inference_chunk)


def _fuse(kinds, flat):
    """The steps over the layer indices flat (the reference plan's order: it fuses nothing)."""
    steps, done = [], 0
    while done < len(flat):
        run = flat[done:done + 3]
        if len(run) == 3:
            conv, a, b = (kinds[i] for i in run)
            relu, pool = (a, b) if a == ("relu",) else (b, a)
            if _strategy.fuses(conv, relu, pool):
                steps.append(("conv2d_relu_maxpool2d", tuple(run)))
                done += 3
                continue
        if len(run) >= 2 and _strategy.fuses_conv_batchnorm(kinds[run[0]], kinds[run[1]]):
            relu = len(run) == 3 and _strategy.fuses_batchnorm_relu(kinds[run[1]], kinds[run[2]])
            steps.append(("conv2d_batchnorm", tuple(run[:3 if relu else 2])))
            done += 3 if relu else 2
            continue
        if len(run) >= 2 and _strategy.fuses_batchnorm_relu(kinds[run[0]], kinds[run[1]]):
            steps.append(("batchnorm_relu", tuple(run[:2])))
            done += 2
            continue
        steps.append((None, (flat[done],)))
        done += 1
    return tuple(steps)


def pass_scope():
    """NumPy's BLAS held to one thread for a whole pass (minicnn's threads share the cores), instead
    of switched for each of the ~25 products of a step and back."""
    return _cores.one_blas_thread()
