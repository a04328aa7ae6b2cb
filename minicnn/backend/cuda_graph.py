"""A whole training step captured as a CUDA graph and replayed: one launch instead of ~50.

    step = CudaGraphStep(model, loss_fn, optimizer)
    for x, y in loader:                     # CuPy batches (DataLoader(..., device="cuda"))
        loss, logits = step(x, y)           # device arrays; float(loss) waits for the step

For small networks a GPU step is bound by kernel launches (~20 us each from Python), not by
arithmetic. A graph replays every kernel of forward, loss, backward and optimizer update with
one launch. How it works:

* The first ``warmup`` calls run eagerly: kernels compile, the optimizer creates its state,
  and gradients become persistent (zeroed in place: ``zero_grad(set_to_none=False)``).
* The next call captures one step from the graph's own input buffers, allocating from a
  private memory pool. Arrays freed during the capture return to that pool, which nothing
  else allocates from, so the addresses the graph reads and writes stay reserved for it. The
  pool is kept alive until :meth:`release`, also after the step object is gone: the layers
  keep views of the captured step's activations in it, and the graph may still be replayed.
* Every later call copies the batch into the input buffers, runs the optimizer's step() inside
  cupy_optim.only_hyper_parameters(), which writes this step's hyper-parameters (learning rate
  from the scheduler, Adam's bias corrections) into the device buffers its captured kernel
  reads and launches nothing, and launches the graph. The optimizer knows nothing of graphs.
  Dropout draws fresh masks on every replay (its generator's counter lives on the GPU).
* ``loss`` and ``logits`` are the graph's output buffers: the next call overwrites them.
* A batch of another shape (an epoch's last, smaller batch) runs eagerly. If parameters,
  gradients or optimizer state move to new arrays (``model.to``, ``optimizer.load_state_dict``)
  the graph is captured again.
* The device tables the fused optimizer kernels read (pointers, offsets) are kept by the
  step, since the backend's cache of them may be emptied.
* Labels are checked by the cross-entropy kernel; inside a graph its flag is read by
  :meth:`check_labels` and by the backend's raise_pending_errors (fit calls it whenever it
  reads the loss).

Limits: the step must not read device values on the host while it is captured (BatchNorm with
momentum=None does, to compute 1/num_batches_tracked); such a step raises at capture.
"""
import cupy as cp

from . import cupy_labels, cupy_optim

_live_pools = []        # private pools of captured graphs, kept until CudaGraphStep.release()


class CudaGraphStep:
    """Forward, loss, backward (parameter gradients only) and optimizer step as one CUDA graph."""

    def __init__(self, model, loss_fn, optimizer, warmup=2):
        if warmup < 2:
            raise ValueError(f"CudaGraphStep: warmup must be >= 2 (gradients become persistent in the "
                             f"second eager step), got {warmup}")
        self.model, self.loss_fn, self.optimizer, self.warmup = model, loss_fn, optimizer, int(warmup)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.pool = None
        self.graph = None
        self.replays = 0
        self._eager_steps = 0

    def __call__(self, x, y):
        if not (isinstance(x, cp.ndarray) and isinstance(y, cp.ndarray)):
            raise TypeError("CudaGraphStep: expected CuPy arrays for images and labels "
                            "(use DataLoader(..., device='cuda') or cupy.asarray)")
        caller = cp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())
        key = (x.shape, x.dtype, y.shape, y.dtype)
        with self.stream:
            if self.graph is not None and self._addresses() != self._captured_addresses:
                self.graph, self._eager_steps = None, 0          # the arrays moved: capture again
            if self.graph is not None and key != self._key:
                return self._finish(caller, *self._eager(x, y))  # another shape: eagerly, outside the pool
            if self.graph is None:
                if self._eager_steps < self.warmup:
                    self._eager_steps += 1
                    return self._finish(caller, *self._eager(x, y))
                self._capture(key, x, y)
            self._x[...] = x
            self._y[...] = y
            with cupy_optim.only_hyper_parameters():         # this step's learning rate, bias corrections
                self.optimizer.step()
            self.graph.launch(self.stream)
            self.replays += 1
            return self._finish(caller, self.loss, self.logits)

    def check_labels(self):
        """Raise ValueError if a label outside [0, K) reached the captured cross-entropy kernel
        (reads a flag: waits for the GPU)."""
        if self.graph is not None and cupy_labels.flag_is_set():
            cupy_labels.raise_bad_labels(self._y, self.logits.shape[1])

    def _finish(self, caller, loss, logits):
        caller.wait_event(self.stream.record())
        return loss, logits

    def _eager(self, x, y):
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=False)
        dlogits = self.loss_fn.backward()
        if getattr(self.model, "can_skip_input_grad", False):
            self.model.backward(dlogits, input_grad=False)
        else:
            self.model.backward(dlogits)
        self.optimizer.step()
        return loss, logits

    def _capture(self, key, x, y):
        self._key = key
        self._x, self._y = cp.empty_like(x), cp.empty_like(y)
        saved = _host_state(self.optimizer)
        with cupy_optim.only_hyper_parameters():   # creates the hyper-parameter buffers outside the capture
            self.optimizer.step()
        if self.pool is None:
            self.pool = cp.cuda.MemoryPool()
            _live_pools.append(self.pool)
        cupy_optim.captured_tables.clear()
        with cp.cuda.using_allocator(self.pool.malloc):
            self.stream.begin_capture()
            try:
                self.loss, self.logits = self._eager(self._x, self._y)
            finally:
                graph = self.stream.end_capture()
        _restore_host_state(self.optimizer, saved)   # the capture ran nothing: no step was taken
        self._tables = list(cupy_optim.captured_tables)   # pointer tables the graph reads: keep them alive
        cupy_optim.captured_tables.clear()
        self.graph = graph
        self._captured_addresses = self._addresses()
        cupy_labels.watch_graph(self._y, self.logits.shape[1])

    def release(self):
        """Drop the graph and its memory pool. Run a forward pass before any backward afterwards:
        the layers' saved activations of the captured step lived in that pool."""
        self.graph = self.loss = self.logits = None
        if self.pool is not None:
            _live_pools.remove(self.pool)
            self.pool = None
        self._eager_steps = 0

    def _addresses(self):
        """Where everything the graph reads and writes lives now."""
        pointers = []
        for p in self.model.parameters():
            pointers += [p.data.data.ptr, None if p.grad is None else p.grad.data.ptr]
        for state in self.optimizer.state.values():
            pointers += [v.data.ptr for v in state.values() if isinstance(v, cp.ndarray)]
        return pointers


def _host_state(optimizer):
    """The non-array part of the optimizer's state (step counters): a capture must not advance it."""
    return {p: {k: v for k, v in st.items() if not isinstance(v, cp.ndarray)} for p, st in optimizer.state.items()}


def _restore_host_state(optimizer, saved):
    for p, values in saved.items():
        optimizer.state[p].update(values)
