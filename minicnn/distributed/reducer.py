"""Gradient averaging over the ranks, overlapped with backward.

The parameters are put in buckets once, in the reverse of their registration order (roughly the
order backward finishes them), each bucket a flat buffer of about ``bucket_bytes``. During
backward each parameter's gradient announces itself (its grad_hook); when a bucket's last one has,
its gradients are copied into the buffer and a non-blocking all-reduce starts, while backward goes
on with the layers before. finish() starts whatever is left, waits, and writes the averages back.
The buckets and their order never change, so every run and every rank adds the same numbers in the
same order: the result is the same bits on every rank. Host arrays are summed by MPI (Iallreduce);
for CuPy arrays the backend gives a device collective (NCCL), and the buffers stay on the GPU.
"""
import numpy as np

from .. import backend


class GradientReducer:
    """Args: model, world (a World), bucket_bytes (default 1 MiB: small models get a few buckets,
    so their communication starts before backward ends)."""

    def __init__(self, model, world, bucket_bytes=1 << 20):
        self.world, self.buckets, self._where = world, [], {}
        params = list(model.parameters())[::-1]
        self.device = backend.device_collective(world.comm, params[0].data) if params else None
        current, size = [], 0
        for p in params:
            if current and (size + p.size * p.data.dtype.itemsize > bucket_bytes or p.data.dtype != current[0].data.dtype):
                self.buckets.append(_Bucket(current, self.device))
                current, size = [], 0
            current.append(p)
            size += p.size * p.data.dtype.itemsize
        if current:
            self.buckets.append(_Bucket(current, self.device))
        for index, bucket in enumerate(self.buckets):
            for p in bucket.params:
                self._where[id(p)] = index
        self.params = params

    def begin(self):
        """Before backward: forget the last step, listen for this one's gradients."""
        for bucket in self.buckets:
            bucket.ready, bucket.request = 0, None
        for p in self.params:
            p.grad_hook = self._announce

    def _announce(self, p):
        bucket = self.buckets[self._where[id(p)]]
        bucket.ready += 1
        if bucket.ready == len(bucket.params):
            self._start(bucket)
        self._progress()

    def _start(self, bucket):
        bucket.fill()
        if self.device is not None:
            bucket.request = self.device.start(bucket.buffer)
        else:
            bucket.request = self.world.comm.Iallreduce(self.world.MPI.IN_PLACE, bucket.buffer, op=self.world.MPI.SUM)

    def _progress(self):
        """MPI moves non-blocking messages along only inside MPI calls: poke it between layers
        (NCCL runs on its own)."""
        if self.device is not None:
            return
        started = [b.request for b in self.buckets if b.request is not None]
        if started:
            self.world.MPI.Request.Testall(started)

    def finish(self):
        """After backward: every parameter's .grad becomes the mean over the ranks (a rank without
        a gradient for it counts as zeros; one that got none on any rank keeps None)."""
        for p in self.params:
            p.grad_hook = None
        for bucket in self.buckets:
            if bucket.request is None:
                self._start(bucket)
        requests = [b.request for b in self.buckets]
        if self.device is not None:
            self.world.wait_until(lambda: self.device.done(requests), "averaging the gradients")
            self.device.finish(requests)
        else:
            self.world.wait(requests, "averaging the gradients")
        for bucket in self.buckets:
            bucket.write_back(self.world.size)


class _Bucket:
    """Parameters whose gradients travel together: one flat buffer, then one flag per parameter
    (1 where this rank had a gradient; summed, they say whether any rank had one). The buffer is on
    the parameters' device when a device collective sums it, else on the host."""

    def __init__(self, params, device=None):
        self.params = params
        self.sizes = [p.size for p in params]
        n, dtype = sum(self.sizes) + len(params), params[0].data.dtype
        self.buffer = device.zeros(n, dtype) if device is not None else np.zeros(n, dtype=dtype)
        self.ready, self.request = 0, None

    def fill(self):
        start, flags = 0, sum(self.sizes)
        for i, (p, n) in enumerate(zip(self.params, self.sizes)):
            had = p.grad is not None
            self.buffer[start:start + n] = p.grad.reshape(-1) if had else 0     # the buffer is on p's device
            self.buffer[flags + i] = had
            start += n

    def write_back(self, size):
        start, total = 0, sum(self.sizes)
        had = backend.to_numpy(self.buffer[total:])               # the flags (one copy from a GPU)
        for i, (p, n) in enumerate(zip(self.params, self.sizes)):
            if had[i] > 0:                                        # some rank had a gradient: the mean over all
                p.grad = self.buffer[start:start + n].reshape(p.shape) / self.buffer.dtype.type(size)
            start += n
