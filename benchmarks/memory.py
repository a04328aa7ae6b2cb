"""Peak memory of a large-input training step, and the time to a first training step.

    python benchmarks/memory.py                  # AnimalNet batch 16 (minicnn, torch), first use warm and cold
    python benchmarks/memory.py --tiny           # batch 1, no cold cache: CI keeps the script alive

Every measurement runs in a fresh process, so each peak resident memory (ru_maxrss of that child)
belongs to one library alone:
- AnimalNet (3x256x256) at batch 16: one SGD-momentum training step after the imports and the
  model build, for minicnn (Numba backend) and for torch with the same weights; peak resident
  memory and the step's time (the second of two steps, so that compilation is not counted).
- First use: `import minicnn` plus the first LeNet training step at batch 64, with Numba's on-disk
  cache warm (a previous run filled it) and cold (NUMBA_CACHE_DIR pointed at an empty folder).
A measurement, not a test: nothing is asserted.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
library, model_name, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
import numpy as np
import minicnn as mc
mc.manual_seed(0)
model = getattr(mc.models, model_name)()
x = np.random.default_rng(0).standard_normal((batch,) + model.input_shape).astype(np.float32)
y = np.arange(batch) % 10
if library == "torch":
    import torch
    sys.path.insert(0, "benchmarks")
    from speed import torch_twin
    torch.set_num_threads(2)
    net, xt, yt = torch_twin(model), torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
else:
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = mc.nn.CrossEntropyLoss()
    def step():
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
step()
first = time.perf_counter() - started
t = time.perf_counter()
step()
print(json.dumps({"first_step_s": first, "step_s": time.perf_counter() - t,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(library, model, batch, env=None):
    out = subprocess.run([sys.executable, "-c", CHILD, library, model, str(batch)],
                         capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"{library} {model} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="AnimalNet at batch 1, no cold-cache run")
    args = parser.parse_args()
    batch = 1 if args.tiny else 16
    results = {}
    for library in ("minicnn", "torch"):
        r = run_child(library, "AnimalNet", batch)
        results[f"animalnet {library}"] = r
        print(f"AnimalNet batch {batch} {library}: peak {r['peak_mib']:.0f} MiB, step {r['step_s']:.2f} s", flush=True)
    ratio = results["animalnet minicnn"]["peak_mib"] / results["animalnet torch"]["peak_mib"]
    print(f"peak memory minicnn / torch: {ratio:.2f}x")
    warm = run_child("minicnn", "LeNet", 64)                  # fills (or finds) the on-disk cache
    warm = run_child("minicnn", "LeNet", 64)
    print(f"import + first LeNet step, Numba cache warm: {warm['first_step_s']:.2f} s")
    if not args.tiny:
        with tempfile.TemporaryDirectory() as cache:
            cold = run_child("minicnn", "LeNet", 64, env=dict(os.environ, NUMBA_CACHE_DIR=cache))
        print(f"import + first LeNet step, Numba cache cold: {cold['first_step_s']:.2f} s")


if __name__ == "__main__":
    main()
