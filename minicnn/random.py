"""One global random generator for initialization and dropout, seeded with manual_seed; and the
batch generator a DataLoader gives the random transforms of each batch it prepares."""
import threading

import numpy as np

_rng = np.random.default_rng()
_batch = threading.local()        # each loader worker thread prepares one batch at a time


def manual_seed(seed):
    """Seed minicnn's generator: the same seed gives the same initial weights and dropout masks."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def get_rng():
    return _rng


def get_state():
    """The generator's state as a JSON-friendly dict (for checkpoints)."""
    return _rng.bit_generator.state


def set_state(state):
    _rng.bit_generator.state = state


class batch_generator:
    """Context manager: inside it, random transforms on this thread draw from ``generator`` (the
    DataLoader's generator for one batch, derived from its seed, the epoch and the batch's number),
    so a batch is the same whichever thread prepares it and in whatever order."""

    def __init__(self, generator):
        self.generator = generator

    def __enter__(self):
        self.previous, _batch.generator = getattr(_batch, "generator", None), self.generator
        return self.generator

    def __exit__(self, *exc):
        _batch.generator = self.previous


def current_batch_generator():
    """The generator of the batch being prepared on this thread (None outside a DataLoader)."""
    return getattr(_batch, "generator", None)
