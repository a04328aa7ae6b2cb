"""Where a training step's time goes, layer by layer, on the CPU or the GPU.

    python benchmarks/layer_profile.py                          # LeNet and MnistCNN, batch 64 and 1024, CPU
    python benchmarks/layer_profile.py --device cuda            # the same on the GPU (CuPy)
    python benchmarks/layer_profile.py --models lenet --batches 64 --repeats 3
    python benchmarks/layer_profile.py --models resnet14,mobilenetmnist    # any model of minicnn.models

Runs one SGD-momentum training step layer by layer (the steps Sequential runs: a convolution with
its ReLU and 2x2 pool is one step on Numba, see nn.fused) and times each one's forward and backward,
the loss and the optimizer step with the wall clock, waiting for the GPU after every call (so a
GPU number is the layer's launch cost plus its kernels). The sum is compared with an undisturbed
step: the difference is what the waits cost (the overlap of host and device that a normal step
enjoys). Medians over --repeats steps after warm-up steps. A measurement, not a test.
"""
import argparse
import statistics
import time

import numpy as np

import minicnn as mc
from minicnn import backend

def profile(model_cls, batch, device, repeats):
    mc.manual_seed(0)
    move = backend.device_converter(device)
    wait = _waiter(device)
    model = model_cls().to(device)
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = mc.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = move(rng.standard_normal((batch,) + model_cls.input_shape).astype(np.float32))
    y = move(rng.integers(0, 10, batch))

    def step():
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    for _ in range(3):
        step()
    layers = model.steps                  # the steps Sequential runs (fused where it fuses)
    wait()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    wait()
    whole = (time.perf_counter() - started) / repeats

    samples = []
    for _ in range(repeats):
        times = {}
        h = x
        for i, layer in enumerate(layers):
            h = _timed(times, ("forward", i), wait, layer, h)
        _timed(times, "loss", wait, loss_fn, h, y)
        d = _timed(times, "loss backward", wait, loss_fn.backward)
        opt.zero_grad()
        for i in range(len(layers) - 1, -1, -1):
            args = (d, False) if i == 0 and getattr(layers[0], "can_skip_input_grad", False) else (d,)
            d = _timed(times, ("backward", i), wait, layers[i].backward, *args)
        _timed(times, "optimizer", wait, opt.step)
        samples.append(times)
    median = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    return layers, median, whole


def _timed(times, key, wait, fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    wait()
    times[key] = time.perf_counter() - started
    return out


def _waiter(device):
    if device == "cpu":
        return lambda: None
    import cupy
    return cupy.cuda.Device().synchronize


def report(name, batch, layers, median, whole):
    total = sum(median.values())
    lines = [f"{name}, batch {batch}: undisturbed step {whole * 1e3:.3f} ms; with a wait after every call "
             f"{total * 1e3:.3f} ms", "| layer | forward ms | backward ms |", "| --- | --- | --- |"]
    for i, layer in enumerate(layers):
        lines.append(f"| {i} {type(layer).__name__} | {median[('forward', i)] * 1e3:.3f} | "
                     f"{median[('backward', i)] * 1e3:.3f} |")
    lines.append(f"| loss | {median['loss'] * 1e3:.3f} | {median['loss backward'] * 1e3:.3f} |")
    lines.append(f"| optimizer step | | {median['optimizer'] * 1e3:.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet,mnistcnn")
    parser.add_argument("--batches", default="64,1024")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(mc.models.MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(sorted(mc.models.MODELS))}")
    for name in names:
        for batch in (int(b) for b in args.batches.split(",")):
            print(report(name, batch, *profile(mc.models.get_model_class(name), batch, args.device, args.repeats)), "\n", flush=True)


if __name__ == "__main__":
    main()
