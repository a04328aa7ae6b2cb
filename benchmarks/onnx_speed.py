"""Inference speed of a model exported to ONNX and run by onnxruntime, beside minicnn's own, in one
process (images/s, the median of interleaved repeats; the ratio is the median of back-to-back pairs).

    MINICNN_DATA=../shared/data python benchmarks/onnx_speed.py [--models lenet,mnistcnn] [--batches 1,1000]
        [--repeats 7] [--seconds 1]

onnxruntime runs on the CPU with as many intra-op threads as minicnn has (MINICNN_THREADS, the cores);
both take the same float32 batches (real MNIST when MINICNN_DATA is set). A measurement, not a test.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import minicnn as mc
from minicnn.export import to_onnx

from speed import load_batches


def images_per_second(run, batch, seconds):
    run()                                                   # warm: compile, allocate
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += 1
    return count * batch / (time.perf_counter() - started)


def main():
    import onnxruntime as ort
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet,mnistcnn")
    parser.add_argument("--batches", default="1,1000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    threads = mc.backend.cpu_threads()
    x_all, _, source = load_batches(1000)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    print(f"onnxruntime {ort.__version__} ({threads} threads) against minicnn {mc.__version__} "
          f"({mc.backend.get_backend()}, {threads} threads); {source}; images/s, median of {args.repeats}\n")
    print("| model | batch | minicnn | onnxruntime | minicnn / onnxruntime |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        mc.manual_seed(0)
        model = mc.models.get_model(name).eval()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"{name}.onnx")
            to_onnx(model, path, model.input_shape)
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for batch in (int(b) for b in args.batches.split(",")):
            x = np.ascontiguousarray(x_all[:batch])

            def ours():
                with mc.no_grad():
                    model(x)

            def theirs():
                session.run(None, {"input": x})

            pairs = [(images_per_second(ours, batch, args.seconds), images_per_second(theirs, batch, args.seconds))
                     for _ in range(args.repeats)]
            mine, other = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
            ratio = statistics.median(p[0] / p[1] for p in pairs)
            print(f"| {name} | {batch} | {mine:,.0f} | {other:,.0f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
