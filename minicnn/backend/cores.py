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

The worker threads wait for work, and the caller for their end, by polling a flag for about a
millisecond before they sleep (see SPIN_LOADS): cheaper than waking a sleeping thread for every
layer. run() from two threads at once is safe: the second runs its tasks on its own thread.

Results do not depend on the number of threads: how work is cut into tasks depends only on the
shapes, each task writes its own part of the output, and partial sums (weight gradients) are
added in task order, whichever thread computed them.

    threads()            the number of threads (MINICNN_THREADS, default: the cores this process may use)
    set_threads(n)       change it
    run(task, n_tasks)   [task(i) for i in range(n_tasks)], shared out to the threads
    defer(task, n_tasks, finish)   the same, then finish(), on threads that would otherwise wait
    settle()             wait until everything deferred has finished
    recording()          within: every run and each of its tasks timed (benchmarks/step_profile.py)
"""
import collections
import contextlib
import itertools
import math
import os
import sys
import threading
import time

try:
    import resource                                 # POSIX: involuntary context switches per thread
except ImportError:
    resource = None

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


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
_crew = None                   # the _threads - 1 worker threads (_Crew), started on first use
_inside = threading.local()    # set while this thread runs tasks: a nested run() stays on it
_blas = None                   # threadpoolctl's handle on the BLAS libraries, found on first use


def threads():
    """How many threads run minicnn's CPU work."""
    return _threads


def set_threads(n):
    """Run minicnn's CPU work on n threads (1 = the calling thread only). Results are the same."""
    global _threads, _crew
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    settle()
    if _crew is not None:
        _crew.stop()
        _crew = None
    _threads = n


def run(task, n_tasks):
    """[task(i) for i in range(n_tasks)]: the tasks go to the threads in order as they come free
    (the caller is one of them). The first error is raised once every thread has stopped, so no
    task is still writing when the caller sees it. Inside a task, run() stays on its thread."""
    nested = getattr(_inside, "active", False)
    if _recording is not None and not nested:
        return _recording.run(task, n_tasks, _share_out)
    return _share_out(task, n_tasks, nested)


def _share_out(task, n_tasks, nested=False):
    workers = 1 if nested else max(1, min(_threads, n_tasks))
    results = [None] * n_tasks
    next_task = itertools.count()                   # next() is atomic under the GIL

    def work(worker):
        _inside.active = True
        try:
            while (i := next(next_task)) < n_tasks:
                results[i] = task(i)
        finally:
            _inside.active = nested

    crew = _crew_of(_threads) if workers > 1 and not _watch.solo() else None
    if crew is None or not crew.busy.acquire(blocking=False):     # or another thread's job is running
        with one_blas_thread():
            work(0)
        return results
    try:
        with one_blas_thread():
            before = _watch.begin()
            crew.start(work, workers)
            try:
                work(0)
            finally:
                errors = crew.wait()                # every worker has stopped
                _watch.end(before)
            if errors:
                raise errors[0]
    finally:
        crew.busy.release()
    return results


# ---------------------------------------------------------------- work deferred to idle threads
# A weight gradient is needed only by the optimizer's step, while the layers before it wait for
# their input gradient. So a layer's backward may hand its weight-gradient tasks to defer(): a
# worker takes them whenever it has nothing else to do (while the caller runs Python between
# layers, or finishes the last task of a run), and settle() (which every read of a Parameter's
# .grad calls) runs what is left on the caller and waits for the rest. A worker takes a deferred
# task only between jobs and checks for a new job before each one; the caller never waits for a
# worker that is inside a deferred task (a job's end waits only for the workers that joined it).
# Each task writes its own part and finish() adds them up in task order: the bits do not depend
# on which thread ran what, or when.

class _Deferred:
    """task(0), ..., task(n_tasks - 1), then finish(), from one defer() call."""
    __slots__ = ("task", "finish", "left", "error")

    def __init__(self, task, n_tasks, finish):
        self.task, self.finish, self.left, self.error = task, finish, n_tasks, None


_deferring = os.environ.get("MINICNN_DEFER", "1") != "0"
_queue = collections.deque()       # (group, i): the tasks no thread has taken yet
_unfinished = 0                    # groups whose finish() has not yet run
_failed = []                       # errors of finished groups, raised by settle()
_deferred_lock = threading.Lock()


def set_deferring(on):
    """Whether defer() may leave its work for later (True, the default; MINICNN_DEFER=0 at start-up
    turns it off). Returns the previous setting. Results are the same either way."""
    global _deferring
    settle()
    previous, _deferring = _deferring, bool(on)
    return previous


def deferrable():
    """Whether defer() would leave its tasks for later now: not with one thread, inside a task,
    while the machine is crowded (see _ContentionWatch) or with deferring off. A kernel that can
    also do the same work inside its own run asks first, and keeps the work in its run when not."""
    return _deferring and _threads > 1 and not getattr(_inside, "active", False) and not _watch.solo()


def defer(task, n_tasks, finish):
    """task(0), ..., task(n_tasks - 1) and then finish(), later: the worker threads take the tasks
    when they would otherwise wait, and settle() finishes what is left. When not deferrable(), runs
    them now instead (by run(): on the threads there are) and then finish(). The tasks must only run
    kernels (no run() inside), and what they read must stay unchanged until settle(); what no
    settle() asks for is done by the workers after the next job ends."""
    global _unfinished
    if n_tasks == 0 or not deferrable():
        run(task, n_tasks)
        finish()
        return
    _crew_of(_threads)
    group = _Deferred(task, n_tasks, finish)
    with _deferred_lock:
        _unfinished += 1
    _queue.extend((group, i) for i in range(n_tasks))


def _run_deferred():
    """Take one deferred task and run it (and its group's finish() when it was the group's last);
    False when there was none."""
    global _unfinished
    try:
        group, i = _queue.popleft()                 # atomic: each task is taken once
    except IndexError:
        return False
    started = time.perf_counter()
    try:
        group.task(i)
    except BaseException as error:
        group.error = group.error or error
    if _recording is not None:
        _recording.deferred.append((_recording._thread(), started, time.perf_counter()))
    with _deferred_lock:
        group.left -= 1
        last = group.left == 0
    if last:
        if group.error is None:
            try:
                group.finish()
            except BaseException as error:
                group.error = error
        if group.error is not None:
            _failed.append(group.error)
        with _deferred_lock:
            _unfinished -= 1
    return True


def settle():
    """Wait until every deferred task and finish() has run (running what no thread has taken yet on
    this one); then raise the first error one of them raised, if any."""
    if _unfinished:
        while _run_deferred():
            pass
        while _unfinished:                          # a worker is finishing one: a few hundred us
            time.sleep(0)
    if _failed:
        error = _failed[0]
        _failed.clear()
        raise error


class Recording:
    """What recording() saw: runs, a list of (label, start, end, tasks), times in seconds of
    time.perf_counter(); tasks a list of (thread, start, end), thread 0 the caller and 1, 2, ...
    the workers in the order they first took a task; deferred a list of (thread, start, end), one
    for each deferred task run while recording. label names the backend op that ran it and the
    function that handed out the tasks, e.g. 'conv2d_backward: numba_blocked.backward' (the op is
    the outermost caller whose name is in ops, a set of names; '?' when none is)."""

    def __init__(self, ops=()):
        self.runs, self.ops, self.deferred = [], frozenset(ops), []
        self._caller, self._workers = threading.get_ident(), {}

    def run(self, task, n_tasks, share_out):
        if threading.get_ident() != self._caller:      # another thread's runs are not this recording's
            return share_out(task, n_tasks)
        tasks = []

        def timed(i):
            started = time.perf_counter()
            try:
                return task(i)
            finally:
                tasks.append((self._thread(), started, time.perf_counter()))

        label = self._label(sys._getframe(2))
        started = time.perf_counter()
        try:
            return share_out(timed, n_tasks)
        finally:
            self.runs.append((label, started, time.perf_counter(), tasks))

    def _thread(self):
        ident = threading.get_ident()
        return 0 if ident == self._caller else self._workers.setdefault(ident, len(self._workers) + 1)

    def _label(self, frame):
        code = frame.f_code
        where = f"{frame.f_globals.get('__name__', '?').rsplit('.', 1)[-1]}.{code.co_name}"
        op = "?"
        for _ in range(12):                  # the op is a few calls up: op -> algorithm -> helper -> run
            if frame is None:
                break
            if frame.f_code.co_name in self.ops:
                op = frame.f_code.co_name
            frame = frame.f_back
        return f"{op}: {where}"


_recording = None


@contextlib.contextmanager
def recording(ops=()):
    """Within: every run() this thread makes (not the nested ones inside a task) and each of its
    tasks is timed into the Recording this yields. ops: the backend's op names, so that runs are
    labelled by the op they belong to. Costs a few microseconds a task; results are the same."""
    global _recording
    previous, _recording = _recording, Recording(ops)
    try:
        yield _recording
    finally:
        _recording = previous


class _ContentionWatch:
    """Whether other processes want these cores: then the crew's threads wait for each other while
    the scheduler runs someone else (LeNet fell from 7,000 to 2,000 images/s on 2 threads beside one
    busy process, while one thread alone keeps its own core and 5,700). The sign is the caller being
    preempted: its involuntary context switches per second of crew work (a quiet machine gives
    almost none; a crowded one one every few milliseconds; waits for a slower worker are voluntary
    and do not count). Above SWITCHES_PER_SECOND in CROWDED_IN_A_ROW windows of WINDOW seconds of
    crew jobs one after another, run() keeps to the calling thread for a while (0.5 s, doubling to
    8 s while the crowd stays), then tries the crew again. One window is not enough: a quiet machine
    gives a crowded one now and then (2 of 84 in 8 s of LeNet steps; a kernel thread, another
    library's threads finishing), a busy one nearly all of them (124 of 130 beside one busy process).
    Results are the same either way; MINICNN_ADAPT=0 turns this off."""
    WINDOW = 0.05
    SWITCHES_PER_SECOND = 60.0
    CROWDED_IN_A_ROW = 2
    FIRST_BACKOFF, LONGEST_BACKOFF = 0.5, 8.0

    def __init__(self):
        self.enabled = os.environ.get("MINICNN_ADAPT", "1") != "0" and hasattr(resource, "RUSAGE_THREAD")
        self.wall = self.switches = 0.0
        self.solo_until, self.backoff = 0.0, self.FIRST_BACKOFF
        self.crowded = 0                            # crowded windows in a row
        self.solo_periods = 0                       # how often it kept to one thread (for benchmarks)

    def solo(self):
        return self.enabled and time.perf_counter() < self.solo_until

    def begin(self):
        if not self.enabled:
            return None
        return time.perf_counter(), resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw

    def end(self, before):
        if before is None:
            return
        now = time.perf_counter()
        self.wall += now - before[0]
        self.switches += resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw - before[1]
        if self.wall < self.WINDOW:
            return
        if self.switches <= self.SWITCHES_PER_SECOND * self.wall:
            self.crowded, self.backoff = 0, self.FIRST_BACKOFF
        else:
            self.crowded += 1
            if self.crowded >= self.CROWDED_IN_A_ROW:
                self.solo_until, self.solo_periods = now + self.backoff, self.solo_periods + 1
                self.backoff = min(self.backoff * 2, self.LONGEST_BACKOFF)
                self.crowded = 0
        self.wall = self.switches = 0.0


_watch = _ContentionWatch()


def contention_state():
    """{'enabled', 'solo' (keeping to one thread now), 'solo_periods'}: what the contention watch did."""
    return {"enabled": _watch.enabled, "solo": _watch.solo(), "solo_periods": _watch.solo_periods}


def _crew_of(n):
    global _crew
    if _crew is None:
        _crew = _Crew(n)
    return _crew


def _forget_crew():
    """A forked child has only the thread that forked: it starts a crew of its own when it needs one."""
    global _crew, _unfinished
    _crew = None
    _queue.clear()                                  # the threads that were running them are gone
    _unfinished = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_crew)


# Handing work to a sleeping thread cost 20-100 us on the virtual machines we measure on (the idle
# core halts and must be woken), and a LeNet step hands out 4 jobs, each waited for at its end. So a
# thread that has finished polls for the next job, and the caller for the end of a job, in a Numba
# loop that holds no GIL (reading a flag with an atomic load), for up to SPIN_LOADS reads (1.3 ms here)
# before it sleeps.
SPIN_LOADS = 5_000_000

# A worker that sees a job returns to Python and takes the GIL, which the caller holds for its own
# first task's prelude (until its first kernel): it went to sleep on the GIL, its vCPU halted, and
# woke 40-66 us later (these VMs halt an idle vCPU at once: cpuidle haltpoll, guest_halt_poll_ns=0).
# Spinning SETTLE_SECONDS longer without the GIL, it mostly finds the GIL free: its first task
# starts 13-20 us after the caller's instead of 41-66 us (ResNet14 at batch 64, AMD EPYC), and the
# steps, in-process A/B: LeNet 2.38 -> 2.22 ms, MnistCNN 8.61 -> 8.33, MobileNetMNIST 52.3 -> 50.6,
# ResNet14 47.2/50.2/53.8 -> 46.8/49.0/53.4 (batch 256: 218 -> 208). 10 us helped less, 35 us no more.
SETTLE_SECONDS = 20e-6


@intrinsic
def _load_acquire(typingctx, flags, i):
    """flags[i], read with an atomic load: the loop below sees other threads' stores."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [args[1]])
        return builder.load_atomic(pointer, "acquire", array_type.dtype.bitwidth // 8)
    return flags.dtype(flags, i), codegen


@intrinsic
def _store_release(typingctx, flags, i, value):
    """flags[i] = value, stored atomically: a thread spinning with _load_acquire sees it."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, [args[1]])
        stored = context.cast(builder, args[2], signature.args[2], array_type.dtype)
        builder.store_atomic(stored, pointer, "release", array_type.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(flags, i, value), codegen


@njit(cache=True, nogil=True)
def _spin_while_equal(flags, i, value, max_loads):
    """Whether flags[i] became different from value within max_loads reads."""
    for _ in range(max_loads):
        if _load_acquire(flags, i) != value:
            return True
    return False


def _loads_in(flags, seconds):
    """How many of _settle's reads take about `seconds` on this CPU (the fastest of three timings)."""
    _settle(flags, 0, 1000)
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        _settle(flags, 0, 200_000)
        best = min(best, time.perf_counter() - started)
    return int(200_000 * seconds / max(best, 1e-9))


@njit(cache=True, nogil=True)
def _settle(flags, i, loads):
    """loads more atomic reads of flags[i] (a pause that holds no GIL)."""
    total = 0
    for _ in range(loads):
        total += _load_acquire(flags, i)
    return total


@njit(cache=True, nogil=True)
def _store_then_spin_while_equal(flags, store_at, stored, i, value, max_loads, settle_loads):
    """flags[store_at] = stored, then _spin_while_equal(flags, i, value, max_loads), then (when the
    flag changed) settle_loads more reads before returning (see SETTLE_SECONDS). The store is made
    without the GIL: a thread that waits for it can take the GIL at once (set from Python, the
    store was seen while this thread still held the GIL for the call, and the waiter, made to sleep
    on the GIL, woke 30-40 us later)."""
    _store_release(flags, store_at, stored)
    came = _spin_while_equal(flags, i, value, max_loads)
    if came:
        _settle(flags, i, settle_loads)
    return came


class _Crew:
    """n - 1 daemon threads. start(work, workers) has threads 1 .. workers-1 run work(thread);
    wait() returns once those that joined the job have finished it, with the errors they raised.
    flags[0] counts the jobs started, flags[w] the last job thread w has finished. A worker joins a
    job only while it is open (wait() closes it): one busy with a deferred task when the job
    started and still busy when the caller has done every task is not waited for."""

    def __init__(self, n):
        self.flags = np.zeros(n, dtype=np.int64)
        self.job, self.errors, self.stopping, self.sleeping = None, [], False, 0
        self.open_job, self.joined = 0, []          # the job workers may join (0: none), who did
        self.door = threading.Lock()                # joining against closing
        self.wakeup = threading.Condition()
        self.busy = threading.Lock()                # held by the thread whose job is running
        _spin_while_equal(self.flags, 0, 0, 0)      # compiled (or loaded) here, not by the first job
        _store_then_spin_while_equal(self.flags, 0, 0, 0, 0, 0, 0)    # (it stores the 0 that is there)
        self.settle_loads = _loads_in(self.flags, SETTLE_SECONDS)
        for worker in range(1, n):
            threading.Thread(target=self._loop, args=(worker,), daemon=True, name=f"minicnn-{worker}").start()

    def start(self, work, workers):
        with self.door:
            self.job, self.workers, self.errors, self.joined = work, workers, [], []
            self.open_job = int(self.flags[0]) + 1
            self.flags[0] += 1
        if self.sleeping:
            with self.wakeup:
                self.wakeup.notify_all()

    def wait(self):
        with self.door:
            job, self.open_job = self.flags[0], 0
            joined = self.joined
        for worker in joined:
            if not _spin_while_equal(self.flags, worker, job - 1, SPIN_LOADS):
                while self.flags[worker] != job:
                    time.sleep(0.0001)
        return self.errors

    def stop(self):
        self.stopping = True
        self.start(None, 0)

    def _join(self, worker, job):
        """The work of job for this worker, or None when it is closed or not for this worker."""
        with self.door:
            if self.open_job != job or worker >= self.workers:
                return None
            self.joined.append(worker)
            self.flags[worker] = job - 1            # it may have missed jobs: wait() spins on this
            return self.job

    def _loop(self, worker):
        seen = 0
        job_came = _spin_while_equal(self.flags, 0, seen, SPIN_LOADS)
        while True:
            if not job_came:
                with self.wakeup:
                    self.sleeping += 1
                    while self.flags[0] == seen:
                        self.wakeup.wait()
                    self.sleeping -= 1
            seen = int(self.flags[0])
            if self.stopping:
                return
            work = self._join(worker, seen)
            if work is not None:
                try:
                    work(worker)
                except BaseException as error:      # handed to the caller by wait()
                    self.errors.append(error)
            if _queue:                              # deferred tasks until the next job comes, the
                _store_then_spin_while_equal(self.flags, worker, seen, 0, seen, 0, 0)   # job reported done first
                while self.flags[0] == seen and _run_deferred():
                    pass
            job_came = _store_then_spin_while_equal(self.flags, worker, seen, 0, seen, SPIN_LOADS,
                                                    self.settle_loads)       # job done (stored again if so)


class _OneBlasThread:
    """The context manager one_blas_thread() returns (a class: a generator-based one cost 1 us more
    per use, and a LeNet step enters this ~25 times)."""

    def __enter__(self):
        global _blas
        self.before = None
        if getattr(_inside, "blas", False):
            return self
        if _blas is None:
            from threadpoolctl import ThreadpoolController
            _blas = ThreadpoolController().select(user_api="blas").lib_controllers
        self.before = [lib.get_num_threads() for lib in _blas]
        for lib, n in zip(_blas, self.before):
            if n != 1:
                lib.set_num_threads(1)
        _inside.blas = True
        return self

    def __exit__(self, *exc):
        if self.before is None:
            return
        _inside.blas = False
        for lib, n in zip(_blas, self.before):
            if n != 1:
                lib.set_num_threads(n)


def one_blas_thread():
    """NumPy's BLAS on one thread inside (a context manager): minicnn's threads are the only ones
    computing. Calls threadpoolctl's per-library controls directly (its limit() re-reads every
    library's state, ~2 us a call). Nested uses, and uses from inside a task, change nothing."""
    return _OneBlasThread()
