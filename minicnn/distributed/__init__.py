"""Data-parallel training over MPI: R processes (ranks), each with a copy of the model and a shard
of every batch, average their gradients after each backward, and so take the steps one process
with R times the batch would take.

    mpiexec -n 2 minicnn train --model lenet             # the CLI notices the MPI world by itself

    from minicnn import distributed as dist
    world = dist.init()                                  # rank, size; cores / ranks-per-machine threads
    model = dist.prepare(model, world)                   # SyncBatchNorm, rank 0's weights everywhere
    sampler = dist.DistributedSampler(len(train_set), world.size, world.rank, seed=0)
    loader = DataLoader(train_set, batch_size=B // world.size, sampler=sampler)
    fit(model, loss_fn, opt, loader, epochs, val_loader=..., distributed=world)

What fit does with ``distributed=world``: checks at start that every rank has the same model, data
sizes and settings (a fingerprint); averages the gradients with non-blocking all-reduces that start
during backward (reducer.py); sums the metrics, so every rank's history, early stopping and
schedules agree; evaluates each rank's shard of the validation set; lets rank 0 alone print and
write checkpoints, which hold every rank's generators (resume needs the same number of ranks).
A rank that fails stops the whole job with its message (MPI_Abort); one that dies or hangs stops
the others after MINICNN_DIST_TIMEOUT seconds (300) at most.

Dropout: each rank draws its masks from its own stream (prepare() mixes the rank into the global
generator's seed), so R ranks agree with one process in distribution, not bit for bit.
On GPUs (init(device="cuda"), model.to("cuda")) the gradients are summed by NCCL on the devices
(backend/nccl.py); the few other collectives (metrics, SyncBatchNorm's statistics, broadcasts)
go through the host.
"""
import os

from .reducer import GradientReducer
from .sampler import DistributedSampler
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from .world import DistributedError, World, launched_by_mpi

__all__ = ["World", "init", "prepare", "launched_by_mpi", "DistributedSampler", "GradientReducer", "SyncBatchNorm",
           "convert_sync_batchnorm", "DistributedError", "fingerprint"]


def init(timeout=None, device="cpu"):
    """The MPI world of this process. Unless MINICNN_THREADS is set, each rank runs on
    cores / (ranks on this machine) threads, so the ranks of one machine share its cores. With
    device="cuda" each rank takes a GPU of its own, the one of its rank on this machine (modulo
    the GPUs there), before any array is made on it; gradients are then summed by NCCL."""
    from .. import backend
    world = World.from_environment(timeout)
    if not os.environ.get("MINICNN_THREADS") and world.local_size > 1 and "numba" in backend.available_backends():
        cores = backend.cpu_threads()
        backend.set_cpu_threads(max(1, cores // world.local_size))
    if device != "cpu":
        backend.device_converter(device)                   # a clear error where CUDA is not usable
        world.gpu = backend.use_gpu(world.local_rank)
    return world


def prepare(model, world, sync_batchnorm=True):
    """The model ready for data-parallel training: its BatchNorm layers made SyncBatchNorm (unless
    sync_batchnorm=False), every parameter and buffer set to rank 0's, and the global generator
    (dropout) given a stream of this rank's own. Checks first that the ranks hold the same model."""
    from .. import random
    world.check_same("models", [(name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()]
                     + [type(m).__name__ for m in model.modules()])
    if sync_batchnorm and world.size > 1:
        model = convert_sync_batchnorm(model, world)
    for p in model.parameters():
        world.broadcast_(p.data)
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.ndim > 0:
                world.broadcast_(buffer)
    if world.size > 1:
        random.manual_seed([int(random.get_rng().integers(2 ** 63)), world.rank])
    return model


def fingerprint(model, optimizer, loader, epochs, scheduler=None):
    """What must be the same on every rank for their runs to be one run."""
    return {"model": [(name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()],
            "layers": [type(m).__name__ for m in model.modules()],
            "optimizer": (type(optimizer).__name__, sorted((k, repr(v)) for k, v in optimizer.defaults.items())),
            "scheduler": type(scheduler).__name__, "epochs": epochs, "batches": len(loader),
            "batch_size": loader.batch_size}
