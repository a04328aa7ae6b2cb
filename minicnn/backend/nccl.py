"""Sums of CuPy buffers over MPI ranks with NCCL, on the GPUs (no copy through the host).

The gradient reducer (minicnn/distributed/reducer.py) asks backend.device_collective(comm, array)
for a collective that fits its arrays: None for NumPy arrays (it then sums host buffers with MPI),
an NcclSum for CuPy arrays. MPI still starts the job and carries NCCL's unique id from rank 0 to
the others; each rank must use a GPU of its own (distributed.init(device="cuda") picks the
machine-local rank's; NCCL refuses two ranks on one GPU).

    collective = NcclSum(comm)            # every rank together (a collective call)
    handle = collective.start(buffer)     # in place: buffer becomes the sum over the ranks
    ...                                   # backward goes on: the sum runs on its own stream
    collective.done([handle])             # polled by World.wait_until (bounded)
    collective.finish([handle])           # the current stream waits for the sums

Ring all-reduce inside one NCCL call per bucket; NCCL sums in a fixed order for a fixed number of
ranks and buffer size, so every rank gets the same bits.
"""
import numpy as np


class NcclSum:
    """In-place sums of float32/float64 CuPy buffers over the ranks of an mpi4py communicator."""

    def __init__(self, comm):
        import cupy
        from cupy.cuda import nccl
        self._cupy, self._nccl = cupy, nccl
        uid = nccl.get_unique_id() if comm.Get_rank() == 0 else None
        uid = comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def zeros(self, n, dtype):
        """A flat buffer of n zeros on this rank's GPU."""
        return self._cupy.zeros(n, dtype=dtype)

    def start(self, buffer):
        """Start buffer's sum over the ranks, in place, after the work queued so far on the current
        stream (which wrote the buffer). Returns a handle (a CUDA event)."""
        if buffer.dtype not in self._types:
            raise TypeError(f"NCCL sums float32 or float64 buffers here, not {buffer.dtype}")
        self.stream.wait_event(self._cupy.cuda.get_current_stream().record())
        self.comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, self._types[buffer.dtype],
                            self._nccl.NCCL_SUM, self.stream.ptr)
        return self.stream.record()

    @staticmethod
    def done(handles):
        """Whether every started sum has finished (without waiting)."""
        return all(handle.done for handle in handles)

    def finish(self, handles):
        """Make the current stream wait for the sums (after done(): at once)."""
        stream = self._cupy.cuda.get_current_stream()
        for handle in handles:
            stream.wait_event(handle)
