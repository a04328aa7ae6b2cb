"""SyncBatchNorm: batch normalization whose batch is the union of every rank's batch.

Training: the mean, then the variance, are sums over all ranks' values (two all-reduces of C
numbers: the mean first, so the variance is the exact two-pass one); backward reduces the two sums
it needs, of dy and of dy * xhat, so that R ranks at batch B/R give what one process at batch B
gives. Eval: the running statistics, as BatchNorm. Shapes as BatchNorm1d/2d.
"""
import math

import numpy as np

from .. import backend
from ..nn._checks import check_input
from ..nn.batchnorm import BatchNorm1d, BatchNorm2d, _BatchNorm
from ..nn.module import is_grad_enabled


class SyncBatchNorm(_BatchNorm):
    """Args: as BatchNorm2d, and world (a World). Accepts (N, C), (N, C, L) and (N, C, H, W)."""
    _ndims = (2, 3, 4)
    _shape_desc = "(N, C), (N, C, L) or (N, C, H, W) with C = num_features"

    def __init__(self, num_features, world, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype=dtype)
        object.__setattr__(self, "world", world)

    def forward(self, x):
        if not self.uses_batch_statistics:
            return super().forward(x)
        check_input(self, x, self._shape_desc, self._ndims, self.num_features,
                    params_dtype=self.weight.dtype if self.affine else None)
        xp = backend.ops_for(x).xp
        x3 = x.reshape(x.shape[0], self.num_features, math.prod(x.shape[2:]))
        count = self.world.sum_numbers(x3.shape[0] * x3.shape[2])[0]
        if count < 2:
            raise ValueError(f"{self!r}: expected more than 1 value per channel over all ranks when training")
        mean = self.world.sum(x3.sum(axis=(0, 2)), "SyncBatchNorm's mean") / x3.dtype.type(count)
        centered = x3 - mean[None, :, None]
        var = self.world.sum((centered * centered).sum(axis=(0, 2)), "SyncBatchNorm's variance") / x3.dtype.type(count)
        invstd = 1 / xp.sqrt(var + x3.dtype.type(self.eps))
        xhat = centered * invstd[None, :, None]
        gamma, beta = self._params(backend.ops_for(x), x.dtype)
        y3 = xhat * gamma[None, :, None] + beta[None, :, None]
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var * x3.dtype.type(count / (count - 1)))
        if is_grad_enabled():
            self.save_for_backward(y3.reshape(x.shape), xhat=xhat, invstd=invstd, count=count, synced=True)
        return y3.reshape(x.shape)

    def backward(self, dy):
        pending = self.__dict__.get("_saved")
        if pending is None or not getattr(pending, "synced", False):     # eval mode: BatchNorm's backward
            return super().backward(dy)
        s = self.saved(dy)
        dy3 = dy.reshape(dy.shape[0], self.num_features, math.prod(dy.shape[2:]))
        gamma, _ = self._params(backend.ops_for(dy), dy.dtype)
        local_dbeta = dy3.sum(axis=(0, 2))
        local_dgamma = (dy3 * s.xhat).sum(axis=(0, 2))
        total_dy = self.world.sum(local_dbeta, "SyncBatchNorm's backward") / dy3.dtype.type(s.count)
        total_dy_xhat = self.world.sum(local_dgamma, "SyncBatchNorm's backward") / dy3.dtype.type(s.count)
        dx3 = (gamma * s.invstd)[None, :, None] * (dy3 - total_dy[None, :, None] - s.xhat * total_dy_xhat[None, :, None])
        if self.affine:
            self.weight.accumulate_grad(local_dgamma, owned=True)      # averaged over the ranks with the others
            self.bias.accumulate_grad(local_dbeta, owned=True)
        return dx3.reshape(dy.shape)


def convert_sync_batchnorm(module, world):
    """The module with every BatchNorm1d/2d inside it replaced by a SyncBatchNorm holding the same
    parameters and running statistics (as torch.nn.SyncBatchNorm.convert_sync_batchnorm)."""
    if isinstance(module, (BatchNorm1d, BatchNorm2d)):
        dtype = module.weight.dtype if module.affine else \
            module.running_mean.dtype if module.track_running_stats else np.float32
        sync = SyncBatchNorm(module.num_features, world, module.eps, module.momentum, module.affine,
                             module.track_running_stats, dtype=dtype)
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        return sync
    for name, child in list(module._modules.items()):
        converted = convert_sync_batchnorm(child, world)
        if converted is not child:
            setattr(module, name, converted)
    return module

