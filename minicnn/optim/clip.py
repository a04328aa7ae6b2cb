"""Gradient clipping, as torch.nn.utils.clip_grad_norm_ and clip_grad_value_: call between
``model.backward(...)`` and ``optimizer.step()`` (or give fit ``clip_grad_norm=``)."""
import math

from .. import backend


def _grads(parameters):
    if hasattr(parameters, "data") and hasattr(parameters, "grad"):          # one Parameter
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale every gradient by max_norm / (total_norm + 1e-6) when that is below 1, total_norm being
    the norm_type-norm of all gradients together (the norm of the per-parameter norms; 'inf': the
    largest magnitude). Returns total_norm as a float. error_if_nonfinite: raise on a NaN/inf norm
    instead of scaling by it."""
    grads = _grads(parameters)
    norm_type = float(norm_type)
    if not grads:
        return 0.0
    ops = backend.ops_for(grads[0])
    xp = ops.xp
    if math.isinf(norm_type):
        norms = xp.stack([xp.abs(g).max() if g.size else xp.zeros((), g.dtype) for g in grads])
        total = norms.max()
    else:
        norms = xp.stack([(xp.abs(g.ravel()) ** norm_type).sum() ** (1.0 / norm_type) for g in grads])
        total = (norms ** norm_type).sum() ** (1.0 / norm_type)
    total = float(total)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of the gradients is {total}; "
                           "pass error_if_nonfinite=False to scale by it anyway")
    coefficient = min(float(max_norm) / (total + 1e-6), 1.0)
    for g in grads:
        g *= g.dtype.type(coefficient)
    return total


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient entry into [-clip_value, clip_value], in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        backend.xp_for(g).clip(g, -clip_value, clip_value, out=g)
