"""Inverted dropout: in training, zero each element with probability p and scale the rest by
1/(1-p), so eval needs no rescaling; in eval, the identity. Shape: any -> same.

On the CPU the mask comes from minicnn's NumPy generator; on the GPU from a counter-based
generator in device memory (kernels/dropout.cu), seeded once from that same generator, so
seeded runs are reproducible on each device (the masks differ between devices)."""
import numpy as np

from .. import backend, random
from ._checks import check_float_array
from .module import Module


class Dropout(Module):
    """Args:
        p: probability of zeroing an element, in [0, 1).
        seed: an own random generator for this layer; by default the global one
            (minicnn.manual_seed), so a seeded run is reproducible either way.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self._rng = None if seed is None else np.random.default_rng(seed)

    def forward(self, x):
        check_float_array(self, x)
        if not self.training or self.p == 0:
            self.save_for_backward(x, mask=None)
            return x
        rng = self._rng or random.get_rng()
        if backend.is_cupy_array(x):       # drawn on the GPU, so a captured CUDA graph draws anew each replay
            if self.__dict__.get("_gpu_state") is None:
                object.__setattr__(self, "_gpu_state", backend.ops_for(x).new_rng_state(int(rng.integers(2**63))))
            y, mask = backend.ops_for(x).dropout_forward(x, self.p, self._gpu_state)
        else:
            mask = backend.ops_for(x).dropout_mask(x.shape, self.p, x.dtype, rng)
            y = x * mask
        self.save_for_backward(y, mask=mask)
        return y

    def backward(self, dy):
        mask = self.saved(dy).mask
        return dy if mask is None else dy * mask

    def extra_repr(self):
        return f"p={self.p}"
