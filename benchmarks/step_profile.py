"""Where a training step's (or an inference pass's) time goes on the Numba backend's threads
(backend/cores.py).

    python benchmarks/step_profile.py                                  # ResNet14 at batch 64
    python benchmarks/step_profile.py --models lenet,mobilenetmnist --batches 64,256 --steps 30
    python benchmarks/step_profile.py --inference --batches 1000       # eval mode under no_grad
    python benchmarks/step_profile.py --out results/step-profile.json  # the table as JSON too
    python benchmarks/step_profile.py --torch                          # and torch's step, and the ceiling

A step on the Numba backend is a row of runs: each layer's op cuts its work into tasks, the calling
thread and the workers take them as they come free (cores.run), and between runs the caller alone
runs Python and NumPy while the workers wait. This times every run and every task of --steps
SGD-momentum training steps (with --inference: forward passes in eval mode under no_grad, which
the backend's plan may run in chunks of samples) by cores.recording, and reports, per step:

    runs, tasks            how many; per op and the function that handed the tasks out
    wall ms                from the run's start to its end, summed
    thread-ms              the tasks' own time summed over the threads
    threads busy           thread-ms / wall ms: 2.0 on 2 threads is every thread busy all the run
    worker lag us          the workers' first task started this long after the caller's (mean a run)
    caller waits us        from the caller's last task's end to the run's end: waiting for a worker
                           to finish its last task (mean a run)
    outside runs           the step's time that is no run: Python, NumPy, the loss and optimizer glue,
                           and in a second table where it lies: between which two runs (per step)
    deferred tasks         the blocked convolutions' weight-gradient sums, which a worker takes when it
                           would otherwise wait (outside runs, or at a run's end) and the caller
                           finishes when the optimizer reads .grad (cores.defer): how many,
                           their thread-ms, and how much of it ran on workers

With --torch (training only), torch's step on the same network (the same weights, torch's
threads set to minicnn's) is timed in the same process, taking turns with minicnn's plain steps,
and the report adds the ratio and a ceiling: the convolutions' own tasks (their runs' and the
deferred tasks' thread-ms) spread evenly over the threads, the step if every other op, copy and
line of Python took no time at all; torch's step / that is the best ratio this step's
convolutions allow.

The timing costs a few microseconds a task, so the recorded step is a little slower than the plain
step reported beside it (means of the same number of steps, the two kinds alternated). A
measurement, not a test; the machine's noise shows in it as in any timing.
"""
import argparse
import collections
import json
import os
import platform
import statistics
import time

import numpy as np

import minicnn as mc
from minicnn import backend
from minicnn.backend import contract, cores


def profile(model_cls, batch, steps, inference=False, with_torch=False):
    """(plain step times in seconds, the recorded steps as (start, end, runs, deferred tasks of
    cores.Recording), torch's step times in seconds or None);
    a step is a forward pass in eval mode under no_grad with inference."""
    mc.manual_seed(0)
    model = model_cls()
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = mc.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + model_cls.input_shape).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def train_step():
        started = time.perf_counter()
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        return started, time.perf_counter()

    def inference_pass():
        started = time.perf_counter()
        with mc.no_grad():
            model(x)
        return started, time.perf_counter()

    if inference:
        model.eval()
    step = inference_pass if inference else train_step

    torch_step = torch_training_step(model_cls, x, y) if with_torch else None
    for _ in range(5):
        step()
        if torch_step:
            torch_step()
    plain, recorded, torch_times = [], [], []
    for _ in range(steps):
        started, ended = step()
        plain.append(ended - started)
        if torch_step:
            torch_times.append(torch_step())
        with cores.recording(contract.OPS) as record:
            started, ended = step()
        recorded.append((started, ended, record.runs, record.deferred))
    return plain, recorded, (torch_times if torch_step else None)


def torch_training_step(model_cls, x, y):
    """A function timing one SGD-momentum training step of torch's twin of model_cls (speed.py's
    torch_runner: the weights minicnn's model starts from) on x, y, on minicnn's threads: seconds."""
    import torch
    from speed import torch_runner                        # benchmarks/speed.py, beside this file
    torch.set_num_threads(cores.threads())
    run = torch_runner(model_cls, x, y, len(x), train=True)

    def step():
        started = time.perf_counter()
        run(1)
        return time.perf_counter() - started
    return step


def summarize(recorded):
    """Rows per label and the gaps between runs (both per step), and the totals of the recorded steps."""
    steps = len(recorded)
    rows = collections.OrderedDict()
    gaps = collections.defaultdict(float)
    deferred = [task for *_, tasks in recorded for task in tasks]
    for step_start, step_end, runs, _ in recorded:
        before, after = "(step start)", step_start
        for label, start, end, tasks in runs:
            gaps[f"{before} -> {label}"] += start - after
            before, after = label, end
            row = rows.setdefault(label, dict(runs=0, tasks=0, wall=0.0, thread=0.0, lags=[], waits=[]))
            row["runs"] += 1
            row["tasks"] += len(tasks)
            row["wall"] += end - start
            row["thread"] += sum(t_end - t_start for _, t_start, t_end in tasks)
            caller = [t for t in tasks if t[0] == 0]
            workers = [t for t in tasks if t[0] != 0]
            if caller:
                row["waits"].append(end - max(t_end for _, _, t_end in caller))
                if workers:
                    row["lags"].append(min(t[1] for t in workers) - min(t[1] for t in caller))
        gaps[f"{before} -> (step end)"] += step_end - after
    table = []
    for label, row in sorted(rows.items(), key=lambda kv: -kv[1]["wall"]):
        table.append({
            "label": label, "runs": row["runs"] / steps, "tasks": row["tasks"] / steps,
            "wall_ms": row["wall"] / steps * 1e3, "thread_ms": row["thread"] / steps * 1e3,
            "threads_busy": row["thread"] / row["wall"] if row["wall"] else 0.0,
            "worker_lag_us": statistics.mean(row["lags"]) * 1e6 if row["lags"] else None,
            "caller_waits_us": statistics.mean(row["waits"]) * 1e6 if row["waits"] else None})
    between = [{"between": key, "ms": total / steps * 1e3} for key, total in sorted(gaps.items(), key=lambda kv: -kv[1])]
    step_ms = statistics.mean(end - start for start, end, *_ in recorded) * 1e3
    in_runs = sum(r["wall_ms"] for r in table)
    totals = {"recorded_step_ms": step_ms, "in_runs_ms": in_runs,
              "thread_ms": sum(r["thread_ms"] for r in table), "runs": sum(r["runs"] for r in table),
              "outside_runs_ms": step_ms - in_runs,
              # deferred tasks (weight gradients) run outside runs: by a worker that would otherwise
              # wait, or by the caller when settling
              "deferred_tasks": len(deferred) / steps,
              "deferred_thread_ms": sum(end - start for _, start, end in deferred) / steps * 1e3,
              "deferred_on_workers_ms": sum(end - start for thread, start, end in deferred if thread) / steps * 1e3}
    # the convolutions' own work: their runs' tasks and the deferred ones (their weight gradients)
    totals["convolution_thread_ms"] = totals["deferred_thread_ms"] + sum(
        r["thread_ms"] for r in table if r["label"].startswith("conv2d_"))
    return table, between, totals


def report(name, batch, plain, totals, table, between, top=8, torch_ms=None):
    threads = cores.threads()
    lines = [f"{name}, batch {batch}, {threads} threads: plain step {plain * 1e3:.2f} ms, recorded "
             f"{totals['recorded_step_ms']:.2f} ms (means of the steps): {totals['in_runs_ms']:.2f} ms in "
             f"{totals['runs']:.0f} runs ({totals['thread_ms']:.1f} thread-ms of tasks, "
             f"{totals['thread_ms'] / max(totals['in_runs_ms'], 1e-9):.2f} threads busy), "
             f"{totals['outside_runs_ms']:.2f} ms outside runs; {totals['deferred_tasks']:.0f} deferred tasks "
             f"({totals['deferred_thread_ms']:.1f} thread-ms, {totals['deferred_on_workers_ms']:.1f} of them on workers)",
             "| op: hands out the tasks | runs | tasks | wall ms | thread-ms | threads busy | worker lag us "
             "| caller waits us |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def us(value):
        return "-" if value is None else f"{value:.0f}"

    for r in table:
        lines.append(f"| {r['label']} | {r['runs']:.0f} | {r['tasks']:.0f} | {r['wall_ms']:.2f} | {r['thread_ms']:.2f} | "
                     f"{r['threads_busy']:.2f} | {us(r['worker_lag_us'])} | {us(r['caller_waits_us'])} |")
    lines.append(f"| (outside runs) | | | {totals['outside_runs_ms']:.2f} | | | | |")
    lines += ["", f"Outside runs, the {min(top, len(between))} largest gaps of {len(between)} kinds:",
              "| between the runs of | ms a step |", "| --- | --- |"]
    lines += [f"| {gap['between']} | {gap['ms']:.2f} |" for gap in between[:top]]
    if torch_ms is not None:
        floor = totals["convolution_thread_ms"] / threads
        lines += ["", f"torch's step {torch_ms:.2f} ms (median, same process, {threads} threads): "
                  f"{torch_ms / (plain * 1e3):.2f}x minicnn's plain step. The convolutions' own tasks, "
                  f"{totals['convolution_thread_ms']:.1f} thread-ms a step, spread evenly over {threads} threads: "
                  f"{floor:.2f} ms, so with every other op and all Python free the ratio could be at most "
                  f"{torch_ms / floor:.2f}x."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet14")
    parser.add_argument("--batches", default="64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--inference", action="store_true",
                        help="profile forward passes in eval mode under no_grad instead of training steps")
    parser.add_argument("--torch", action="store_true",
                        help="also time torch's training step in the same process, and report the ratio "
                             "and the convolutions' ceiling")
    parser.add_argument("--out", help="also write the tables to this .json file")
    args = parser.parse_args()
    names = [name.strip().lower() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(mc.models.MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(sorted(mc.models.MODELS))}")
    if args.torch and args.inference:
        parser.error("--torch times training steps; it cannot be combined with --inference")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches: expected whole numbers separated by commas, got {args.batches!r}")
    if min(batches) < 1:
        parser.error(f"--batches must be at least 1, got {args.batches!r}")
    backend.set_backend("numba")
    results = []
    for name in names:
        for batch in batches:
            plain, recorded, torch_times = profile(mc.models.get_model_class(name), batch, args.steps,
                                                   args.inference, args.torch)
            table, between, totals = summarize(recorded)
            title = f"{name} inference" if args.inference else name
            torch_ms = statistics.median(torch_times) * 1e3 if torch_times else None
            print(report(title, batch, statistics.mean(plain), totals, table, between, torch_ms=torch_ms), "\n",
                  flush=True)
            results.append({"model": name, "mode": "inference" if args.inference else "train", "batch": batch,
                            "plain_step_ms": statistics.mean(plain) * 1e3,
                            "plain_step_median_ms": statistics.median(plain) * 1e3, **totals, "rows": table,
                            "gaps": between, "torch_step_median_ms": torch_ms})
    if args.out:
        doc = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": cores.threads(),
                           "python": platform.python_version(), "numpy": np.__version__},
               "steps": args.steps, "profiles": results}
        temporary = args.out + ".tmp"
        with open(temporary, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(temporary, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
