"""Early stopping: end training when a monitored number has stopped improving, keeping the best weights.

    stopper = EarlyStopping(monitor="val_loss", patience=5)
    fit(model, loss_fn, opt, loader, 100, val_loader=val_loader, early_stopping=stopper)
    # stopped after stopper.stopped_epoch epochs; the model holds the weights of stopper.best_epoch
"""
import math

import numpy as np

from . import backend

MONITORS = ("val_loss", "val_accuracy", "train_loss", "train_accuracy")


class EarlyStopping:
    """Args:
        monitor: a History column: 'val_loss' (default), 'val_accuracy', 'train_loss', 'train_accuracy'.
        patience: how many epochs without improvement to wait through: training stops at the next
            one (patience=2 stops after the third epoch without improvement), as torch's
            ReduceLROnPlateau counts its patience (Keras's EarlyStopping stops one epoch sooner).
        min_delta: an improvement smaller than this does not count.
        mode: 'min' or 'max'; default: 'max' for accuracies, 'min' for losses.
        restore_best_weights: when stopping (and when training ends without stopping), load the
            weights of the best epoch back into the model (a copy is kept on the host).
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode=None, restore_best_weights=True):
        if monitor not in MONITORS:
            raise ValueError(f"EarlyStopping: monitor must be one of {', '.join(MONITORS)}, got {monitor!r}")
        mode = mode or ("max" if monitor.endswith("accuracy") else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if int(patience) < 0 or not float(min_delta) >= 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0 and min_delta >= 0, got {patience}, {min_delta}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, int(patience), float(min_delta), mode
        self.restore_best_weights = bool(restore_best_weights)
        self.best, self.best_epoch, self.wait, self.stopped_epoch = None, None, 0, None
        self.best_weights = None

    def improved(self, value):
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def update(self, row, model):
        """After an epoch: row is its History record. True when training should stop now."""
        value = row.get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping: the epoch has no {self.monitor!r} (fit without a val_loader records "
                             "no val_*; monitor 'train_loss' or give fit a val_loader)")
        if not math.isfinite(value):
            return False
        if self.improved(value):
            self.best, self.best_epoch, self.wait = float(value), int(row["epoch"]), 0
            if self.restore_best_weights:
                self.best_weights = {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}
            return False
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = int(row["epoch"])
            return True
        return False

    def restore(self, model):
        """Load the best epoch's weights into the model (if kept); True if it did."""
        if not self.restore_best_weights or self.best_weights is None:
            return False
        model.load_state_dict(self.best_weights)
        return True

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_epoch = None if state.get("best_epoch") is None else int(state["best_epoch"])
        self.wait = int(state.get("wait", 0))
        self.stopped_epoch = None if state.get("stopped_epoch") is None else int(state["stopped_epoch"])
        weights = state.get("best_weights")
        self.best_weights = None if weights is None else {k: np.asarray(v) for k, v in weights.items()}

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"mode={self.mode!r}, best={self.best}, best_epoch={self.best_epoch})")
