"""Run by tests/test_distributed.py under ``mpiexec -n 2``: one scenario per invocation.

    mpiexec -n 2 python tests/distributed_worker.py SCENARIO OUTDIR

Each rank checks what it can itself (its weights against a one-process run it computes too, its
weights against the other rank's) and raises on a difference, which stops the job with a message.
"""
import hashlib
import os
import sys

import numpy as np

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]
import minicnn as mc  # noqa: E402
from minicnn import data, distributed as dist, nn, train  # noqa: E402
from test_train import toy_problem  # noqa: E402

B = 8                      # the one-process batch; each of the 2 ranks takes B / 2


def same_on_every_rank(world, model, what):
    digest = [hashlib.sha256(np.ascontiguousarray(mc.backend.to_numpy(v)).tobytes()).hexdigest()
              for v in model.state_dict().values()]
    if len(set(map(tuple, world.gather_objects(digest)))) != 1:
        raise AssertionError(f"{what}: the ranks' weights differ")


def close(a, b, what, rtol=1e-12, noise=()):
    """a equals b to rtol (and 1e-12 absolute: Adam's first step divides a gradient entry by its own size,
    so an entry that is the small sum of large cancelling terms carries their rounding into the weight),
    except parameters in noise: their gradient is zero
    but for rounding (a convolution's bias before batch norm), and Adam's step divides rounding
    noise by its own size: any two summation orders differ there by up to a step."""
    for k in a:
        atol = 1e-2 if k in noise else 1e-9 if noise and "running" in k else 1e-12   # the noisy bias moves the mean
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=f"{what}: {k}")


def equivalence(world, out):
    """Each model without dropout, 5 SGD and 5 Adam steps: 2 ranks at batch B/2 = 1 process at B."""
    rng = np.random.default_rng(0)
    steps = [(rng.standard_normal((B, 1, 28, 28)), rng.integers(0, 10, B)) for _ in range(5)]
    checked = []
    for name in ("lenet", "tinybnnet", "resnet14"):
        for opt_name, kwargs in (("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)), ("Adam", dict(lr=1e-3))):
            mc.manual_seed(0)
            single = mc.models.get_model(name).to(np.float64)
            mc.manual_seed(0)
            model = dist.prepare(mc.models.get_model(name).to(np.float64), world)
            opts = [getattr(mc.optim, opt_name)(m.parameters(), **kwargs) for m in (single, model)]
            reducer = dist.GradientReducer(model, world, bucket_bytes=4096)      # several buckets
            loss_single, loss_dist = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
            half = slice(world.rank * B // 2, (world.rank + 1) * B // 2)
            noise = set()
            for step, (x, y) in enumerate(steps):
                loss_single(single(x), y)
                opts[0].zero_grad()
                single.backward(loss_single.backward())
                largest = max(float(np.abs(p.grad).max()) for p in single.parameters())
                noise |= {k for k, p in single.named_parameters() if np.abs(p.grad).max() < 1e-12 * largest}
                opts[0].step()
                loss_dist(model(x[half]), y[half])
                opts[1].zero_grad()
                reducer.begin()
                model.backward(loss_dist.backward())
                reducer.finish()
                opts[1].step()
                close(model.state_dict(), single.state_dict(), f"{name} {opt_name} step {step + 1}",
                      noise=noise if opt_name == "Adam" else ())
                same_on_every_rank(world, model, f"{name} {opt_name} step {step + 1}")
            checked.append(f"{name}/{opt_name}" + (f" (rounding-only gradients: {sorted(noise)})" if noise else ""))
    if world.is_main:
        print("equal:", ", ".join(checked))


def toy(n=96):
    return toy_problem(n, seed=1)


def fit_run(world, epochs, checkpoint_dir=None, resume=None, size=None, rank=None):
    size = world.size if size is None else size
    rank = world.rank if rank is None else rank
    mc.manual_seed(0)
    model = mc.models.TinyBNNet(num_classes=4).to(np.float64)
    if size > 1:
        model = dist.prepare(model, world)
    opt = mc.optim.Adam(model.parameters(), lr=3e-3)
    sched = mc.optim.StepLR(opt, 2, 0.5)
    sampler = dist.DistributedSampler(96, size, rank, seed=3)
    loader = data.DataLoader(toy(), 16 // size, sampler=sampler, dtype=np.float64, seed=5,
                             transform=data.RandomCrop(28, padding=1))
    val = data.DataLoader(toy(40), 8, dtype=np.float64,
                          sampler=dist.DistributedSampler(40, size, rank, shuffle=False, pad=False))
    history = train.fit(model, nn.CrossEntropyLoss(), opt, loader, epochs, val_loader=val, scheduler=sched,
                        checkpoint_dir=checkpoint_dir, resume=resume, log=None, progress=False,
                        distributed=world if size > 1 else None)
    return model, history


def fit_resume(world, out):
    """Distributed fit: resumed = uninterrupted bit for bit; every rank has one history."""
    full, history = fit_run(world, 4, os.path.join(out, "full"))
    fit_run(world, 2, os.path.join(out, "half"))
    world.barrier()
    resumed, _ = fit_run(world, 4, resume=os.path.join(out, "half", "last.npz"))
    for k, v in full.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)
    same_on_every_rank(world, full, "fit")
    rows = world.gather_objects(history.rows)
    assert all(r == rows[0] for r in rows), "the ranks' histories differ"
    if world.is_main:
        print("resumed equals uninterrupted; histories equal;", len(history), "epochs")


def fit_equals_one_process(world, out):
    """fit without augmentation: 2 ranks at 8 = 1 process at 16 (same permutation: the sampler's)."""
    def run(size, rank):
        mc.manual_seed(0)
        model = mc.models.LeNet(num_classes=4).to(np.float64)
        if size > 1:
            model = dist.prepare(model, world)
        opt = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = data.DataLoader(toy(), 16 // size, sampler=dist.DistributedSampler(96, size, rank, seed=3),
                                 dtype=np.float64)
        train.fit(model, nn.CrossEntropyLoss(), opt, loader, 2, log=None, progress=False,
                  distributed=world if size > 1 else None)
        return model
    two = run(world.size, world.rank)
    one = run(1, 0)
    close(two.state_dict(), one.state_dict(), "fit: 2 ranks against 1 process", rtol=1e-10)
    if world.is_main:
        print("fit: 2 ranks equal 1 process")


def raise_on_rank_1(world, out):
    class Failing(nn.CrossEntropyLoss):
        calls = 0

        def forward(self, logits, labels):
            Failing.calls += 1
            if world.rank == 1 and Failing.calls == 3:
                raise ValueError("a deliberate failure on rank 1")
            return super().forward(logits, labels)
    model = dist.prepare(mc.models.LeNet(num_classes=4), world)
    loader = data.DataLoader(toy(), 8, sampler=dist.DistributedSampler(96, world.size, world.rank))
    train.fit(model, Failing(), mc.optim.SGD(model.parameters(), lr=0.01), loader, 2, log=None, progress=False,
              distributed=world)


def kill_rank_1(world, out):
    import signal
    model = dist.prepare(mc.models.LeNet(num_classes=4), world)
    loader = data.DataLoader(toy(), 8, sampler=dist.DistributedSampler(96, world.size, world.rank))
    if world.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    train.fit(model, nn.CrossEntropyLoss(), mc.optim.SGD(model.parameters(), lr=0.01), loader, 50, log=None,
              progress=False, distributed=world)


def nccl_equivalence(world, out):
    """On a GPU per rank: the gradients summed by NCCL on the devices; LeNet and TinyBNNet in float64,
    5 SGD steps, 2 ranks at batch B/2 against 1 process at B on the CPU (cuBLAS adds in another
    order: rtol 1e-9), and the same bits on both ranks."""
    rng = np.random.default_rng(0)
    steps = [(rng.standard_normal((B, 1, 28, 28)), rng.integers(0, 10, B)) for _ in range(5)]
    half = slice(world.rank * B // 2, (world.rank + 1) * B // 2)
    for name in ("lenet", "tinybnnet"):
        mc.manual_seed(0)
        single = mc.models.get_model(name).to(np.float64)
        mc.manual_seed(0)
        model = dist.prepare(mc.models.get_model(name).to(np.float64).to("cuda"), world)
        opts = [mc.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (single, model)]
        reducer = dist.GradientReducer(model, world, bucket_bytes=4096)
        if reducer.device is None:
            raise AssertionError("the reducer did not take the device collective for CuPy arrays")
        loss_single, loss_dist = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
        to_gpu = mc.backend.device_converter("cuda")
        for step, (x, y) in enumerate(steps):
            loss_single(single(x), y)
            opts[0].zero_grad()
            single.backward(loss_single.backward())
            opts[0].step()
            loss_dist(model(to_gpu(x[half])), to_gpu(y[half]))
            opts[1].zero_grad()
            reducer.begin()
            model.backward(loss_dist.backward())
            reducer.finish()
            opts[1].step()
            on_host = {k: mc.backend.to_numpy(v) for k, v in model.state_dict().items()}
            close(on_host, single.state_dict(), f"{name} on GPUs, step {step + 1}", rtol=1e-9)
            same_on_every_rank(world, model, f"{name} on GPUs, step {step + 1}")
    if world.is_main:
        print(f"NCCL: 2 ranks on GPUs {world.gather_objects(world.gpu)} equal 1 process")


def device_collective_branch(world, out):
    """The reducer's path for a device collective, run on the CPU: a stand-in with NcclSum's
    methods (zeros, start, done, finish) that sums with MPI; its buckets hold the gradients as the
    device buffers would. LeNet, 5 SGD steps in float64: the same bits as the MPI path."""
    class StandInSum:
        def __init__(self, comm):
            self.comm, self.started = comm, 0

        def zeros(self, n, dtype):
            return np.zeros(n, dtype=dtype)

        def start(self, buffer):
            self.started += 1
            return self.comm.Iallreduce(world.MPI.IN_PLACE, buffer, op=world.MPI.SUM)

        def done(self, handles):
            return world.MPI.Request.Testall(handles)

        def finish(self, handles):
            pass

    rng = np.random.default_rng(0)
    steps = [(rng.standard_normal((B // 2, 1, 28, 28)), rng.integers(0, 10, B // 2)) for _ in range(5)]
    states = []
    for stand_in in (False, True):
        mc.manual_seed(0)
        model = dist.prepare(mc.models.LeNet().to(np.float64), world)
        opt = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if stand_in:
            real = mc.backend.device_collective
            mc.backend.device_collective = lambda comm, like: StandInSum(comm)
        try:
            reducer = dist.GradientReducer(model, world, bucket_bytes=4096)
        finally:
            if stand_in:
                mc.backend.device_collective = real
        loss = nn.CrossEntropyLoss()
        for x, y in steps:
            loss(model(x), y)
            opt.zero_grad()
            reducer.begin()
            model.backward(loss.backward())
            reducer.finish()
            opt.step()
        if stand_in and not reducer.device.started:
            raise AssertionError("the stand-in collective was never used")
        states.append(model.state_dict())
    for k in states[0]:
        if not np.array_equal(states[0][k], states[1][k]):
            raise AssertionError(f"device-collective path differs from the MPI path at {k}")
    if world.is_main:
        print(f"device-collective path: the same bits as MPI's over {len(reducer.buckets)} buckets")


def different_models(world, out):
    model = mc.models.LeNet() if world.rank == 0 else mc.models.TinyBNNet()
    dist.prepare(model, world)


if __name__ == "__main__":
    scenario, out = sys.argv[1], sys.argv[2]
    world = dist.init(timeout=float(os.environ.get("WORKER_TIMEOUT", 60)),
                      device="cuda" if scenario.startswith("nccl") else "cpu")
    globals()[scenario](world, out)
