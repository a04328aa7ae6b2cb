"""Training glue: fit, evaluate, predict, confusion_matrix and the History they record.

fit() runs the user's training step (forward, loss, zero_grad, backward, step) over a DataLoader
for some epochs, evaluates on a validation loader, steps a scheduler, and every ``every`` epochs
writes a checkpoint holding everything needed to continue bit for bit: model, optimizer,
scheduler, epoch, history, and the states of minicnn's generator and the loader's shuffler.
"""
import csv
import io
import json
import os
import time

import numpy as np
from tqdm.auto import tqdm

from . import backend, random
from .checkpoint import atomic_write_bytes, load, save
from .early_stopping import EarlyStopping  # noqa: F401  (minicnn.train.EarlyStopping)
from .lr_finder import LRFinderResult, lr_find  # noqa: F401  (minicnn.train.lr_find)
from .nn.module import no_grad
from .optim.clip import clip_grad_norm_

COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second"]


class History:
    """Per-epoch records; ``history.train_loss`` etc. give a column as a list (``lr``: the rate at the
    epoch's start; the epoch's log line also shows where a per-batch schedule left it)."""

    def __init__(self, rows=None):
        self.rows = [dict(r) for r in rows or []]

    def append(self, **row):
        self.rows.append(row)

    def __getattr__(self, column):
        if column in COLUMNS:
            return [r.get(column) for r in self.rows]
        raise AttributeError(column)

    def __len__(self):
        return len(self.rows)

    def best(self, column="val_accuracy"):
        values = [v for v in getattr(self, column) if v is not None]
        return max(values) if values else None

    def to_json(self, path):
        atomic_write_bytes(path, json.dumps(self.rows, indent=1).encode())

    def to_csv(self, path):
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in COLUMNS} for r in self.rows)
        atomic_write_bytes(path, out.getvalue().encode())

    @classmethod
    def from_json(cls, path):
        with open(path) as f:
            return cls(json.load(f))


def _correct(logits, labels):
    return int((backend.to_numpy(logits.argmax(axis=1)) == backend.to_numpy(labels)).sum())


def evaluate(model, loader, loss_fn=None, distributed=None):
    """Mean loss (if loss_fn is given) and accuracy over a loader, in eval mode without caching.
    Returns {'loss': float or None, 'accuracy': float}; the model's mode is restored.
    distributed: a World; each rank's loader holds its shard and the sums are over all ranks."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        with no_grad():
            for x, y in loader:
                logits = model(x)
                if loss_fn is not None:
                    total_loss += float(loss_fn(logits, y)) * len(y)
                correct += _correct(logits, y)
                count += len(y)
    finally:
        model.train(was_training)
    if distributed is not None:
        total_loss, correct, count = distributed.sum_numbers(total_loss, correct, count)
    return {"loss": total_loss / count if loss_fn is not None else None, "accuracy": correct / count}


def predict(model, x, batch_size=1000):
    """Class probabilities (N, K) and predicted classes (N,) for images x (N, C, H, W)."""
    was_training = model.training
    model.eval()
    probs = []
    try:
        with no_grad():
            for start in range(0, max(len(x), 1), batch_size):      # no images: one empty batch, (0, K) out
                logits = model(x[start:start + batch_size])
                ops = backend.ops_for(logits)
                probs.append(backend.to_numpy(ops.xp.exp(ops.log_softmax(logits))))
    finally:
        model.train(was_training)
    probs = np.concatenate(probs)
    return probs, probs.argmax(axis=1)


def confusion_matrix(y_true, y_pred, n_classes):
    """(K, K) counts: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_matrix: {y_true.shape} true labels but {y_pred.shape} predictions")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n_classes):
        raise ValueError(f"confusion_matrix: labels must be in [0, {n_classes})")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped fit between two steps. ``epoch`` is the epoch it stopped in, ``saved``
    the checkpoint file of the last epoch written (None if none yet) and ``saved_epoch`` its epoch."""

    def __init__(self, epoch, saved, saved_epoch):
        super().__init__(f"interrupted in epoch {epoch}")
        self.epoch, self.saved, self.saved_epoch = epoch, saved, saved_epoch


class _StopOnSignal:
    """While fit runs (in the main thread): the first SIGINT only asks it to stop at the end of the
    current step (an exception raised inside a Numba call on minicnn's threads surfaced as a
    SystemError traceback); a second one stops at once, as Ctrl-C normally does."""

    def __init__(self):
        self.requested, self._previous = False, None

    def __enter__(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        import signal
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _train_epoch(model, loss_fn, optimizer, loader, bar, graph_step=None, stop=None, after_step=None,
                 clip_grad_norm=None, reducer=None):
    model.train()
    totals = _Totals()
    for x, y in loader:
        if stop is not None and stop.requested:
            raise KeyboardInterrupt
        if graph_step is not None:
            loss, logits = graph_step(x, y)
        else:
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad()
            if reducer is not None:
                reducer.begin()
            _backward_params_only(model, loss_fn.backward())
            if reducer is not None:
                reducer.finish()                      # .grad: the mean over the ranks
            if clip_grad_norm is not None:
                clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
        if after_step is not None:
            after_step()
        if totals.add(loss, logits, y):
            _read_totals(totals, bar)
    _read_totals(totals, bar)
    return totals.loss / totals.count, totals.correct / totals.count, totals.count


class _Totals:
    """Running sums of loss * batch size and of correct predictions. They are summed where the
    arrays live and read on the host every ops.host_read_interval steps (every step on the CPU):
    a read waits for the device to finish what is queued, so GPU steps would not overlap."""

    def __init__(self):
        self.loss, self.correct, self.count, self.shown = 0.0, 0, 0, 0
        self.ops = None
        self._pending = None          # [loss sum, correct count, images, steps] where the arrays are

    def add(self, loss, logits, labels):
        """Add one batch; True when the sums are due to be read."""
        self.ops = backend.ops_for(logits)
        n = len(labels)
        loss_sum = self.ops.xp.asarray(loss).astype("float64") * n
        right = (logits.argmax(axis=1) == labels).sum()
        if self._pending is None:
            self._pending = [loss_sum, right, n, 1]
        else:
            p = self._pending
            p[0], p[1], p[2], p[3] = p[0] + loss_sum, p[1] + right, p[2] + n, p[3] + 1
        return self._pending[3] >= self.ops.host_read_interval

    def read(self):
        """Fold the pending sums into the host totals."""
        if self._pending is None:
            return
        loss_sum, right, n, _ = self._pending
        self._pending = None
        self.loss += float(loss_sum)
        self.correct += int(right)
        self.count += n


def _read_totals(totals, bar):
    totals.read()
    if totals.ops is not None:                    # errors the device found meanwhile (labels out of range)
        totals.ops.raise_pending_errors()
    if not np.isfinite(totals.loss):
        raise FloatingPointError(f"fit: the training loss became {totals.loss}; lower the learning rate")
    if totals.count > totals.shown:
        bar.update(totals.count - totals.shown)
        totals.shown = totals.count
        bar.set_postfix(loss=f"{totals.loss / totals.count:.4f}", acc=f"{totals.correct / totals.count:.4f}",
                        refresh=False)


def _backward_params_only(model, dlogits):
    """model.backward without the images' gradient, when the model can skip it."""
    if getattr(model, "can_skip_input_grad", False):
        model.backward(dlogits, input_grad=False)
    else:
        model.backward(dlogits)


def fit(model, loss_fn, optimizer, train_loader, epochs, val_loader=None, scheduler=None,
        checkpoint_dir=None, every=1, resume=None, progress=None, log=print, cuda_graph=False, meta=None,
        early_stopping=None, clip_grad_norm=None, csv_log=None, distributed=None):
    """Train for ``epochs`` epochs (counted from the start, also when resuming).

    Args:
        scheduler: stepped by its ``interval``: after every epoch (most), or after every batch
            (OneCycleLR, or any scheduler given ``interval = 'step'``); ReduceLROnPlateau is stepped
            with the validation loss (its mode='max': the validation accuracy), or the training one
            when there is no val_loader.
        checkpoint_dir: write 'last.npz' every ``every`` epochs (and 'best.npz' at the best
            validation accuracy) holding everything resume needs.
        resume: a checkpoint written by fit; training continues after its epoch and ends where
            an uninterrupted run would (the same bits). Everything in it is checked first: a
            checkpoint of another model, optimizer or scheduler (or written with a scheduler this
            run lacks) raises ValueError and changes nothing.
        progress: None shows a tqdm bar on terminals only; False never; True always.
        log: called with one summary line per epoch (None: silent).
        cuda_graph: on the GPU, replay each training step as one captured CUDA graph
            (the backend's captured_step, minicnn.cuda_graph.CudaGraphStep): the same arithmetic
            without the per-kernel launch cost. Needs a model on the GPU and a loader with
            device='cuda'.
        meta: a dict of plain values stored in every checkpoint (minicnn train puts the model's and
            dataset's names and the normalization there, so that its commands read any checkpoint).
        early_stopping: an EarlyStopping; training ends when its monitored number has not improved
            for its patience, and the model is given the best epoch's weights back (also at the end
            of a run that did not stop early). Its state is part of every checkpoint.
        clip_grad_norm: clip the gradients' total 2-norm to this before each optimizer step
            (minicnn.optim.clip_grad_norm_).
        csv_log: a file rewritten (atomically) with the history after every epoch, for a
            spreadsheet, pandas or a plot while training runs.
        distributed: a minicnn.distributed World: data-parallel training over its ranks (see
            minicnn.distributed: each rank's loaders hold its shards; gradients and metrics are
            averaged; rank 0 alone logs and writes).
    Returns: History.
    """
    epochs, every = _whole("epochs", epochs), _whole("every", every)
    _check_options(val_loader, scheduler, cuda_graph, early_stopping, clip_grad_norm, distributed)
    reducer = None
    if distributed is not None:
        from .distributed import GradientReducer, fingerprint
        distributed.check_same("models, data or settings", fingerprint(model, optimizer, train_loader, epochs,
                                                                       scheduler))
        reducer = GradientReducer(model, distributed)
        if not distributed.is_main:
            log, csv_log, progress = None, None, False
    history, start_epoch = History(), 0
    if resume is not None:
        state = load(resume)
        _restore(state, model, optimizer, scheduler, train_loader, resume, early_stopping, distributed)
        history, start_epoch = History(state["history"]), int(state["epoch"])
        if early_stopping is not None and early_stopping.stopped_epoch is not None:
            if log is not None:                   # an uninterrupted run ended there: so does this one
                log(f"the run stopped early at epoch {early_stopping.stopped_epoch} ({early_stopping.monitor} had not "
                    f"improved since epoch {early_stopping.best_epoch}); nothing left to resume")
            start_epoch = epochs
    graph_step = None
    if cuda_graph:
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("fit: cuda_graph=True needs a model with parameters")
        try:
            graph_step = backend.ops_for(first.data).captured_step(model, loss_fn, optimizer)
        except ValueError as err:
            raise ValueError(f"fit: {err}") from None
    run = _Run(model, loss_fn, optimizer, train_loader, epochs, val_loader, scheduler, checkpoint_dir, every, progress,
               log, graph_step, meta, early_stopping, clip_grad_norm, csv_log, distributed, reducer)
    saved = (os.path.join(checkpoint_dir, "last.npz"), start_epoch) if resume is not None and checkpoint_dir else (None, 0)
    with _StopOnSignal() as stop:
        for epoch in range(start_epoch, epochs):
            try:
                saved, stopped = run.epoch(history, epoch, stop, saved)
            except KeyboardInterrupt:
                interrupted = TrainingInterrupted(epoch + 1, *saved)
                if distributed is not None:       # the other ranks would wait for this one: stop them all
                    distributed.abort(str(interrupted), 130)
                raise interrupted from None
            except Exception as err:
                if distributed is not None and distributed.size > 1:
                    distributed.abort(f"{type(err).__name__}: {err}")
                raise
            if stopped:
                break
    if early_stopping is not None and early_stopping.restore(model) and log is not None:
        log(f"restored the weights of epoch {early_stopping.best_epoch} ({early_stopping.monitor} "
            f"{early_stopping.best:.4f})")
    return history


def _check_options(val_loader, scheduler, cuda_graph, early_stopping, clip_grad_norm, distributed):
    """ValueError for options of fit that cannot go together."""
    if early_stopping is not None and early_stopping.monitor.startswith("val_") and val_loader is None:
        raise ValueError(f"fit: early_stopping monitors {early_stopping.monitor!r} but there is no val_loader")
    if clip_grad_norm is not None and not float(clip_grad_norm) > 0:
        raise ValueError(f"fit: clip_grad_norm must be a positive number, got {clip_grad_norm!r}")
    if cuda_graph and (clip_grad_norm is not None or getattr(scheduler, "interval", "epoch") == "step"
                       or distributed is not None):
        raise ValueError("fit: cuda_graph replays a fixed step; it cannot clip gradients, step a scheduler per batch "
                         "or average gradients between ranks")


class _Run:
    """What every epoch of one fit call shares (the arguments of fit)."""

    def __init__(self, model, loss_fn, optimizer, train_loader, epochs, val_loader, scheduler, checkpoint_dir, every,
                 progress, log, graph_step, meta, early_stopping, clip_grad_norm, csv_log, distributed, reducer):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def epoch(self, history, epoch, stop, saved):
        """One epoch: train, validate, step the scheduler, log, write checkpoints. Returns (the last
        checkpoint file written, its epoch) and whether early stopping ended the run."""
        best = history.best() if len(history) else None
        lr = self.optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        sampler = getattr(self.train_loader, "sampler", None)
        with tqdm(total=len(sampler) if sampler is not None else len(self.train_loader.dataset), unit="img", desc=f"epoch {epoch + 1}/{self.epochs}",
                  leave=False, disable=None if self.progress is None else not self.progress) as bar:
            train_loss, train_acc, seen = _train_epoch(self.model, self.loss_fn, self.optimizer, self.train_loader, bar,
                                                       self.graph_step, stop, self._after_step, self.clip_grad_norm,
                                                       self.reducer)
        seconds = time.perf_counter() - started
        last_lr = self.optimizer.param_groups[0]["lr"]      # moved within the epoch by a per-batch schedule
        if self.distributed is not None:              # every rank records the same numbers: one history
            loss_sum, correct, seen, seconds = self.distributed.sum_numbers(train_loss * seen, train_acc * seen, seen,
                                                                            seconds)
            train_loss, train_acc, seen = loss_sum / seen, correct / seen, int(seen)
            seconds /= self.distributed.size
        val = evaluate(self.model, self.val_loader, self.loss_fn, self.distributed) if self.val_loader is not None \
            else {"loss": None, "accuracy": None}
        row = dict(epoch=epoch + 1, train_loss=train_loss, train_accuracy=train_acc, val_loss=val["loss"],
                   val_accuracy=val["accuracy"], lr=lr, seconds=seconds, images_per_second=seen / seconds)
        self._step_scheduler_after_epoch(row)
        history.append(**row)
        stopped = self.early_stopping is not None and self.early_stopping.update(row, self.model)
        if self.log is not None:
            text = f"epoch {epoch + 1:>3}/{self.epochs}  loss {train_loss:.4f}  acc {train_acc:.4f}"
            if val["accuracy"] is not None:
                text += f"  val_loss {val['loss']:.4f}  val_acc {val['accuracy']:.4f}"
            rates = f"{lr:.3g}" if f"{lr:.3g}" == f"{last_lr:.3g}" else f"{lr:.3g}->{last_lr:.3g}"
            self.log(text + f"  lr {rates}  {seconds:.1f}s  {seen / seconds:,.0f} img/s")
            if stopped:
                es = self.early_stopping
                self.log(f"early stopping: {es.monitor} has not improved for {es.wait} epochs (best {es.best:.4f} "
                         f"at epoch {es.best_epoch})")
        if self.csv_log is not None:
            history.to_csv(self.csv_log)
        if self.checkpoint_dir is not None:
            improved = val["accuracy"] is not None and (best is None or val["accuracy"] > best)
            due = (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs or stopped
            if due or improved:
                state = _capture(self.model, self.optimizer, self.scheduler, self.train_loader, epoch + 1, history,
                                 self.meta, self.early_stopping, self.distributed)
                writes = self.distributed is None or self.distributed.is_main
                if due:
                    if writes:
                        save(state, os.path.join(self.checkpoint_dir, "last.npz"))
                    saved = (os.path.join(self.checkpoint_dir, "last.npz"), epoch + 1)
                if improved and writes:
                    save(state, os.path.join(self.checkpoint_dir, "best.npz"))
        return saved, stopped

    def _after_step(self):
        """After each optimizer step: a per-batch scheduler."""
        if self.scheduler is not None and self.scheduler.interval == "step":
            self.scheduler.step()

    def _step_scheduler_after_epoch(self, row):
        from .optim.lr_scheduler import ReduceLROnPlateau
        scheduler = self.scheduler
        if scheduler is None or scheduler.interval != "epoch":
            return
        if isinstance(scheduler, ReduceLROnPlateau):
            which = "val" if row["val_loss"] is not None else "train"
            scheduler.step(row[f"{which}_accuracy" if scheduler.mode == "max" else f"{which}_loss"])
        else:
            scheduler.step()


def _whole(name, value):
    """value as an int >= 1, refusing fractions (fit(epochs=2.7) must not run 2 epochs) and bools."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value).is_integer() or value < 1:
        raise ValueError(f"fit: {name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _generators(model, loader):
    """Every random generator a run draws from besides minicnn's global one, in a fixed order: the
    layers' own (Dropout(seed=...)) by module name, then the loader's transforms' own
    (RandomCrop(..., seed=...)) in the order they are composed."""
    found = [(f"model:{name}", m._rng) for name, m in model.named_modules() if getattr(m, "_rng", None) is not None]
    transforms = [getattr(loader, "transform", None)]
    i = 0
    while transforms:
        t = transforms.pop(0)
        if t is None:
            continue
        transforms[:0] = list(getattr(t, "transforms", []))
        if getattr(t, "_own_rng", None) is not None:
            found.append((f"transform:{i}:{type(t).__name__}", t._own_rng))
            i += 1
    return found


def _capture(model, optimizer, scheduler, loader, epoch, history, meta, early_stopping=None, distributed=None):
    ranks = None
    if distributed is not None:                   # every rank's own streams (dropout, augmentation)
        ranks = distributed.gather_objects({"rng": random.get_state(), "generators": {
            name: g.bit_generator.state for name, g in _generators(model, loader)}})
    return {"early_stopping": early_stopping.state_dict() if early_stopping is not None else None,
            "ranks": ranks,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "optimizer_class": type(optimizer).__name__,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scheduler_class": type(scheduler).__name__ if scheduler is not None else None,
            "epoch": epoch, "history": history.rows, "rng": random.get_state(),
            "generators": {name: g.bit_generator.state for name, g in _generators(model, loader)},
            "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
            "meta": dict(meta) if meta else {}}


def _restore(state, model, optimizer, scheduler, loader, where="the checkpoint", early_stopping=None, distributed=None):
    """Everything the checkpoint holds back into the run, all or nothing: on any error the model,
    optimizer, scheduler and generators are as they were, and ValueError says what did not fit."""
    if not isinstance(state, dict):
        raise ValueError(f"fit(resume=...): {where} is not a checkpoint written by fit")
    if "model" in state and "optimizer" not in state:
        raise ValueError(f"fit(resume=...): {where} holds a model but no optimizer state (a model file, not a "
                         "training checkpoint): load its weights with model.load_state_dict(minicnn.load(path)) "
                         "and start a new run (minicnn train --init-from PATH)")
    for key in ("model", "optimizer", "epoch", "history", "rng"):
        if key not in state:
            raise ValueError(f"fit(resume=...): {where} has no {key!r}; it was not written by fit")
    _check_same_kind(state, "optimizer", optimizer, where)
    _check_same_scheduler(state, scheduler, where)
    ranks = state.get("ranks")
    if distributed is not None or ranks is not None:
        size = distributed.size if distributed is not None else 1
        if ranks is None or len(ranks) != size:
            raise ValueError(f"fit(resume=...): {where} was written by {len(ranks) if ranks else 1} process(es), this "
                             f"run has {size}; resume with the same number of ranks")
        state = {**state, **ranks[distributed.rank]}
    generators = _generators(model, loader)
    saved_generators = state.get("generators") or {}
    if saved_generators and sorted(saved_generators) != sorted(name for name, _ in generators):
        raise ValueError(f"fit(resume=...): {where} holds the states of generators {sorted(saved_generators)}, "
                         f"this run has {sorted(name for name, _ in generators)}")
    before = _snapshot(model, optimizer, scheduler, loader, generators)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        random.set_state(_plain(state["rng"]))
        for name, g in generators:
            if name in saved_generators:
                g.bit_generator.state = _plain(saved_generators[name])
        if state.get("loader") is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(_plain(dict(state["loader"])))
        if early_stopping is not None and state.get("early_stopping") is not None:
            early_stopping.load_state_dict(state["early_stopping"])
    except (ValueError, KeyError, TypeError) as err:
        _rollback(before, model, optimizer, scheduler, loader, generators)
        raise ValueError(f"fit(resume=...): {where} does not fit this run (nothing was changed): {err}") from None


def _check_same_scheduler(state, scheduler, where):
    """Resuming continues the checkpoint's schedule, so a run must bring the scheduler it was
    written with: without one the rate would silently stay where the schedule left it, and another
    kind would take the old one's state. (A scheduler for a run written without one starts from its
    beginning at the resumed epoch.)"""
    saved = state.get("scheduler_class") or ("a scheduler" if state.get("scheduler") is not None else None)
    if saved is None:
        return
    if scheduler is None:
        raise ValueError(f"fit(resume=...): {where} was written with {saved} and this run has no scheduler; "
                         "resume with the same scheduler (minicnn train: the same --scheduler), or start a new "
                         "run from its weights (minicnn train --init-from PATH)")
    _check_same_kind(state, "scheduler", scheduler, where)


def _check_same_kind(state, what, given, where):
    """Refuse a run whose optimizer or scheduler (what) is of another class than the checkpoint's
    (recorded as state[what + '_class'] by _capture; older checkpoints without it pass)."""
    saved = state.get(f"{what}_class")
    if saved is not None and saved != type(given).__name__:
        raise ValueError(f"fit(resume=...): {where} was written with {saved}, this run uses "
                         f"{type(given).__name__}; resume with the same {what}")


def _snapshot(model, optimizer, scheduler, loader, generators):
    import copy
    return {"model": model.state_dict(), "optimizer": copy.deepcopy(optimizer.state),
            "groups": copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]),
            "scheduler": copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
            "rng": random.get_state(), "generators": [g.bit_generator.state for _, g in generators],
            "loader": loader.state_dict() if hasattr(loader, "state_dict") else None}


def _rollback(before, model, optimizer, scheduler, loader, generators):
    model.load_state_dict(before["model"])
    optimizer.state = before["optimizer"]
    for group, values in zip(optimizer.param_groups, before["groups"]):
        group.update(values)
    if scheduler is not None:
        scheduler.load_state_dict(before["scheduler"])
    random.set_state(before["rng"])
    for (_, g), state in zip(generators, before["generators"]):
        g.bit_generator.state = state
    if before["loader"] is not None:
        loader.load_state_dict(before["loader"])


def _plain(value):
    """Generator states come back from a checkpoint with 0-d arrays; turn them into Python ints."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value
