"""GPU backend. Without a GPU these tests skip with the reason, except two that need none:
every kernels/*.cu compiles with nvcc for sm_80 and sm_90, and the wheel ships the kernels."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import minicnn as mc
import minicnn.nn as nn
from torch_compare import copy_state_to_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu")))


def gpu_reason():
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
        return None if count > 0 else "no CUDA device"
    except Exception as err:  # ImportError without CuPy, CUDARuntimeError without a driver
        return f"no usable GPU ({type(err).__name__}: {err})"


REASON = gpu_reason()
gpu = pytest.mark.skipif(REASON is not None, reason=str(REASON))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", KERNELS, ids=[os.path.basename(k) for k in KERNELS])
def test_kernels_compile_with_nvcc(source, arch, tmp_path):
    result = subprocess.run(["nvcc", "-DMINICNN_INSTANTIATE", f"-arch={arch}", "-c", source, "-o", str(tmp_path / "k.o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_every_kernel_family_is_there():
    assert {os.path.basename(k) for k in KERNELS} >= {"im2col.cu", "pool.cu", "batchnorm.cu", "softmax_ce.cu",
                                                       "activation.cu", "optim.cu"}


def test_wheel_ships_the_kernels(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), ROOT],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "Could not find a version" in result.stderr:
        pytest.skip("the build backend (hatchling) cannot be fetched here")
    assert result.returncode == 0, result.stderr
    wheel = next(iter(glob.glob(str(tmp_path / "minicnn-*.whl"))))
    names = zipfile.ZipFile(wheel).namelist()
    for k in KERNELS:
        assert f"minicnn/kernels/{os.path.basename(k)}" in names


def test_asking_for_cuda_without_a_gpu_is_one_clear_error():
    if REASON is None:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="device 'cuda' requested but not usable"):
        mc.models.LeNet().to("cuda")


# ------------------------------------------------------------------ on a GPU

LAYERS = [
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), lambda: torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 9, 8)),
    (lambda: nn.Conv2d(1, 6, 5, padding=2), lambda: torch.nn.Conv2d(1, 6, 5, padding=2), (1, 1, 28, 28)),
    (lambda: nn.MaxPool2d(3, 2, 1), lambda: torch.nn.MaxPool2d(3, 2, 1), (2, 3, 9, 7)),
    (lambda: nn.MaxPool2d(3, 1), lambda: torch.nn.MaxPool2d(3, 1), (2, 2, 8, 8)),
    (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), lambda: torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 7, 9)),
    (lambda: nn.BatchNorm2d(5), lambda: torch.nn.BatchNorm2d(5), (4, 5, 6, 6)),
    (lambda: nn.BatchNorm1d(7), lambda: torch.nn.BatchNorm1d(7), (9, 7)),
    (lambda: nn.ReLU(), lambda: torch.nn.ReLU(), (3, 11)),
    (lambda: nn.Linear(12, 5), lambda: torch.nn.Linear(12, 5), (4, 12)),
]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make,make_torch,shape", LAYERS)
def test_layers_on_gpu_match_torch(make, make_torch, shape, dtype):
    import cupy as cp
    layer = make().to(dtype).to("cuda")
    ref = make_torch().to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_state_to_torch(_cpu_copy(layer), ref)
    x = np.random.default_rng(0).permutation(np.linspace(-3, 3, int(np.prod(shape)))).reshape(shape).astype(dtype)
    dy = np.random.default_rng(1).standard_normal(layer(cp.asarray(x)).shape).astype(dtype)
    y = layer(cp.asarray(x))
    dx = layer.backward(cp.asarray(dy))
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(y), yt.detach().numpy(), **tol)
    np.testing.assert_allclose(cp.asnumpy(dx), xt.grad.numpy(), **tol)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(cp.asnumpy(p.grad), dict(ref.named_parameters())[name].grad.numpy(), **tol)


@gpu
@pytest.mark.gpu
def test_cross_entropy_on_gpu():
    import cupy as cp
    logits = np.random.default_rng(0).standard_normal((6, 10)) * 5
    labels = np.arange(6)
    for smoothing in (0.0, 0.1):
        ours, theirs = nn.CrossEntropyLoss(label_smoothing=smoothing), torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
        loss = ours(cp.asarray(logits), cp.asarray(labels))
        lt = torch.from_numpy(logits).requires_grad_()
        ref = theirs(lt, torch.from_numpy(labels))
        ref.backward()
        np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-10)
        np.testing.assert_allclose(cp.asnumpy(ours.backward()), lt.grad.numpy(), rtol=1e-10, atol=1e-12)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("model_cls", [mc.models.LeNet, mc.models.TinyBNNet, mc.models.MnistCNN])
def test_models_train_the_same_on_both_devices(model_cls, tmp_path):
    import cupy as cp
    mc.manual_seed(0)
    cpu_model = model_cls().double()
    gpu_model = model_cls().double()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.to("cuda")
    opt_c = mc.optim.Adam(cpu_model.parameters(), lr=1e-3)
    opt_g = mc.optim.Adam(gpu_model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, y = rng.standard_normal((4, 1, 28, 28)), rng.integers(0, 10, 4)
        for model, opt, xx, yy in ((cpu_model, opt_c, x, y), (gpu_model, opt_g, cp.asarray(x), cp.asarray(y))):
            model.eval()                                          # no dropout: both sides deterministic
            loss_fn = nn.CrossEntropyLoss()
            loss_fn(model(xx), yy)
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
    for (name, a), b in zip(cpu_model.state_dict().items(), gpu_model.state_dict().values()):
        np.testing.assert_allclose(a, cp.asnumpy(b), rtol=1e-8, atol=1e-10, err_msg=name)
    mc.save(gpu_model.state_dict(), tmp_path / "gpu.npz")           # checkpoints cross devices
    back = model_cls().double()
    back.load_state_dict(mc.load(tmp_path / "gpu.npz"))
    gpu_model.to("cpu")
    for a, b in zip(back.state_dict().values(), gpu_model.state_dict().values()):
        np.testing.assert_array_equal(a, b)


def _cpu_copy(layer):
    import copy
    return copy.deepcopy(layer).to("cpu")
