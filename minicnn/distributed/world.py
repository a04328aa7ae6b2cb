"""The MPI world minicnn trains in: which rank this process is, how many there are, and the few
collective operations training needs, on NumPy arrays (CuPy arrays are staged through the host,
except the gradients' all-reduce, which the backend does on the GPUs with NCCL: reducer.py).

Started by ``mpiexec -n N``: every rank runs the same program; ``World.from_environment()`` finds
the MPI world mpiexec made (mpi4py is imported only then). A one-process run has no World at all.
"""
import hashlib
import os
import sys
import time

import numpy as np

from .. import backend

ABORT_GRACE_SECONDS = 0.5      # between an aborting rank's message and the abort (see World.abort)
# The environment variables an MPI launcher sets in each process it starts (MPICH's Hydra: PMI_*,
# Open MPI: OMPI_COMM_WORLD_*, PMIx launchers: PMIX_RANK)
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")


def launched_by_mpi():
    """Whether this process was started by an MPI launcher with more than one rank."""
    for name in LAUNCHER_SIZE_VARIABLES:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


class DistributedError(RuntimeError):
    """Ranks disagree (a bad launch) or a rank stopped answering."""


class World:
    """rank, size, and collectives over an mpi4py communicator.

    timeout: seconds a collective may wait for the other ranks before the job is stopped with a
    message (MINICNN_DIST_TIMEOUT, default 300): a rank that died or hangs never hangs the others.
    """

    def __init__(self, comm, timeout=None):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        machine = comm.Split_type(MPI.COMM_TYPE_SHARED)                      # the ranks on this machine
        self.local_rank, self.local_size = machine.Get_rank(), machine.Get_size()
        self.timeout = float(timeout if timeout is not None else os.environ.get("MINICNN_DIST_TIMEOUT", 300))
        self.gpu = None                  # the CUDA device of this rank, once init(device="cuda") chose it

    @classmethod
    def from_environment(cls, timeout=None):
        """The world mpiexec started (COMM_WORLD). ImportError, saying what to install, without mpi4py."""
        try:
            from mpi4py import MPI
        except ImportError as err:
            raise ImportError("distributed training needs mpi4py and an MPI library: pip install 'minicnn[mpi]' "
                              f"(mpi4py and mpich) ({err})") from None
        return cls(MPI.COMM_WORLD, timeout)

    @property
    def is_main(self):
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def __repr__(self):
        return f"World(rank {self.rank} of {self.size}, {self.local_size} on this machine)"

    # ------------------------------------------------------------ collectives

    def wait(self, requests, what):
        """Wait for non-blocking operations, polling, at most self.timeout seconds; then stop the job."""
        self.wait_until(lambda: self.MPI.Request.Testall(requests), what)

    def wait_until(self, done, what):
        """Poll done() until it is true, at most self.timeout seconds; then stop the job."""
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                self.abort(f"{what} waited {self.timeout:g} s for the other ranks (MINICNN_DIST_TIMEOUT); "
                           "one of them has stopped or hangs")
            time.sleep(0.0002)

    def allreduce_sum_(self, buffer, what="an all-reduce"):
        """Sum a NumPy float buffer over the ranks, in place (every rank gets the same bits)."""
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        self.wait([request], what)
        return buffer

    def sum(self, array, what="an all-reduce"):
        """A new array: the sum of ``array`` over the ranks, on array's device (CuPy via the host)."""
        host = np.array(backend.to_numpy(array), dtype=np.float64 if array.dtype.kind != "f" else array.dtype,
                        order="C")                          # a copy; a 0-d array stays 0-d
        self.allreduce_sum_(host, what)
        return backend.on_device_of(host.astype(array.dtype, copy=False), array)

    def sum_numbers(self, *numbers):
        """Python numbers summed over the ranks (float64)."""
        return tuple(self.allreduce_sum_(np.array(numbers, dtype=np.float64), "summing the metrics").tolist())

    def broadcast_(self, array, root=0):
        """Overwrite ``array`` (NumPy or CuPy) with root's, in place."""
        host = np.array(backend.to_numpy(array), order="C")
        request = self.comm.Ibcast(host, root=root)
        self.wait([request], "a broadcast")
        array[...] = backend.on_device_of(host, array)

    def gather_objects(self, value):
        """Every rank's (small, picklable) value, in rank order, on every rank."""
        return self.comm.allgather(value)

    def barrier(self):
        self.wait([self.comm.Ibarrier()], "a barrier")

    def check_same(self, what, description):
        """Raise DistributedError on every rank, naming the ranks that differ, unless all ranks
        describe ``what`` alike (a bad launch: different models, data or settings)."""
        digest = hashlib.sha256(repr(description).encode()).hexdigest()[:16]
        digests = self.gather_objects(digest)
        if len(set(digests)) > 1:
            groups = {}
            for rank, d in enumerate(digests):
                groups.setdefault(d, []).append(rank)
            parts = "; ".join(f"ranks {ranks}" for ranks in groups.values())
            raise DistributedError(f"the ranks were launched with different {what} ({parts} agree among "
                                   f"themselves); this rank's: {description!r}"[:2000])

    def abort(self, message, code=1):
        """Print the message (with this rank) and stop every rank of the job now."""
        print(f"minicnn: rank {self.rank} of {self.size}: {message}; stopping all ranks", file=sys.stderr, flush=True)
        # Abort has the launcher kill every process at once, its own output forwarders included: a
        # message still in the pipe to them was lost (once in a full test run on a busy machine)
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(code)
