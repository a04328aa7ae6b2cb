"""Batch normalization with torch's exact semantics.

Training: normalize with the batch's mean and biased variance over every axis but the channel;
update running_mean and running_var (the latter with the *unbiased* variance) with
    running = (1 - momentum) * running + momentum * batch_statistic
(momentum=None: a cumulative average). Eval: normalize with the running statistics.
Both layers view their input as x3 (N, C, L): L = H*W for BatchNorm2d, 1 for BatchNorm1d (N, C)
and L for BatchNorm1d (N, C, L).
"""
import math

import numpy as np

from .. import backend
from ._checks import check_input, count
from .module import Module, Parameter, is_grad_enabled, place_on


class _BatchNorm(Module):
    _ndims = ()
    _shape_desc = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=np.float32):
        super().__init__()
        name = f"{type(self).__name__}({num_features})"
        self.num_features = count(num_features, "num_features", name)
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum}")
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        place_on(self, device)

    def _params(self, ops, dtype):
        if self.affine:
            return self.weight.data, self.bias.data
        return ops.xp.ones(self.num_features, dtype=dtype), ops.xp.zeros(self.num_features, dtype=dtype)

    @property
    def kind(self):
        """('batchnorm',) for a backend's chain plan (None for subclasses)."""
        return ("batchnorm",) if type(self) in (BatchNorm1d, BatchNorm2d) else None

    @property
    def uses_batch_statistics(self):
        """Whether forward normalizes by the batch's own statistics (training, or no running ones)."""
        return self.training or not self.track_running_stats

    def forward(self, x):
        y, record = self.normalize(x)
        self.save_for_backward(y, record=record, batch_stats=self.uses_batch_statistics)
        return y

    def backward(self, dy):
        s = self.saved(dy)
        return self.backpropagate(dy, s.record, s.batch_stats)

    def normalize(self, x, relu=False, residual=None):
        """(y, record): x normalized (and rectified, with relu: the backend's batchnorm_relu op, for
        batch statistics only), the running statistics updated in training. With residual (an array
        of x's shape, batch statistics only) y = relu(normalized x + residual), or the sum without
        relu: a residual block's last steps as one op (backpropagate with summed=True)."""
        check_input(self, x, self._shape_desc, self._ndims, self.num_features,
                    params_dtype=self.weight.dtype if self.affine else None)
        ops = backend.ops_for(x)
        x3 = x.reshape(x.shape[0], self.num_features, math.prod(x.shape[2:]))
        gamma, beta = self._params(ops, x.dtype)
        if self.uses_batch_statistics:
            M = x3.shape[0] * x3.shape[2]
            if M < 2:
                raise ValueError(f"{self!r}: expected more than 1 value per channel when training, "
                                 f"got input {tuple(x.shape)}")
            if residual is not None:
                if tuple(residual.shape) != tuple(x.shape):
                    raise ValueError(f"{self!r}: the residual to add must have the input's shape {tuple(x.shape)}, "
                                     f"got {tuple(residual.shape)}")
                y3, mean, var, record = ops.batchnorm_add_relu_forward_train(x3, gamma, beta, self.eps,
                                                                            residual.reshape(x3.shape), relu)
            else:
                op = ops.batchnorm_relu_forward_train if relu else ops.batchnorm_forward_train
                y3, mean, var, record = op(x3, gamma, beta, self.eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var * (M / (M - 1)))
        else:
            if relu or residual is not None:
                raise ValueError(f"{self!r}: the fused ReLU and sum are for batch statistics only")
            y3, record = ops.batchnorm_forward_eval(x3, self.running_mean, self.running_var, self.eps, gamma, beta,
                                                    keep_record=is_grad_enabled())
        return y3.reshape(x.shape), record

    def _update_running_stats(self, mean, unbiased_var):
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean *= 1 - m
        self.running_mean += m * mean
        self.running_var *= 1 - m
        self.running_var += m * unbiased_var

    def backpropagate(self, dy, record, batch_stats, relu=False, summed=False):
        """dx for normalize's record, the parameters' gradients added into .grad; with summed (the
        record of a normalize with a residual), (dx, the sum's gradient: what the residual gets)."""
        ops = backend.ops_for(dy)
        dy3 = dy.reshape(dy.shape[0], self.num_features, math.prod(dy.shape[2:]))
        gamma, _ = self._params(ops, dy.dtype)
        dsum3 = None
        if summed:
            dx3, dgamma, dbeta, dsum3 = ops.batchnorm_add_relu_backward_train(dy3, record, gamma)
        elif relu:
            dx3, dgamma, dbeta = ops.batchnorm_relu_backward_train(dy3, record, gamma)
        elif batch_stats:
            dx3, dgamma, dbeta = ops.batchnorm_backward_train(dy3, record, gamma)
        else:             # running statistics are constants: the layer is affine in x
            dx3, dgamma, dbeta = ops.batchnorm_backward_eval(dy3, record, gamma)
        if self.affine:
            self.weight.accumulate_grad(dgamma, owned=True)
            self.bias.accumulate_grad(dbeta, owned=True)
        if summed:
            return dx3.reshape(dy.shape), dsum3.reshape(dy.shape)
        return dx3.reshape(dy.shape)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Per-channel batch normalization of images. Shape: (N, C, H, W) -> same."""
    _ndims = (4,)
    _shape_desc = "(N, C, H, W) with C = num_features"


class BatchNorm1d(_BatchNorm):
    """Per-feature batch normalization. Shape: (N, C) or (N, C, L) -> same."""
    _ndims = (2, 3)
    _shape_desc = "(N, C) or (N, C, L) with C = num_features"
