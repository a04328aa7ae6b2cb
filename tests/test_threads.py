"""Numba's kernels give every thread whole samples (or channels) to write, so results do not
depend on the number of threads: one training step of ConvNet and MnistCNN on 1 and on 2 threads
must agree bit for bit (each run in its own process: the thread count is fixed at import)."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

STEP = r"""
import sys, numpy as np, minicnn as mc
out = {}
for name in ("convnet", "mnistcnn", "fashioncnn"):
    mc.manual_seed(0)
    model = mc.models.get_model(name)
    x = np.random.default_rng(1).standard_normal((5, 1, 28, 28)).astype(np.float32)
    y = np.arange(5) % 10
    loss_fn = mc.nn.CrossEntropyLoss()
    out[name + "/loss"] = np.array(loss_fn(model(x), y))
    out[name + "/dx"] = model.backward(loss_fn.backward())
    for k, p in model.named_parameters():
        out[name + "/" + k] = p.grad
np.savez(sys.argv[1], **out)
"""


def run_step(threads, path):
    env = dict(os.environ, MINICNN_NUMBA_THREADS=str(threads), MINICNN_BACKEND="numba")
    subprocess.run([sys.executable, "-c", STEP, str(path)], check=True, env=env, timeout=600)
    with np.load(path) as f:
        return dict(f)


def test_one_and_two_threads_agree_bit_for_bit(tmp_path):
    one, two = run_step(1, tmp_path / "one.npz"), run_step(2, tmp_path / "two.npz")
    assert one.keys() == two.keys() and len(one) > 20
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
