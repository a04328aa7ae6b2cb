"""minicnn cuts a layer's work into tasks by the shapes alone and adds partial sums in task order,
so results do not depend on the number of threads (backend.cores): one training step of ConvNet,
MnistCNN and FashionCNN on 1, 2 and 3 threads must agree bit for bit (each run in its own process,
with MINICNN_THREADS)."""
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("numba")

# batch 40: several tasks in every convolution and in the 1600x512 matrix products
STEP = r"""
import sys, numpy as np, minicnn as mc
out = {}
for name in ("convnet", "mnistcnn", "fashioncnn"):
    mc.manual_seed(0)
    model = mc.models.get_model(name)
    x = np.random.default_rng(1).standard_normal((40, 1, 28, 28)).astype(np.float32)
    y = np.arange(40) % 10
    loss_fn = mc.nn.CrossEntropyLoss()
    out[name + "/loss"] = np.array(loss_fn(model(x), y))
    out[name + "/dx"] = model.backward(loss_fn.backward())
    for k, p in model.named_parameters():
        out[name + "/" + k] = p.grad
np.savez(sys.argv[1], **out)
"""


@pytest.fixture
def two_threads(monkeypatch):
    """cores on 2 threads with deferring on for the test, the contention watch off (on a crowded
    machine it would keep to one thread, and defer() would run its tasks at once); restored after."""
    from minicnn.backend import cores
    monkeypatch.setattr(cores._watch, "enabled", False)
    threads, deferring = cores.threads(), cores.set_deferring(True)
    cores.set_threads(2)
    yield
    cores.set_threads(threads)                      # (settles what a test left deferred)
    cores.set_deferring(deferring)


def run_step(threads, path):
    env = dict(os.environ, MINICNN_THREADS=str(threads), MINICNN_BACKEND="numba")
    subprocess.run([sys.executable, "-c", STEP, str(path)], check=True, env=env, timeout=600)
    with np.load(path) as f:
        return dict(f)


@pytest.mark.parametrize("threads", [2, 3])
def test_thread_counts_agree_bit_for_bit(tmp_path, threads):
    one, many = run_step(1, tmp_path / "one.npz"), run_step(threads, tmp_path / "many.npz")
    assert one.keys() == many.keys() and len(one) > 20
    for key in one:
        np.testing.assert_array_equal(one[key], many[key], err_msg=key)


def test_run_returns_results_in_task_order_and_uses_every_thread(two_threads):
    from minicnn.backend import cores
    seen = set()

    def task(i):
        seen.add(threading.get_ident())
        time.sleep(0.002)                       # long enough that the worker takes some
        return i * i
    assert cores.run(task, 20) == [i * i for i in range(20)]
    assert len(seen) == 2 and threading.get_ident() in seen
    cores.set_threads(1)
    seen.clear()
    assert cores.run(task, 3) == [0, 1, 4] and seen == {threading.get_ident()}


def test_a_worker_reports_a_finished_job_without_the_gil():
    """The flag store that tells the caller a job is done is made inside the nogil spin that then
    waits for the next job: it lands, and the spin returns whether the next job came."""
    from minicnn.backend import cores
    flags = np.zeros(3, dtype=np.int64)
    assert not cores._store_then_spin_while_equal(flags, 2, 7, 0, 0, 1000, 10**9)    # no new job: no settling
    assert flags.tolist() == [0, 0, 7]
    flags[0] = 5
    assert cores._store_then_spin_while_equal(flags, 1, 4, 0, 4, 1000, 1000)        # job 5 is there
    assert flags.tolist() == [5, 4, 7]


def test_a_worker_settles_about_the_time_asked_before_taking_the_gil():
    """The pause after a job came (SETTLE_SECONDS) is counted in reads calibrated on this CPU: it lasts
    about what was asked (not zero, not milliseconds), and a crew's calibration is in that range."""
    import time

    from minicnn.backend import cores
    flags = np.zeros(2, dtype=np.int64)
    loads = cores._loads_in(flags, 200e-6)
    started = time.perf_counter()
    cores._settle(flags, 0, loads)
    took = time.perf_counter() - started
    assert 50e-6 < took < 5e-3, took
    assert 0 < cores._crew_of(2).settle_loads < 100 * loads


def test_run_raises_the_error_after_every_task_has_stopped(two_threads):
    from minicnn.backend import cores
    finished = []

    def task(i):
        if i == 0:                              # (after the worker has joined: it finishes the rest)
            time.sleep(0.005)
            raise RuntimeError("task 0 failed")
        time.sleep(0.01)
        finished.append(i)
    with pytest.raises(RuntimeError, match="task 0 failed"):
        cores.run(task, 4)
    count = len(finished)
    time.sleep(0.05)
    assert len(finished) == count == 3           # nothing still running after the raise


def test_nested_run_stays_on_its_thread(two_threads):
    from minicnn.backend import cores
    inner = cores.run(lambda i: cores.run(lambda j: (i, j, threading.get_ident()), 3), 4)
    for i, results in enumerate(inner):                 # each inner run on one thread, in order
        assert [r[:2] for r in results] == [(i, 0), (i, 1), (i, 2)] and len({r[2] for r in results}) == 1


def test_recording_times_every_task_of_each_outer_run_and_names_its_op(two_threads):
    from minicnn.backend import cores

    def task(i):
        time.sleep(0.002)                       # long enough that the worker takes some
        return cores.run(lambda j: i * 10 + j, 2)      # a nested run: part of this task

    def my_op():
        return cores.run(task, 8)

    assert cores.recording is not None and cores._recording is None
    with cores.recording(ops={"my_op"}) as record:
        results = my_op()
        cores.run(lambda i: i, 3)               # called by no op: '?'
    assert results == [[i * 10, i * 10 + 1] for i in range(8)]
    assert cores._recording is None             # off again outside
    (label, start, end, tasks), (other, *_rest, few) = record.runs
    assert label == "my_op: test_threads.my_op" and other.startswith("?: ") and len(few) == 3
    assert len(tasks) == 8 and {t[0] for t in tasks} == {0, 1}      # the caller is 0, the worker 1
    assert all(start <= t_start <= t_end <= end for _, t_start, t_end in tasks)
    assert sum(t_end - t_start for _, t_start, t_end in tasks) >= 8 * 0.002
    assert cores.run(lambda i: -i, 2) == [0, -1] and len(record.runs) == 2     # nothing recorded after
    with cores.recording() as record:
        other = threading.Thread(target=cores.run, args=(lambda i: i, 2))
        other.start()
        other.join()
        cores.run(lambda i: i, 2)
    assert len(record.runs) == 1 and record.runs[0][0].startswith("?: ")     # only this thread's run


def test_deferred_tasks_run_on_the_idle_worker_and_settle_waits_for_their_finish(two_threads):
    from minicnn.backend import cores
    done, finished = [], []

    def task(i):
        time.sleep(0.003)
        done.append((i, threading.get_ident()))

    cores.defer(task, 6, lambda: finished.append(len(done)))
    assert len(done) == 0                       # nothing ran yet: no job has woken the worker
    cores.run(lambda i: i, 2)                   # the worker takes the deferred tasks after the job
    time.sleep(0.01)
    cores.settle()
    assert sorted(i for i, _ in done) == list(range(6)) and finished == [6]     # finish once, last
    assert len({thread for _, thread in done} - {threading.get_ident()}) == 1   # the worker took some
    cores.settle()                              # nothing left: returns at once
    assert finished == [6]


def test_a_job_does_not_wait_for_a_worker_busy_with_a_deferred_task(two_threads):
    """The caller runs a job's tasks itself when the worker is inside a deferred task, and returns
    without waiting for it (the worker joins only an open job)."""
    from minicnn.backend import cores
    started, release = threading.Event(), threading.Event()
    try:
        def slow(i):
            started.set()
            release.wait(10)

        cores.defer(slow, 1, lambda: None)
        cores.run(lambda i: i, 2)                   # the worker takes the deferred task after this
        assert started.wait(5)
        threading.Timer(3, release.set).start()     # (a caller that waits would hang 3 s, not forever)
        t0 = time.perf_counter()
        callers = cores.run(lambda i: threading.get_ident(), 4)
        took = time.perf_counter() - t0
        assert callers == [threading.get_ident()] * 4 and took < 1.0, took
        release.set()
        cores.settle()
    finally:
        release.set()


def test_settle_raises_a_deferred_tasks_error_once_and_skips_its_finish(two_threads):
    from minicnn.backend import cores
    finished = []

    def task(i):
        if i == 1:
            raise ValueError("deferred task 1 failed")

    cores.defer(task, 3, lambda: finished.append(True))
    cores.run(lambda i: i, 2)
    with pytest.raises(ValueError, match="deferred task 1 failed"):
        cores.settle()
    cores.settle()                              # raised once
    assert finished == []


@pytest.mark.parametrize("how", ["one thread", "deferring off", "inside a task"])
def test_defer_runs_its_tasks_at_once_when_nothing_could_take_them_later(how, two_threads):
    """... on the threads there are: with deferring off, as a run on both (not one after another on
    the caller, which made every blocked backward slower with deferring off)."""
    from minicnn.backend import cores
    done = []

    def task(i):
        time.sleep(0.005)
        done.append((i, threading.get_ident()))

    cores.set_deferring(how != "deferring off")
    cores.set_threads(1 if how == "one thread" else 2)
    if how == "inside a task":
        inside = cores.run(lambda _: (cores.deferrable(), cores.defer(task, 4, lambda: done.append("finish"))), 1)
        assert inside[0][0] is False
    else:
        assert cores.deferrable() is False
        cores.defer(task, 4, lambda: done.append("finish"))
    assert sorted(i for i, _ in done[:-1]) == [0, 1, 2, 3] and done[-1] == "finish"
    assert len({thread for _, thread in done[:-1]}) == (2 if how == "deferring off" else 1)


@pytest.mark.parametrize("model_name", ["resnet14", "mobilenetmnist"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deferred_weight_gradients_have_the_bits_of_the_undeferred(dtype, model_name, two_threads):
    """ResNet14's blocked 3x3 convolutions and MobileNetMNIST's blocked 1x1 ones sum their weight
    gradients in deferred tasks (seen in the recording), read through .grad after settling: every
    gradient and the updated parameters equal those of the same steps with deferring off, bit for
    bit, with accumulation over two backwards."""
    import minicnn as mc
    from minicnn import backend
    from minicnn.backend import contract, cores
    results = {}
    for deferring in (False, True):
        cores.set_deferring(deferring)
        with backend.use_backend("numba"):
            mc.manual_seed(0)
            model = mc.models.get_model(model_name).to(dtype)
            opt = mc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            loss_fn = mc.nn.CrossEntropyLoss()
            rng = np.random.default_rng(0)
            x = rng.standard_normal((24, 1, 28, 28)).astype(dtype)
            y = rng.integers(0, 10, 24)
            with cores.recording(contract.OPS) as record:
                for _ in range(2):
                    opt.zero_grad()
                    for _ in range(2):              # the second backward adds into .grad
                        loss_fn(model(x), y)
                        model.backward(loss_fn.backward(), input_grad=False)
                    opt.step()
            results[deferring] = [p.grad.copy() for p in model.parameters()] + \
                [p.data.copy() for p in model.parameters()]
            assert bool(record.deferred) == deferring
    assert len(results[True]) == len(results[False]) > 40
    for i, (a, b) in enumerate(zip(results[False], results[True])):
        np.testing.assert_array_equal(a, b, err_msg=str(i))


@pytest.mark.parametrize("shape, stride", [((9, 16, 12, 12), 1), ((9, 16, 13, 13), 2)])
@pytest.mark.parametrize("kernel", [1, 3])
def test_a_deferred_weight_gradient_is_final_after_settle(shape, stride, kernel, two_threads):
    """The op itself (blocked 3x3 and blocked 1x1, stride 1 and 2): dw comes back before its sums are
    done (deferred tasks recorded) and after settle() equals the reference backend's to rounding
    and the undeferred op's to the bit (deferring off, or the layer's data over the strategy's
    defer_weight_grad_max_bytes: dw's tasks then run with dx's). Without dw_may_wait (a direct
    caller that did not allow waiting) nothing is deferred: dw is final when the op returns."""
    from minicnn.backend import contract, cores, numba_ops, numba_strategy, numpy_ops
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((40, shape[1], kernel, kernel))
    padding = (kernel // 2, kernel // 2)
    with numba_strategy.use(blocked_pointwise_min=0):              # 1x1 by the blocked sums
        y, record = numba_ops.conv2d_forward(x, w, None, (stride, stride), padding, (1, 1), 1)
    assert kernel == 1 or record.algorithm == "blocked"
    dy = rng.standard_normal(y.shape)
    dws = {}
    for how, deferring, budget in (("off", False, 2**40), ("over budget", True, 0), ("deferred", True, 2**40)):
        cores.set_deferring(deferring)
        with numba_strategy.use(blocked_pointwise_min=0, defer_weight_grad_max_bytes=budget), \
                cores.recording(contract.OPS) as recorded:
            dx, dw, _ = numba_ops.conv2d_backward(dy, record, w, True, True)
            numba_ops.settle()
        assert bool(recorded.deferred) == (how == "deferred"), how
        dws[how] = dw.copy()
    with numba_strategy.use(blocked_pointwise_min=0), cores.recording(contract.OPS) as recorded:
        _, dw, _ = numba_ops.conv2d_backward(dy, record, w, True, False)    # the caller did not allow waiting
        dws["final at once"] = dw.copy()                               # (read before any settle)
    assert not recorded.deferred
    _, reference_record = numpy_ops.conv2d_forward(x, w, None, (stride, stride), padding, (1, 1), 1)
    _, expected, _ = numpy_ops.conv2d_backward(dy, reference_record, w, True, False)
    np.testing.assert_allclose(dws["deferred"], expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(dws["deferred"], dws["off"])
    np.testing.assert_array_equal(dws["deferred"], dws["over budget"])
    np.testing.assert_array_equal(dws["deferred"], dws["final at once"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_set_threads_rejects_bad_counts(bad):
    from minicnn.backend import cores
    with pytest.raises(ValueError, match="positive integer"):
        cores.set_threads(bad)


def test_bad_minicnn_threads_is_a_clear_error():
    env = dict(os.environ, MINICNN_THREADS="two")
    out = subprocess.run([sys.executable, "-c", "import minicnn.backend.cores"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "MINICNN_THREADS must be a positive integer, got 'two'" in out.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_with_threads_of_its_own():
    """A child forked after the worker threads started does not wait for threads it does not have."""
    code = r"""
import os, sys, numpy as np
from minicnn.backend import cores
cores.set_threads(2)
assert cores.run(lambda i: i, 8) == list(range(8))
pid = os.fork()
if pid == 0:
    ok = cores.run(lambda i: i * 2, 8) == [2 * i for i in range(8)]
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_blas_runs_on_one_thread_inside_minicnn_and_is_restored_after():
    from threadpoolctl import threadpool_info, threadpool_limits

    from minicnn.backend import cores
    with threadpool_limits(2, user_api="blas"):
        with cores.one_blas_thread():
            with cores.one_blas_thread():                      # nested: still one, still restored once
                assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
            assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {2}


@pytest.mark.parametrize("backend_name,inside", [("numba", 1), ("numpy", 2)])
def test_a_model_pass_holds_blas_at_one_thread_on_numba_only(backend_name, inside):
    """Sequential's forward and backward run in backend.pass_scope: on Numba, BLAS stays at one
    thread for the whole pass (every layer sees it) and is restored after; the NumPy backend
    leaves BLAS's own threads alone."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import minicnn as mc

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []

    class Probe(mc.nn.Module):
        def forward(self, x):
            seen.append(blas_threads())
            return x

        def backward(self, dy):
            seen.append(blas_threads())
            return dy

    net = mc.nn.Sequential(mc.nn.Linear(3, 4), Probe(), mc.nn.ReLU(), Probe(), mc.nn.Linear(4, 2))
    with threadpool_limits(2, user_api="blas"), mc.backend.use_backend(backend_name):
        y = net(np.ones((5, 3), dtype=np.float32))
        net.backward(np.ones_like(y))
        assert blas_threads() == {2}
    assert seen == [{inside}] * 4


FAULTS_OF_FREED_ACTIVATIONS = """
import resource
import numpy as np
import minicnn.backend.numba_ops  # loads the Numba backend
def activations():
    arrays = [np.ones(2 * 2**20, dtype=np.float32) for _ in range(3)]   # 8 MiB each, written
    del arrays
activations()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    activations()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_freed_activations_are_reused_without_page_faults():
    """With the Numba backend loaded, arrays freed by one pass are served again to the next without
    faulting their pages back in (host_memory.keep_freed_memory); MINICNN_KEEP_FREED=0 leaves
    glibc as it was, which gives the top of its heap back and faults ~10,000 pages here."""
    def faults(keep):
        env = dict(os.environ, MINICNN_KEEP_FREED=keep)
        result = subprocess.run([sys.executable, "-c", FAULTS_OF_FREED_ACTIVATIONS], env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)
    assert faults("1") < 500
    assert faults("0") > 5000


def test_scratch_is_reused_per_thread_but_not_kept_when_huge():
    """Chunk buffers are reused across calls on the same thread (no page faults per call), never
    shared between threads, and not kept at all above the strategy's scratch_keep_bytes."""
    from minicnn.backend import numba_common
    a = numba_common._scratch("test", (8, 16), np.float32)
    assert np.shares_memory(a, numba_common._scratch("test", (4, 4), np.float64))
    assert numba_common._scratch("test", (8, 16), np.float32).shape == (8, 16)
    grown = numba_common._scratch("test", (64, 16), np.float32)           # the buffer grows: views follow it
    again = numba_common._scratch("test", (8, 16), np.float32)
    assert np.shares_memory(again, grown) and not np.shares_memory(again, a)
    a = again
    aligned = numba_common._scratch("test aligned", (5, 7), np.float32, align=64)
    assert aligned.ctypes.data % 64 == 0 and aligned.shape == (5, 7) and aligned.flags.c_contiguous
    assert numba_common._scratch("test aligned", (5, 7), np.float32, align=64) is aligned
    other = []
    thread = threading.Thread(target=lambda: other.append(numba_common._scratch("test", (8, 16), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(a, other[0])
    from minicnn.backend import numba_strategy
    n = numba_strategy.current().scratch_keep_bytes // 4 + 1
    big = numba_common._scratch("test", (n,), np.float32)
    assert big.shape == (n,) and not np.shares_memory(big, numba_common._scratch("test", (n,), np.float32))
    big = numba_common._scratch("test", (n,), np.float32, align=64)
    assert big.shape == (n,) and big.ctypes.data % 64 == 0


def test_contention_watch_keeps_to_one_thread_while_the_caller_is_preempted(monkeypatch):
    """The watch's rule, with the preemption count faked: many involuntary switches over two windows
    of crew work in a row -> the calling thread alone for a while (growing), then the crew again; one
    crowded window between quiet ones changes nothing; a quiet window -> the backoff reset. (Its speed
    effect is measured by benchmarks/speed.py --load.)"""
    from types import SimpleNamespace

    from minicnn.backend import cores
    watch = cores._ContentionWatch()
    if not watch.enabled:
        pytest.skip("no per-thread rusage here")
    clock, switches = [100.0], [0]
    monkeypatch.setattr(cores.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(cores.resource, "getrusage", lambda who: SimpleNamespace(ru_nivcsw=switches[0]))

    def job(seconds, preempted):
        before = watch.begin()
        clock[0] += seconds
        switches[0] += preempted
        watch.end(before)

    job(0.06, 1)                                    # quiet: 17 switches a second
    assert not watch.solo()
    job(0.06, 30)                                   # crowded: 500 a second, once
    job(0.06, 1)
    job(0.06, 30)
    assert not watch.solo() and watch.solo_periods == 0
    job(0.06, 30)                                   # twice in a row
    assert watch.solo() and watch.solo_periods == 1
    clock[0] += 0.6                                 # after the first backoff (0.5 s): try the crew again
    assert not watch.solo()
    job(0.06, 30)
    assert not watch.solo()
    job(0.06, 30)
    assert watch.solo()
    clock[0] += 0.6
    assert watch.solo()                             # the second backoff is 1 s
    clock[0] += 0.5
    job(0.03, 0)
    job(0.03, 0)                                    # a quiet window resets it
    assert not watch.solo() and watch.backoff == watch.FIRST_BACKOFF


def test_contention_watch_off_with_minicnn_adapt_0(monkeypatch):
    from minicnn.backend import cores
    monkeypatch.setenv("MINICNN_ADAPT", "0")
    assert not cores._ContentionWatch().enabled
