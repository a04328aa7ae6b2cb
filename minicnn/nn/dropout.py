"""Inverted dropout: in training, zero each element with probability p and scale the rest by
1/(1-p), so eval needs no rescaling; in eval, the identity. Shape: any -> same.

The mask is drawn from minicnn's global generator (or the layer's own, with seed=): on the CPU
from it directly; on the GPU from a generator in device memory seeded once from it, so that a
captured CUDA graph draws anew on each replay. Seeded runs are reproducible on each device (the
masks differ between devices)."""
import numpy as np

from .. import backend, random
from ._checks import check_float_array, check_input
from .module import Module


class Dropout(Module):
    """Args:
        p: probability of zeroing an element, in [0, 1).
        inplace: accepted (torch's flag); minicnn never overwrites an input, the result is the same.
        seed: an own random generator for this layer; by default the global one
            (minicnn.manual_seed), so a seeded run is reproducible either way.
    """

    def __init__(self, p=0.5, inplace=False, seed=None):
        super().__init__()
        self.inplace = bool(inplace)                     # torch's flag: the result is the same either way
        if not 0 <= p < 1:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1), got {p}")
        self.p = float(p)
        self._rng = None if seed is None else np.random.default_rng(seed)
        self._backend_state = {}               # where a backend keeps generator state between calls

    def forward(self, x):
        self._check(x)
        if not self.training or self.p == 0:
            self.save_for_backward(x, record=None)
            return x
        y, record = self._drop(backend.ops_for(x), x, self._rng or random.get_rng())
        self.save_for_backward(y, record=record)
        return y

    def _check(self, x):
        check_float_array(self, x)

    def _drop(self, ops, x, rng):
        """(y, record): x with the mask drawn from rng applied."""
        return ops.dropout_forward(x, self.p, rng, self._backend_state)

    def backward(self, dy):
        record = self.saved(dy).record
        return dy if record is None else backend.ops_for(dy).dropout_backward(dy, record)

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Channel dropout, as torch.nn.Dropout2d: in training each channel of each sample is zeroed
    whole with probability p (neighbouring pixels are correlated, so dropping single ones regularizes
    little), the others scaled by 1/(1-p); in eval, the identity. Args as Dropout's.
    Shape: (N, C, H, W) -> the same."""

    def _check(self, x):
        check_input(self, x, "(N, C, H, W)", 4)

    def _drop(self, ops, x, rng):
        return ops.channel_dropout_forward(x, self.p, rng, self._backend_state)
