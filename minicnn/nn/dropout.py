"""Inverted dropout: in training, zero each element with probability p and scale the rest by
1/(1-p), so eval needs no rescaling; in eval, the identity. Shape: any -> same."""
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
        mask = backend.ops_for(x).dropout_mask(x.shape, self.p, x.dtype, rng)
        y = x * mask
        self.save_for_backward(y, mask=mask)
        return y

    def backward(self, dy):
        mask = self.saved(dy).mask
        return dy if mask is None else dy * mask

    def extra_repr(self):
        return f"p={self.p}"
