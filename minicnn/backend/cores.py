"""The CPU's cores for the Numba backend: minicnn shares a layer's work out itself.

A layer's work is cut into tasks, usually a chunk of samples each. The calling thread and
(threads - 1) worker threads take the tasks as they come free, each task running single-threaded
Numba kernels and single-threaded BLAS calls. Numba's kernels release the GIL (nogil) and so does
NumPy's BLAS, so the threads compute at once; only the short Python glue between calls takes turns.

Why not Numba's own threads beside OpenBLAS's: on the 2-core machines we measure on, OpenBLAS's
threads keep spinning after a GEMM while Numba's OpenMP threads start the next kernel, the two
pools fight over the cores, and a LeNet step took 73 ms instead of 13 ms. So there is one pool,
this one, and NumPy's BLAS is held to one thread while a layer's tasks run (threadpoolctl).
Numba's kernels are compiled without parallel=True (Numba's parallel kernels called from two
threads at once ran 4x slower than one after the other).

Results do not depend on the number of threads: how work is cut into tasks depends only on the
shapes, each task writes its own part of the output, and partial sums (weight gradients) are
added in task order, whichever thread computed them.

    threads()            the number of threads (MINICNN_THREADS, default: the cores this process may use)
    set_threads(n)       change it
    run(task, n_tasks)   [task(i, worker) for i in range(n_tasks)], shared out; worker (0..threads-1)
                         names the thread, for per-thread scratch buffers
"""
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                          # not on Linux
        return os.cpu_count() or 1


def _threads_from_env():
    text = os.environ.get("MINICNN_THREADS", "")
    if not text:
        return _cores()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"MINICNN_THREADS must be a positive integer, got {text!r}")
    return n


_threads = _threads_from_env()
_pool = None                   # ThreadPoolExecutor of _threads - 1 workers, started on first use
_inside = threading.local()    # set while this thread runs tasks: a nested run() stays on it
_blas = None                   # threadpoolctl's handle on the BLAS libraries, found on first use


def threads():
    """How many threads run minicnn's CPU work."""
    return _threads


def set_threads(n):
    """Run minicnn's CPU work on n threads (1 = the calling thread only). Results are the same."""
    global _threads, _pool
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _threads = n


def workers_for(n_tasks):
    """How many threads run(task, n_tasks) uses: size per-thread scratch by this."""
    return 1 if getattr(_inside, "active", False) else max(1, min(_threads, n_tasks))


def run(task, n_tasks):
    """[task(i, worker) for i in range(n_tasks)]: the tasks go to the threads in order as they come
    free (worker is the thread's number, 0 for the caller). The first error is raised once every
    thread has stopped, so no task is still writing when the caller sees it."""
    workers = workers_for(n_tasks)
    results = [None] * n_tasks
    next_task = itertools.count()                   # next() is atomic under the GIL

    def work(worker):
        _inside.active = True
        try:
            for i in iter(lambda: next(next_task), None):
                if i >= n_tasks:
                    return
                results[i] = task(i, worker)
        finally:
            _inside.active = False

    if workers == 1:
        with one_blas_thread():
            for i in range(n_tasks):
                results[i] = task(i, 0)
        return results
    with one_blas_thread():
        futures = [_executor().submit(work, worker) for worker in range(1, workers)]
        try:
            work(0)
        finally:
            errors = [f.exception() for f in futures]      # waits for every worker
        for error in errors:
            if error is not None:
                raise error
    return results


def _executor():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads - 1, thread_name_prefix="minicnn")
    return _pool


@contextmanager
def one_blas_thread():
    """NumPy's BLAS on one thread inside: minicnn's threads are the only ones computing. Calls
    threadpoolctl's per-library controls directly (its limit() re-reads every library's state:
    ~2 us a call, and a LeNet step enters this ~25 times)."""
    global _blas
    if getattr(_inside, "blas", False):
        yield
        return
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [lib.get_num_threads() for lib in _blas]
    for lib, n in zip(_blas, before):
        if n != 1:
            lib.set_num_threads(1)
    _inside.blas = True
    try:
        yield
    finally:
        _inside.blas = False
        for lib, n in zip(_blas, before):
            if n != 1:
                lib.set_num_threads(n)
