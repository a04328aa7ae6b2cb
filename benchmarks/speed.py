"""CPU speed: minicnn (NumPy path and Numba path) against PyTorch, in one process, interleaved.

    python benchmarks/speed.py                      # full run, writes results/cpu-DATE.json and .png
    python benchmarks/speed.py --tiny               # a few steps of everything: CI keeps it alive
    python benchmarks/speed.py --device cuda        # GPU: minicnn eager, minicnn with a CUDA graph, torch
    python benchmarks/speed.py --load 1 --models lenet --libraries numba,numba1,torch   # beside a busy process

For each model (LeNet, MnistCNN, ConvNet) and library: training throughput (forward + backward
+ SGD-momentum step, images/s) at batch 64 and 256 and inference throughput at batch 1000, on
real MNIST batches when MINICNN_DATA is set (random images otherwise). Every measurement is
repeated --repeats times, the libraries taking turns, and the median images/s is reported. The
ratio to PyTorch is the median over the repeats of each repeat's own ratio (the two libraries
measured back to back), with its range: on a machine whose speed drifts by 25% from one second to
the next, a pair shares the drift that a ratio of two medians taken at different moments does not.
Speed is never asserted: this is a measurement, not a test.

With --device cuda the libraries are minicnn on CuPy arrays (eager), minicnn replaying each
training step as a CUDA graph (minicnn-graph), and torch on CUDA with its defaults (eager, cuDNN);
training at batch 64, 256 and 1024 and inference at 1000, data already on the GPU, every timed
run ending with a device synchronization; results go to results/gpu-<date>.json.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import minicnn as mc
from minicnn import backend

MODELS = {"lenet": mc.models.LeNet, "mnistcnn": mc.models.MnistCNN, "convnet": mc.models.ConvNet,
          "fashioncnn": mc.models.FashionCNN, "resnet14": mc.models.ResNet14,
          "mobilenetmnist": mc.models.MobileNetMNIST,
          "mobilenetv3mnist": mc.models.MobileNetV3MNIST}  # the last four only when asked for (--models)


def torch_twin(model):
    """The same network in torch, with the same weights (minicnn.interop.to_torch)."""
    from minicnn.interop import to_torch
    return to_torch(model).train()


def load_batches(n):
    root = os.environ.get("MINICNN_DATA")
    if root and os.path.isdir(os.path.join(root, "mnist")):
        ds = mc.data.MNIST(train=True, download=False)
        x = ((ds.data[:n].astype(np.float32) / 255 - 0.1307) / 0.3081)
        return x, ds.targets[:n], "real MNIST"
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n), "random images"


def minicnn_runner(model_cls, backend_name, x, y, batch, train):
    mc.manual_seed(0)
    model = model_cls()
    loss_fn = mc.nn.CrossEntropyLoss()
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n_batches = len(x) // batch

    def run(steps):
        threads = None
        if backend_name == "numba1":                 # the Numba path on the calling thread alone
            threads = backend.cpu_threads()
            backend.set_cpu_threads(1)
        try:
            _run(steps)
        finally:
            if threads is not None:
                backend.set_cpu_threads(threads)

    def _run(steps):
        with backend.use_backend("numba" if backend_name == "numba1" else backend_name):
            for i in range(steps):
                k = i % n_batches
                xb, yb = x[k * batch:(k + 1) * batch], y[k * batch:(k + 1) * batch]
                if train:
                    model.train()
                    loss_fn(model(xb), yb)
                    opt.zero_grad()
                    model.backward(loss_fn.backward(), input_grad=False)   # as fit() does
                    opt.step()
                else:
                    model.eval()
                    with mc.no_grad():
                        model(xb)
    return run


def torch_runner(model_cls, x, y, batch, train, device="cpu"):
    import torch
    mc.manual_seed(0)
    model = torch_twin(model_cls()).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.from_numpy(x[i * batch:(i + 1) * batch]).to(device),
                torch.from_numpy(y[i * batch:(i + 1) * batch]).to(device)) for i in range(len(x) // batch)]

    def run(steps):
        for i in range(steps):
            xb, yb = batches[i % len(batches)]
            if train:
                model.train()
                loss = loss_fn(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            else:
                model.eval()
                with torch.no_grad():
                    model(xb)
        if device == "cuda":
            torch.cuda.synchronize()             # GPU work is asynchronous: the timing ends here
    return run


def cuda_batches(x, y, batch):
    import cupy as cp
    n = len(x) // batch
    return [(cp.asarray(x[i * batch:(i + 1) * batch]), cp.asarray(y[i * batch:(i + 1) * batch])) for i in range(n)]


def cuda_minicnn_runner(model_cls, x, y, batch, train, graph):
    import cupy as cp
    from minicnn.cuda_graph import CudaGraphStep
    mc.manual_seed(0)
    model = model_cls().to("cuda")
    loss_fn = mc.nn.CrossEntropyLoss()
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = cuda_batches(x, y, batch)
    step = CudaGraphStep(model, loss_fn, opt) if graph else None

    def run(steps):
        for i in range(steps):
            xb, yb = batches[i % len(batches)]
            if not train:
                model.eval()
                with mc.no_grad():
                    model(xb)
            elif step is not None:
                model.train()
                step(xb, yb)
            else:
                model.train()
                loss_fn(model(xb), yb)
                opt.zero_grad()
                model.backward(loss_fn.backward(), input_grad=False)
                opt.step()
        cp.cuda.Device().synchronize()
    if graph:
        run(step.warmup + 1)                       # eager warm-up steps and the capture
    return run


def gpu_description():
    try:
        import cupy as cp
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return {"gpu": name, "driver": cp.cuda.runtime.driverGetVersion(), "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
                "cupy": cp.__version__}
    except Exception as err:  # no CuPy or no device
        return {"gpu": f"unavailable ({err})"}


def measure(run, steps, batch, min_seconds):
    run(1)                                           # warm-up (compilation, allocations)
    start = time.perf_counter()
    done = 0
    while True:
        run(steps)
        done += steps
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done * batch / elapsed


def machine():
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__, "minicnn": mc.__version__}
    for name in ("numba", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    try:
        from threadpoolctl import threadpool_info
        versions["blas"] = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)" for i in threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        pass
    try:
        from minicnn.backend import cores
        versions["minicnn threads"] = cores.threads()      # the Numba path's (BLAS on 1 inside them)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet,mnistcnn,convnet")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum time of one measurement")
    parser.add_argument("--libraries", default=None, help="default: numpy,numba,torch (cpu); "
                        "minicnn,minicnn-graph,torch (cuda)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="one short repeat of everything (for CI)")
    parser.add_argument("--load", type=int, default=0, help="start this many busy processes (a shared machine) for "
                        "the run, and stop them at its end")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                        help="a folder (the run becomes cpu-DATE.json there, never overwriting one) or a .json file")
    args = parser.parse_args()
    with busy_processes(args.load):
        run_benchmark(parser, args)


class busy_processes:
    """n processes that each keep one core busy (pure Python loops) while the benchmark runs."""

    def __init__(self, n):
        self.n, self.processes = n, []

    def __enter__(self):
        import subprocess
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        if self.n:
            time.sleep(0.5)                               # let the scheduler see them
        return self

    def __exit__(self, *exc):
        for p in self.processes:
            p.kill()
            p.wait()


def run_benchmark(parser, args):
    if args.tiny:
        args.repeats, args.seconds = 1, 0.0
    cuda = args.device == "cuda"
    if args.libraries is None:
        args.libraries = "minicnn,minicnn-graph,torch" if cuda else "numpy,numba,torch"
    libraries = [lib for lib in args.libraries.split(",") if lib]
    known = ("minicnn", "minicnn-graph", "torch") if cuda else ("numpy", "numba", "numba1", "torch")
    unknown = [lib for lib in libraries if lib not in known]
    if unknown:
        parser.error(f"--libraries: expected some of {','.join(known)} for --device {args.device}, "
                     f"got {','.join(unknown)}")
    models = [name for name in args.models.split(",") if name]
    if not models or any(name not in MODELS for name in models):
        parser.error(f"--models: expected some of {','.join(MODELS)}, got {args.models!r}")
    if cuda:
        backend.device_converter("cuda")           # one clear error without a GPU
    for lib in ("numba", "numba1"):
        if lib in libraries and "numba" not in backend.available_backends():
            print(f"numba backend unavailable: {lib} skipped", file=sys.stderr)
            libraries.remove(lib)
    if "torch" in libraries:
        try:
            import torch
            torch.set_num_threads(os.cpu_count())
        except ImportError:
            print("torch not installed: skipped", file=sys.stderr)
            libraries.remove("torch")
    x, y, source = load_batches(8192 if cuda and not args.tiny else 4096 if not args.tiny else 1024)
    settings = [("train", 64), ("train", 256), ("train", 1024), ("infer", 1000)] if cuda else \
        [("train", 64), ("train", 256), ("infer", 1000)]
    results = []
    for model_name in models:
        model_cls = MODELS[model_name]
        for mode, batch in settings:
            runners = {}
            for lib in libraries:
                if lib == "torch":
                    runners[lib] = torch_runner(model_cls, x, y, batch, mode == "train", args.device)
                elif cuda:
                    runners[lib] = cuda_minicnn_runner(model_cls, x, y, batch, mode == "train", lib == "minicnn-graph")
                else:
                    runners[lib] = minicnn_runner(model_cls, lib, x, y, batch, mode == "train")
            samples = {lib: [] for lib in libraries}
            steps = 1 if args.tiny else max(1, (8192 if cuda else 2048) // batch)
            for _ in range(args.repeats):
                for lib in libraries:                    # interleaved: drift hits every library alike
                    samples[lib].append(measure(runners[lib], steps, batch, args.seconds))
            row = {"model": model_name, "mode": mode, "batch": batch,
                   "images_per_second": {lib: statistics.median(v) for lib, v in samples.items()},
                   "samples": samples}
            if "torch" in samples:
                row["ratio_to_torch"] = paired_ratios(samples)
            results.append(row)
            print(format_row(row, libraries), flush=True)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "data": source,
              "repeats": args.repeats, "device": args.device, "results": results, "busy_processes": args.load}
    if not cuda and "numba" in backend.available_backends():
        from minicnn.backend import cores
        report["contention_watch"] = cores.contention_state()
        print(f"contention watch: {report['contention_watch']}")
    if cuda:
        report["machine"]["gpu"] = gpu_description()
    print()
    print(markdown(report, libraries))
    if not args.tiny:
        stem = results_stem(args.out, f"{'gpu' if cuda else 'cpu'}-{datetime.date.today():%Y-%m-%d}")
        partial = stem + ".json.partial"              # written whole, then renamed: never half a file
        with open(partial, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(partial, stem + ".json")
        bar_chart(report, libraries, stem + ".png")
        print(f"\nwrote {stem}.json and {stem}.png")


def results_stem(folder, name):
    """folder/name, or folder/name + b, c, ... when a run of the same day is already there; an
    --out naming a .json file is that file (its .png beside it; rewritten if it is there)."""
    if folder.endswith(".json"):
        os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
        return folder[:-len(".json")]
    os.makedirs(folder, exist_ok=True)
    for suffix in [""] + [chr(c) for c in range(ord("b"), ord("z") + 1)]:
        stem = os.path.join(folder, name + suffix)
        if not os.path.exists(stem + ".json"):
            return stem
    raise FileExistsError(f"{folder} already holds runs {name} to {name}z")


def paired_ratios(samples):
    """{library: {"median", "low", "high"}} of the per-repeat ratios samples[library][k] /
    samples['torch'][k], for every library but torch."""
    ratios = {}
    for lib, values in samples.items():
        if lib != "torch":
            pairs = [a / b for a, b in zip(values, samples["torch"])]
            ratios[lib] = {"median": statistics.median(pairs), "low": min(pairs), "high": max(pairs)}
    return ratios


def ratio_text(row, lib, with_range=True):
    r = row.get("ratio_to_torch", {}).get(lib)
    if r is None:
        return ""
    return f" ({r['median']:.2f}x" + (f"; {r['low']:.2f}-{r['high']:.2f}" if with_range else "") + ")"


def format_row(row, libraries):
    ips = row["images_per_second"]
    parts = [f"{lib} {ips[lib]:,.0f}{ratio_text(row, lib, with_range=False)}" for lib in libraries]
    return f"{row['model']:>9} {row['mode']} bs{row['batch']:<5} " + "  ".join(parts)


def markdown(report, libraries):
    m = report["machine"]
    gpu = f"GPU {m['gpu'].get('gpu')} (CuPy {m['gpu'].get('cupy')}); " if "gpu" in m else ""
    lines = [f"Machine: {gpu}{m['cpu']}, {m['cores']} cores; {', '.join(f'{k} {v}' for k, v in m['versions'].items())}; "
             f"{report['data']}; images/s, median of {report['repeats']} (ratio to torch: the median of the "
             f"{report['repeats']} back-to-back pairs' ratios; their range).", "",
             "| model | mode | batch | " + " | ".join(libraries) + " |", "|" + " --- |" * (3 + len(libraries))]
    for row in report["results"]:
        ips = row["images_per_second"]
        cells = []
        for lib in libraries:
            cells.append(f"{ips[lib]:,.0f}{ratio_text(row, lib)}")
        lines.append(f"| {row['model']} | {row['mode']} | {row['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(report, libraries, path):
    from minicnn import plot  # noqa: F401  (selects the headless backend)
    import matplotlib.pyplot as plt
    rows = report["results"]
    labels = [f"{r['model']}\n{r['mode']} {r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(rows)), 4.5))
    width = 0.8 / len(libraries)
    for i, lib in enumerate(libraries):
        ax.bar(np.arange(len(rows)) + i * width, [r["images_per_second"][lib] for r in rows], width, label=lib)
    ax.set_xticks(np.arange(len(rows)) + width * (len(libraries) - 1) / 2, labels, fontsize=8)
    ax.set_ylabel("images / s")
    ax.set_yscale("log")
    ax.legend()
    if "gpu" in report["machine"]:
        ax.set_title(f"GPU throughput, {report['machine']['gpu'].get('gpu')}")
    else:
        ax.set_title(f"CPU throughput, {report['machine']['cpu']} ({report['machine']['cores']} cores)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
