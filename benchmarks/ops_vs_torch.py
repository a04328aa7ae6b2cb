"""Op by op against PyTorch: ResNet14's layers (its convolutions, its batch norms with their ReLU,
its residual sum) alone, minicnn's Numba path and torch in one process, forward and backward.

    python benchmarks/ops_vs_torch.py                         # batch 64, 2 threads, 9 repeats
    python benchmarks/ops_vs_torch.py --batch 256 --repeats 5 --out results/ops-vs-torch.json

speed.py says how a whole model compares; this says which of its ops make the difference. Each op
is one module (or a small Sequential, run as minicnn's Sequential runs it, fused where it fuses)
with the same weights in torch (minicnn.interop.to_torch), in training mode, on float32 inputs of
ResNet14's shapes. A repeat times --iters forward passes, then --iters forward + backward passes
(the input gradient too, as for a layer inside the network, and every parameter gradient read
back, which waits for deferred weight-gradient work); backward = the second minus the first.
minicnn and torch take turns within each repeat, and the ratio (torch's time / minicnn's: above 1
minicnn is faster) is the median of the repeats' own ratios. A measurement, not a test.
"""
import argparse
import json
import os
import statistics
import time
import warnings

import numpy as np

import minicnn as mc
from minicnn import backend


def resnet14_ops():
    """(name, module factory, input shape without the batch) for ResNet14's distinct layers."""
    nn = mc.nn

    def conv(c, oc, k, stride):
        return lambda: nn.Conv2d(c, oc, k, stride=stride, padding=k // 2, bias=False)

    def norm_relu(c):
        return lambda: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())

    def conv_norm_relu(c, oc, stride):
        return lambda: nn.Sequential(nn.Conv2d(c, oc, 3, stride=stride, padding=1, bias=False),
                                     nn.BatchNorm2d(oc), nn.ReLU())

    return [
        ("conv 3x3 1->16, 28x28", conv(1, 16, 3, 1), (1, 28, 28)),
        ("conv 3x3 16->16, 28x28", conv(16, 16, 3, 1), (16, 28, 28)),
        ("conv 3x3 16->32 /2, 28x28", conv(16, 32, 3, 2), (16, 28, 28)),
        ("conv 3x3 32->32, 14x14", conv(32, 32, 3, 1), (32, 14, 14)),
        ("conv 3x3 32->64 /2, 14x14", conv(32, 64, 3, 2), (32, 14, 14)),
        ("conv 3x3 64->64, 7x7", conv(64, 64, 3, 1), (64, 7, 7)),
        ("conv 1x1 16->32 /2, 28x28", conv(16, 32, 1, 2), (16, 28, 28)),
        ("conv 1x1 32->64 /2, 14x14", conv(32, 64, 1, 2), (32, 14, 14)),
        ("batchnorm+relu 16, 28x28", norm_relu(16), (16, 28, 28)),
        ("batchnorm+relu 32, 14x14", norm_relu(32), (32, 14, 14)),
        ("batchnorm+relu 64, 7x7", norm_relu(64), (64, 7, 7)),
        ("conv+bn+relu 16->16, 28x28", conv_norm_relu(16, 16, 1), (16, 28, 28)),
        ("conv+bn+relu 64->64, 7x7", conv_norm_relu(64, 64, 1), (64, 7, 7)),
        ("basic block 16, 28x28", lambda: mc.models.basic_block(16, 16), (16, 28, 28)),
        ("basic block 32 /2, 28x28", lambda: mc.models.basic_block(16, 32, stride=2), (16, 28, 28)),
    ]


def minicnn_pass(module, x, dy):
    def forward():
        module(x)

    def both():
        module.zero_grad()
        module(x)
        module.backward(dy)
        for p in module.parameters():
            p.grad                                  # final: waits for deferred weight gradients
    return forward, both


def torch_pass(module, x, dy):
    import torch
    x = torch.from_numpy(x).requires_grad_(True)
    dy = torch.from_numpy(dy)

    def forward():
        module(x)                                   # recording its graph, as a training step's forward does

    def both():
        module.zero_grad()
        x.grad = None
        module(x).backward(dy)
    return forward, both


def _same_results(module, twin, x, y, dy):
    """The largest difference between minicnn's and torch's output and input gradient (y is
    module(x)); raises if they differ past float32's rounding: a ratio of two different
    computations would mean nothing."""
    import torch
    dx = module.backward(dy)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = twin(tx)
    ty.backward(torch.from_numpy(dy))
    largest = 0.0
    for what, ours, theirs in (("output", y, ty.detach().numpy()), ("input gradient", dx, tx.grad.numpy())):
        if not np.allclose(ours, theirs, rtol=1e-3, atol=1e-3):
            raise AssertionError(f"{type(module).__name__}: minicnn's {what} differs from torch's "
                                 f"(largest difference {np.abs(ours - theirs).max():.3g})")
        largest = max(largest, float(np.abs(ours - theirs).max()))
    return largest


def timed(fn, iters):
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - started) / iters


def compare(name, factory, shape, batch, repeats, iters):
    from minicnn.interop import to_torch
    mc.manual_seed(0)
    module = factory().train()
    twin = to_torch(module).train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    y = module(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    agreement = _same_results(module, twin, x, y, dy)
    passes = {"minicnn": minicnn_pass(module, x, dy), "torch": torch_pass(twin, x, dy)}
    for forward, both in passes.values():           # warm-up: compiled kernels, scratch, torch's caches
        forward()
        both()
    times = {lib: {"forward": [], "backward": []} for lib in passes}
    ratios = {"forward": [], "backward": []}
    for r in range(repeats):
        now = {}
        for lib in (list(passes) if r % 2 == 0 else list(passes)[::-1]):
            forward, both = passes[lib]
            f = timed(forward, iters)
            b = timed(both, iters) - f
            now[lib] = (f, b)
            times[lib]["forward"].append(f)
            times[lib]["backward"].append(b)
        for i, part in enumerate(("forward", "backward")):
            ratios[part].append(now["torch"][i] / now["minicnn"][i])
    row = {"op": name, "batch": batch, "largest difference": agreement}
    for part in ("forward", "backward"):
        row[f"minicnn {part} ms"] = statistics.median(times["minicnn"][part]) * 1e3
        row[f"torch {part} ms"] = statistics.median(times["torch"][part]) * 1e3
        row[f"{part} ratio"] = statistics.median(ratios[part])
        row[f"{part} ratio range"] = [min(ratios[part]), max(ratios[part])]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--iters", type=int, default=5, help="passes a timing (default 5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", default="", help="only the ops whose name contains one of these (comma-separated)")
    parser.add_argument("--out", help="also write the table as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=mc.nn.StateReuseWarning)   # forward-only timings, on purpose
    import torch
    torch.set_num_threads(args.threads)
    backend.set_cpu_threads(args.threads)
    wanted = [w for w in args.ops.split(",") if w]
    ops = [op for op in resnet14_ops() if not wanted or any(w in op[0] for w in wanted)]
    unmatched = [w for w in wanted if not any(w in name for name, *_ in ops)]
    if unmatched:
        parser.error(f"--ops: no op's name contains {', '.join(map(repr, unmatched))}; the ops are: "
                     + "; ".join(name for name, *_ in resnet14_ops()))
    if min(args.batch, args.repeats, args.iters) < 1:
        parser.error(f"--batch, --repeats and --iters must be at least 1, got {args.batch}, {args.repeats}, {args.iters}")
    rows = []
    print(f"batch {args.batch}, {args.threads} threads, float32, median of {args.repeats} "
          f"(ratio = torch's time / minicnn's: above 1 minicnn is faster)")
    print("\n| op | minicnn fwd ms | torch fwd ms | fwd ratio | minicnn bwd ms | torch bwd ms | bwd ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with backend.use_backend("numba"):
        for name, factory, shape in ops:
            row = compare(name, factory, shape, args.batch, args.repeats, args.iters)
            rows.append(row)
            print(f"| {name} | {row['minicnn forward ms']:.2f} | {row['torch forward ms']:.2f} | "
                  f"{row['forward ratio']:.2f}x | {row['minicnn backward ms']:.2f} | "
                  f"{row['torch backward ms']:.2f} | {row['backward ratio']:.2f}x |", flush=True)
    if args.out:
        from speed import machine                  # the same description as speed.py's results
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"machine": machine(), "threads": args.threads, "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
