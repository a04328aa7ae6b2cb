"""The learning-rate range test (Leslie Smith's; fastai's lr_find): train for a few batches while the
rate grows exponentially from start_lr to end_lr, record the loss, and suggest the rate where the
smoothed loss falls fastest. The model, optimizer and generators are put back as they were.

    result = lr_find(model, loss_fn, optimizer, loader)
    print(result.suggestion); minicnn.plot.lr_finder(result, "lr-find.png")
"""
import math
from dataclasses import dataclass, field

import numpy as np

from . import random


@dataclass
class LRFinderResult:
    """lrs and losses (raw and smoothed) per batch tried; suggestion: a rate (None if the loss never fell)."""
    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    smoothed: list = field(default_factory=list)
    suggestion: float = None
    stopped_early: bool = False


def lr_find(model, loss_fn, optimizer, loader, start_lr=1e-7, end_lr=10.0, num_iter=100, smooth=0.05, diverge=4.0):
    """Args:
        start_lr, end_lr: the range, 0 < start_lr < end_lr.
        num_iter: batches to try (the loader is cycled if it has fewer).
        smooth: weight of the newest loss in the exponential moving average (bias-corrected).
        diverge: stop once the smoothed loss exceeds this many times its minimum (or is not finite).
    Returns: LRFinderResult. Every parameter, optimizer state and generator is restored afterwards.
    """
    if not 0 < start_lr < end_lr or not math.isfinite(end_lr):
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if int(num_iter) < 2:
        raise ValueError(f"lr_find: num_iter must be >= 2, got {num_iter}")
    saved = (model.state_dict(), optimizer.state_dict(), random.get_state(),
             loader.state_dict() if hasattr(loader, "state_dict") else None, model.training)
    result, average, best = LRFinderResult(), 0.0, math.inf
    try:
        model.train()
        batches = _cycle(loader)
        for i in range(int(num_iter)):
            lr = start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = next(batches)
            loss = float(loss_fn(model(x), y))
            optimizer.zero_grad()
            model.backward(loss_fn.backward())
            optimizer.step()
            average = smooth * loss + (1 - smooth) * average
            value = average / (1 - (1 - smooth) ** (i + 1))
            result.lrs.append(lr)
            result.losses.append(loss)
            result.smoothed.append(value)
            best = min(best, value)
            if not math.isfinite(value) or value > diverge * best:
                result.stopped_early = True
                break
    finally:
        state, opt_state, rng, loader_state, training = saved
        model.load_state_dict(state)
        optimizer.load_state_dict(opt_state)
        random.set_state(rng)
        if loader_state is not None:
            loader.load_state_dict(loader_state)
        model.train(training)
    result.suggestion = _steepest(result.lrs, result.smoothed)
    return result


def _steepest(lrs, smoothed):
    """The rate where the smoothed loss falls fastest against log(lr), ignoring the last points (where
    it blows up); None when it never falls."""
    keep = max(len(smoothed) - max(len(smoothed) // 10, 1), 2)
    if len(smoothed) < 3:
        return None
    slopes = np.gradient(np.asarray(smoothed[:keep]), np.log(np.asarray(lrs[:keep])))
    i = int(np.argmin(slopes))
    return float(lrs[i]) if slopes[i] < 0 else None


def _cycle(loader):
    while True:
        yield from loader
