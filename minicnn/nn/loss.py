"""Classification losses against integer labels, as torch.nn's: CrossEntropyLoss of raw logits and
NLLLoss of log-probabilities. For the cross-entropy:

    logits (N, K), labels (N,) integers in [0, K)
    loss_i = -log softmax(logits_i)[labels_i]   (with smoothing e: target (1-e)*onehot + e/K)
    dL/dlogits = (softmax(logits) - target) / N  for reduction='mean'
The softmax is shifted by each row's maximum, so logits of 1e4 neither overflow nor give NaN.
"""
import numpy as np

from .. import backend
from ._checks import check_float_array, describe
from .module import Module

REDUCTIONS = ("mean", "sum", "none")


class LossValue(np.ndarray):
    """A loss as a NumPy array (0-d for a mean or a sum): float(loss), loss.item(), arithmetic, printing
    all work as on any array. loss.backward() (torch's habit) explains how backward works here."""

    def backward(self, *args, **kwargs):
        raise RuntimeError("minicnn has no autograd graph, so a loss value cannot run backward itself: "
                           "call model.backward(loss_fn.backward()) - loss_fn.backward() gives dL/dlogits, "
                           "model.backward(...) sends it back through the layers and fills every parameter's .grad "
                           "(optimizer.zero_grad() first, optimizer.step() after, as in torch)")


def _loss_value(loss):
    """A NumPy loss as a LossValue (the GPU's stay CuPy arrays)."""
    return np.asarray(loss).view(LossValue) if isinstance(loss, (np.ndarray, np.generic)) else loss


class _LabelLoss(Module):
    """What CrossEntropyLoss and NLLLoss share: scores (N, K) against integer labels (N,), reduced by
    'mean', 'sum' or 'none'; backward() gives dL/dscores, scaled by the reduction (and by dloss)."""

    def __init__(self, reduction, ignore_index):
        super().__init__()
        name = type(self).__name__
        self.ignore_index = ignore_index               # no label is ever ignored: one out of range is an error
        if reduction not in REDUCTIONS:
            raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, scores, labels):
        check_float_array(self, scores, what=self.scores_are)
        if scores.ndim != 2:
            raise ValueError(f"{self!r}: expected {self.scores_are} (N, K), got {tuple(scores.shape)}")
        N, K = scores.shape
        if not backend.is_array(labels) or labels.dtype.kind not in "iu":
            raise TypeError(f"{self!r}: expected integer class labels (N,), got {describe(labels)}")
        if labels.shape != (N,):
            raise ValueError(f"{self!r}: expected labels of shape ({N},) to match {self.scores_are} "
                             f"{tuple(scores.shape)}, got {tuple(labels.shape)}")
        ops = backend.ops_for(scores)
        try:
            losses, record = self._losses(ops, scores, labels)
        except ValueError as err:               # a label out of range (the GPU's cross-entropy tells one call later)
            raise ValueError(f"{self!r}: {err}") from None
        if self.reduction == "mean":             # of no samples: NaN, as torch (without NumPy's warning)
            loss = losses.mean() if N else ops.xp.asarray(float("nan"), dtype=scores.dtype)
        elif self.reduction == "sum":
            loss = losses.sum()
        else:
            loss = losses
        self.save_for_backward(loss, record=record, n=N, ops=ops)
        return _loss_value(loss)

    def backward(self, dloss=None):
        """dL/dscores (N, K); dloss scales it (default 1, or ones for reduction='none')."""
        saved = self.__dict__.get("_saved")
        if dloss is None and saved is not None and self.reduction != "none" and not saved.used:   # no array to build
            scale = 1.0 / max(saved.n, 1) if self.reduction == "mean" else 1.0     # no samples: an empty gradient
            saved.used = True
            return self._gradient(saved.ops, saved.record, scale)
        if saved is not None:          # else self.saved() below says backward came before forward
            xp = saved.ops.xp
            dloss = xp.ones(saved.out_shape, saved.out_dtype) if dloss is None else xp.asarray(dloss, saved.out_dtype)
        s = self.saved(dloss)
        if self.reduction == "none":
            scale = dloss[:, None]
        elif self.reduction == "mean":
            scale = dloss / max(s.n, 1)
        else:
            scale = dloss
        return self._gradient(s.ops, s.record, scale)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_LabelLoss):
    """Args (torch's order):
        weight, size_average, reduce: not supported (None only).
        ignore_index: accepted; no label is ignored (a label outside [0, K) is an error).
        reduction: 'mean' (default), 'sum' or 'none' (per-sample losses).
        label_smoothing: e in [0, 1].
    Call ``loss_fn(logits, labels)`` for the loss, then ``loss_fn.backward()`` for dL/dlogits.
    """
    scores_are = "logits"

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__(reduction, ignore_index)
        if weight is not None or size_average is not None or reduce is not None:
            raise ValueError("CrossEntropyLoss: class weights and the deprecated size_average/reduce are not "
                             "supported; use reduction='mean', 'sum' or 'none'")
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def _losses(self, ops, logits, labels):
        return ops.softmax_cross_entropy_forward(logits, labels, self.label_smoothing)

    def _gradient(self, ops, record, scale):
        return ops.softmax_cross_entropy_backward(record, scale)

    def extra_repr(self):
        text = super().extra_repr()
        return text + (f", label_smoothing={self.label_smoothing}" if self.label_smoothing else "")


class NLLLoss(_LabelLoss):
    """The negative log-likelihood of log-probabilities (a LogSoftmax's output) against integer labels,
    as torch.nn.NLLLoss: loss_i = -logp[i, labels_i]. LogSoftmax(dim=1) then NLLLoss is CrossEntropyLoss
    (which takes the logits directly, in one pass).

    Args (torch's order): weight, size_average, reduce: not supported (None only); ignore_index:
        accepted, no label is ignored (one outside [0, K) is an error); reduction: 'mean', 'sum', 'none'.
    Call ``loss_fn(logp, labels)``, then ``loss_fn.backward()`` for dL/dlogp.
    """
    scores_are = "log-probabilities"

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
        super().__init__(reduction, ignore_index)
        if weight is not None or size_average is not None or reduce is not None:
            raise ValueError("NLLLoss: class weights and the deprecated size_average/reduce are not supported; "
                             "use reduction='mean', 'sum' or 'none'")

    def _losses(self, ops, logp, labels):
        return ops.nll_loss_forward(logp, labels)

    def _gradient(self, ops, record, scale):
        return ops.nll_loss_backward(record, scale)
