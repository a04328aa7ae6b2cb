"""Weight initialization, following torch's defaults so that fresh models behave alike."""
import math

import numpy as np

from .. import random


def uniform(shape, bound, dtype=np.float32):
    """Samples U(-bound, bound) from minicnn's global generator (see minicnn.manual_seed)."""
    return random.get_rng().uniform(-bound, bound, size=shape).astype(dtype)


def default_bound(fan_in):
    """torch's default for Conv2d and Linear: kaiming_uniform(a=sqrt(5)) for the weight and
    the bias alike reduce to U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
