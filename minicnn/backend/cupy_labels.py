"""Labels out of range on the GPU, found without making the host wait.

The cross-entropy kernel sets a flag in device memory when a label is outside [0, K) (that row's
loss is NaN, nothing is read out of bounds). After each eager launch the flag travels back to
pinned host memory asynchronously and is examined at the next launch, or by raise_pending_errors
(fit calls it whenever it reads its totals): the ValueError names the label one call later. A
captured CUDA graph's replays set the flag without the copy; raise_pending_errors reads it then.
"""
import cupy as cp
import cupyx
import numpy as np

from .cupy_kernels import capturing

_flag = None             # int32 on the device, set by softmax_ce_forward when a label is out of range
_on_host = None          # pinned host memory the flag is copied into, asynchronously, after each launch
_unchecked = None        # (event after that copy, labels, K) of the last launch, not yet examined
_graph_labels = None     # (labels buffer, K) of a captured graph, whose replays set the flag unseen


def flag():
    """The device flag the kernel sets (made on first use)."""
    global _flag, _on_host
    if _flag is None:
        _flag = cp.zeros(1, dtype=cp.int32)
        _on_host = cupyx.empty_pinned(1, dtype=np.int32)
    return _flag


def launched(labels, K):
    """After a launch outside a capture: copy the flag back asynchronously, to be examined later."""
    global _unchecked
    if capturing():
        return
    stream = cp.cuda.get_current_stream()
    cp.cuda.runtime.memcpyAsync(_on_host.ctypes.data, _flag.data.ptr, 4, cp.cuda.runtime.memcpyDeviceToHost,
                                stream.ptr)
    _unchecked = (stream.record(), labels, K)


def check_last():
    """Raise ValueError if the last eager launch met a bad label (waits only for its copy)."""
    global _unchecked
    if _unchecked is None:
        return
    event, labels, K = _unchecked
    _unchecked = None
    event.synchronize()
    if _on_host[0]:
        _on_host[0] = 0
        raise_bad_labels(labels, K)


def watch_graph(labels, K):
    """A captured graph reads its labels from this buffer: raise_pending_errors reads its flag."""
    global _graph_labels
    _graph_labels = (labels, K)


def flag_is_set():
    """Read the device flag now (waits for the GPU)."""
    return _flag is not None and bool(int(_flag[0]))


def raise_pending_errors():
    """The contract's op: a bad label met by the last eager launch, or by a graph's replays."""
    check_last()
    if _graph_labels is not None and flag_is_set():
        raise_bad_labels(*_graph_labels)


def raise_bad_labels(labels, K):
    _flag.fill(0)
    host = cp.asnumpy(labels)
    bad = host[(host < 0) | (host >= K)]
    seen = f"got {int(bad[0])}" if bad.size else "got one in an earlier batch"
    raise ValueError(f"labels must be in [0, {K}) for {K} classes, {seen}")
