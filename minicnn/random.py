"""One global random generator for initialization and dropout, seeded with manual_seed."""
import numpy as np

_rng = np.random.default_rng()


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
