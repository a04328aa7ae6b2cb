"""Data-parallel training on this machine, and a cost model for many machines.

    python benchmarks/distributed.py [--models lenet,mnistcnn] [--batches 64,256] [--steps 30] [--repeats 3]
    python benchmarks/distributed.py --tiny          # a few steps: CI keeps it alive

1. One process with 2 threads against 2 MPI ranks with 1 thread each (mpiexec -n 2), at the same
   global batch: images/s (median of --repeats rounds of --steps steps) and, for the ranks, each
   step's time split into compute (forward and backward, which starts the all-reduces), waiting for
   the all-reduces after backward, and the optimizer step.
2. All-reduce latency and bandwidth between 2 ranks here: blocking Allreduce of 8 B .. 16 MiB, fit
   to t = a + n * b (a: the per-message cost, b: seconds per byte).
3. The cost model: ring all-reduce over p nodes, t(p, n) = 2 (p - 1) a + 2 (p - 1) / p * n * b, with
   a and b measured here and for 10, 25 and 100 Gb/s links (b from the line rate, a = 10 us: an
   assumption, a typical small-message latency of such networks), the compute of one node measured
   here (its two cores), communication overlapped with backward (at most backward's share of the
   step is hidden). Scaling efficiency = compute / (compute + exposed communication); images/s =
   p * per-node batch / step time. Projected to 8, 64 and 256 nodes; a plot goes to
   benchmarks/distributed-scaling.png. Results: results/distributed-DATE.json.
A measurement, not a test; the machine's other load is reported.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
LINKS = {"10 Gb/s": 10e9, "25 Gb/s": 25e9, "100 Gb/s": 100e9}
ASSUMED_LINK_LATENCY = 10e-6
NODES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BACKWARD_SHARE = 0.6          # of a training step, measured below per model where possible


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


# ------------------------------------------------------------------ the measuring processes

def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    root = os.environ.get("MINICNN_DATA")
    if root and os.path.isdir(os.path.join(root, "mnist")):
        import minicnn as mc
        ds = mc.data.MNIST(train=True, download=False)
        return ((ds.data[:n].astype(np.float32) / 255 - 0.1307) / 0.3081), ds.targets[:n]
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def measure(model_name, batch, steps, repeats, distributed):
    """Per round: images/s and the mean split of a step (seconds); returns the rounds (rank 0's view)."""
    import minicnn as mc
    from minicnn import distributed as dist
    world = dist.init() if distributed else None
    size, rank = (world.size, world.rank) if world else (1, 0)
    mc.manual_seed(0)
    model = mc.models.get_model(model_name)
    if world:
        model = dist.prepare(model, world)
    loss_fn = mc.nn.CrossEntropyLoss()
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    reducer = dist.GradientReducer(model, world) if world else None
    local = batch // size
    x, y = batches(batch * 8)
    rounds = []
    for r in range(repeats + 1):                             # round 0 warms up (compiles)
        split = np.zeros(3)
        started = time.perf_counter()
        for i in range(steps if r else 3):
            k = (i % 8) * batch + rank * local
            t0 = time.perf_counter()
            loss_fn(model(x[k:k + local]), y[k:k + local])
            opt.zero_grad()
            if reducer:
                reducer.begin()
            model.backward(loss_fn.backward(), input_grad=False)
            t1 = time.perf_counter()
            if reducer:
                reducer.finish()
            t2 = time.perf_counter()
            opt.step()
            split += (t1 - t0, t2 - t1, time.perf_counter() - t2)
        elapsed = time.perf_counter() - started
        if r:
            n = steps
            rounds.append({"images_per_second": n * batch / elapsed, "compute": split[0] / n, "wait": split[1] / n,
                           "step": split[2] / n})
        if world:
            world.barrier()
    return rounds if rank == 0 else None


def allreduce_sizes(repeats=20):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rows = []
    for exponent in range(3, 25, 2):
        n = 2 ** exponent
        buffer = np.ones(n // 4, np.float32)
        comm.Barrier()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            times.append(time.perf_counter() - t)
        rows.append((n, statistics.median(times)))
    return rows if comm.rank == 0 else None


def worker(args):
    if args.role == "allreduce":
        result = allreduce_sizes()
    else:
        result = measure(args.model, args.batch, args.steps, args.repeats, args.role == "ranks")
    if result is not None:
        print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------ the orchestrator

def run(command, threads):
    env = {**os.environ, "MINICNN_THREADS": str(threads)}
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode:
        raise RuntimeError(" ".join(command) + " failed:\n" + out.stdout[-2000:] + out.stderr[-2000:])
    return json.loads(next(line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")))


def fit_alpha_beta(rows):
    n = np.array([r[0] for r in rows], float)
    t = np.array([r[1] for r in rows], float)
    beta, alpha = np.polyfit(n, t, 1)
    return max(alpha, float(t.min()) / 2), beta


def ring_allreduce(p, nbytes, alpha, beta):
    return 0.0 if p == 1 else 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes * beta


def project(compute, backward_share, nbytes, per_node_batch, alpha, beta):
    """Per node count: (images/s, efficiency) with communication overlapped with backward."""
    out = []
    for p in NODES:
        comm = ring_allreduce(p, nbytes, alpha, beta)
        exposed = max(0.0, comm - backward_share * compute)
        step = compute + exposed
        out.append((p, p * per_node_batch / step, compute / step))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["single", "ranks", "allreduce"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--models", default="lenet,mnistcnn")
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a few steps, lenet at batch 64, no files written")
    args = parser.parse_args()
    if args.role:
        return worker(args)
    if args.tiny:
        args.models, args.batches, args.steps, args.repeats = "lenet", "64", 3, 1
    launcher = mpiexec()
    if launcher is None:
        sys.exit("benchmarks/distributed.py needs mpiexec: pip install 'minicnn[mpi]'")
    me = [sys.executable, os.path.abspath(__file__)]
    load = os.getloadavg()[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, load average {load:.2f} "
          f"at start")

    rows = []
    for model in args.models.split(","):
        for batch in [int(b) for b in args.batches.split(",")]:
            common = ["--model", model, "--batch", str(batch), "--steps", str(args.steps), "--repeats", str(args.repeats)]
            single = run(me + ["--role", "single"] + common, threads=2)
            ranks = run([launcher, "-n", "2"] + me + ["--role", "ranks"] + common, threads=1)
            s = statistics.median(r["images_per_second"] for r in single)
            d = statistics.median(r["images_per_second"] for r in ranks)
            split = {k: statistics.median(r[k] for r in ranks) * 1e3 for k in ("compute", "wait", "step")}
            single_compute = statistics.median(r["compute"] + r["step"] for r in single)
            rows.append(dict(model=model, batch=batch, single=s, ranks=d, ratio=d / s, split_ms=split,
                             single_step_ms=single_compute * 1e3))
            print(f"| {model} | {batch} | {s:,.0f} | {d:,.0f} | {d / s:.2f}x | {split['compute']:.2f} / "
                  f"{split['wait']:.2f} / {split['step']:.2f} |", flush=True)

    sizes = run([launcher, "-n", "2"] + me + ["--role", "allreduce"], threads=1)
    alpha, beta = fit_alpha_beta(sizes)
    print(f"all-reduce between 2 ranks here: a = {alpha * 1e6:.1f} us, b = {beta * 1e9:.3f} ns/byte "
          f"({1 / beta / 1e9:.2f} GB/s)")
    for n, t in sizes:
        print(f"  {n:>10,} B  {t * 1e6:9.1f} us")
    if args.tiny:
        return

    import minicnn as mc
    projections = {}
    for model in sorted({r["model"] for r in rows} | {"alexnetmnist"}):
        nbytes = mc.models.get_model(model).num_parameters() * 4
        measured = [r for r in rows if r["model"] == model and r["batch"] == 256]
        if measured:
            step = measured[0]["single_step_ms"] / 1e3
        else:                                               # the largest model: one step measured in one process
            step = statistics.median(x["compute"] + x["step"] for x in run(
                me + ["--role", "single", "--model", model, "--batch", "256", "--steps", "3", "--repeats", "1"], 2))
        for link, rate in {"here (shared memory)": None, **LINKS}.items():
            a, b = (alpha, beta) if rate is None else (ASSUMED_LINK_LATENCY, 8 / rate)
            projections[f"{model} | {link}"] = dict(bytes=nbytes, step_s=step, points=project(step, BACKWARD_SHARE, nbytes,
                                                                                              256, a, b))
    print("\n| model | link | gradient MB | 8 nodes | 64 nodes | 256 nodes | efficiency < 90 % from |")
    for key, value in projections.items():
        cells = {p: (ips, eff) for p, ips, eff in value["points"]}
        below = next((p for p, _, eff in value["points"] if eff < 0.9), None)
        print(f"| {key} | {value['bytes'] / 1e6:.2f} | " + " | ".join(
            f"{cells[p][0]:,.0f} img/s ({cells[p][1]:.0%})" for p in (8, 64, 256)) + f" | {below or '-'} |")
    plot(projections)
    stamp = datetime.date.today().isoformat()
    with open(os.path.join(HERE, "results", f"distributed-{stamp}.json"), "w") as f:
        json.dump({"machine": platform.platform(), "cores": os.cpu_count(), "load_at_start": load, "rows": rows,
                   "allreduce": sizes, "alpha": alpha, "beta": beta, "projections": projections}, f, indent=1)


def plot(projections):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = sorted({k.split(" | ")[0] for k in projections})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for key, value in projections.items():
            if key.startswith(model + " |"):
                ax.plot([p for p, _, _ in value["points"]], [e for _, _, e in value["points"]], "o-",
                        label=key.split(" | ")[1])
        ax.axhline(0.9, color="0.6", linestyle="--")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("nodes (batch 256 each)")
        ax.set_ylabel("scaling efficiency")
        ax.set_title(f"{model}: {value['bytes'] / 1e6:.1f} MB of gradients")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "distributed-scaling.png"), dpi=90)


if __name__ == "__main__":
    main()
