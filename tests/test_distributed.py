"""Data-parallel training over MPI: tests that launch ``mpiexec -n 2`` (each bounded in time) run the
scenarios of tests/distributed_worker.py; the sampler is checked against torch's here."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minicnn.distributed import DistributedSampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def _reason():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'minicnn[mpi]')"
    return None if mpiexec() else "no mpiexec (pip install mpich)"


needs_mpi = pytest.mark.skipif(_reason() is not None, reason=str(_reason()))


def launch(*args, timeout=240, ranks=2, cwd=None, env=None):
    command = [mpiexec(), "-n", str(ranks), *args]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                            env={**os.environ, "MINICNN_THREADS": "1", **(env or {})})
    return result, time.monotonic() - started


def worker(scenario, tmp_path, **kwargs):
    return launch(sys.executable, WORKER, scenario, str(tmp_path), **kwargs)


@needs_mpi
def test_two_ranks_equal_one_process_for_every_model_without_dropout(tmp_path):
    """LeNet, TinyBNNet (SyncBatchNorm), ResNet14 (SyncBatchNorm, residual blocks): 5 SGD and 5 Adam
    steps, float64, 2 ranks at batch 4 against 1 process at batch 8; weights identical on both ranks."""
    result, _ = worker("equivalence", tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "equal: lenet/SGD, lenet/Adam, tinybnnet/SGD" in result.stdout and "resnet14/Adam" in result.stdout


def _two_gpus():
    """None where this machine has two CUDA devices for two ranks, else why not (NCCL refuses two
    ranks on one GPU)."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # ImportError without CuPy, CUDA errors without a driver
        return f"no usable GPU ({type(err).__name__}: {err})"
    return None if count >= 2 else f"NCCL needs a GPU per rank: 2 ranks, {count} GPU here"


@needs_mpi
def test_the_reducers_device_collective_path_equals_its_mpi_path(tmp_path):
    """On the CPU, with a stand-in for NCCL: the buckets, waits and write-back of the GPU path."""
    result, _ = worker("device_collective_branch", tmp_path)
    assert result.returncode == 0 and "device-collective path: the same bits as MPI's" in result.stdout, \
        result.stdout[-4000:] + result.stderr[-4000:]


@needs_mpi
@pytest.mark.skipif(_two_gpus() is not None, reason=str(_two_gpus()))
def test_two_ranks_on_gpus_sum_gradients_with_nccl(tmp_path):
    result, _ = worker("nccl_equivalence", tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "NCCL: 2 ranks on GPUs [0, 1] equal 1 process" in result.stdout


@needs_mpi
def test_fit_over_two_ranks_equals_fit_in_one_process(tmp_path):
    result, _ = worker("fit_equals_one_process", tmp_path)
    assert result.returncode == 0 and "2 ranks equal 1 process" in result.stdout, result.stdout + result.stderr


@needs_mpi
def test_distributed_resume_is_exact_and_histories_agree(tmp_path):
    result, _ = worker("fit_resume", tmp_path)
    assert result.returncode == 0 and "resumed equals uninterrupted" in result.stdout, result.stdout + result.stderr


@needs_mpi
def test_a_rank_that_raises_stops_the_job_with_its_message(tmp_path):
    result, seconds = worker("raise_on_rank_1", tmp_path, env={"WORKER_TIMEOUT": "30"})
    assert result.returncode != 0 and seconds < 60
    assert "rank 1 of 2: ValueError: a deliberate failure on rank 1; stopping all ranks" in result.stderr


@needs_mpi
def test_a_killed_rank_ends_the_job_in_bounded_time(tmp_path):
    result, seconds = worker("kill_rank_1", tmp_path, env={"WORKER_TIMEOUT": "20"})
    assert result.returncode != 0 and seconds < 60, (seconds, result.stderr[-2000:])


@needs_mpi
def test_ranks_with_different_models_are_refused_at_start(tmp_path):
    result, _ = worker("different_models", tmp_path)
    assert result.returncode != 0 and "launched with different models" in result.stderr


@needs_mpi
def test_cli_under_mpiexec(tmp_path):
    from test_data import write_small_dataset
    write_small_dataset(tmp_path / "data" / "mnist", n=96)
    result, _ = launch(sys.executable, "-m", "minicnn.cli", "train", "--data", str(tmp_path / "data"), "--epochs", "2",
                       "--batch-size", "16", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("test accuracy") == 1 and "batch 16 = 2 x 8" in result.stdout
    assert (tmp_path / "run" / "model.npz").exists() and (tmp_path / "run" / "checkpoints" / "last.npz").exists()
    result, _ = launch(sys.executable, "-m", "minicnn.cli", "train", "--data", str(tmp_path / "data"), "--epochs", "1",
                       "--batch-size", "15", "--out", str(tmp_path / "odd"), cwd=tmp_path)
    assert result.returncode == 2 and "must divide among the 2 ranks" in result.stderr


@pytest.mark.parametrize("n, ranks, drop_last", [(10, 3, False), (10, 3, True), (9, 3, False), (7, 4, False),
                                                 (2, 4, False)])
def test_sampler_pads_and_strides_as_torch(n, ranks, drop_last):
    torch = pytest.importorskip("torch")
    from torch.utils.data.distributed import DistributedSampler as TorchSampler
    for rank in range(ranks):
        ours = DistributedSampler(n, ranks, rank, shuffle=False, drop_last=drop_last)
        theirs = TorchSampler(torch.arange(n), num_replicas=ranks, rank=rank, shuffle=False, drop_last=drop_last)
        assert ours.indices().tolist() == list(theirs) and len(ours) == len(theirs)


def test_sampler_shards_one_permutation_and_batches_add_up():
    shards = [DistributedSampler(100, 4, r, seed=7) for r in range(4)]
    epochs = [[s.next_epoch() for s in shards] for _ in range(2)]
    for parts in epochs:
        assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert not np.array_equal(epochs[0][0], epochs[1][0])
    whole = DistributedSampler(100, 1, 0, seed=7).indices(0)
    for b in range(5):                      # batch b of the 4 ranks at 5 each = batch b of one process at 20
        together = np.concatenate([parts[b * 5:(b + 1) * 5] for parts in epochs[0]])
        assert sorted(together.tolist()) == sorted(whole[b * 20:(b + 1) * 20].tolist())
    uneven = [DistributedSampler(10, 3, r, shuffle=False, pad=False).indices().tolist() for r in range(3)]
    assert uneven == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="rank 3"):
        DistributedSampler(10, 3, 3)


@needs_mpi
def test_collectives_keep_a_scalars_shape():
    """World.sum and broadcast_ of a 0-d array (batch norm's num_batches_tracked is one) give a 0-d
    array back, not shape (1,): one rank in this process (MPI.COMM_SELF)."""
    from mpi4py import MPI

    from minicnn.distributed import World
    world = World(MPI.COMM_SELF, timeout=30)
    total = world.sum(np.array(3, dtype=np.int64))
    assert total.shape == () and total.dtype == np.int64 and int(total) == 3
    assert world.sum(np.array(2.5, dtype=np.float32)).shape == ()
    count = np.array(7, dtype=np.int64)
    world.broadcast_(count)
    assert count.shape == () and int(count) == 7

