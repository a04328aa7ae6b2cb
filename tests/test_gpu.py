"""GPU backend. Without a GPU these tests skip with the reason, except those that need none:
every kernels/*.cu compiles with nvcc for sm_80 and sm_90, the wheel ships the kernels, and
asking for cuda without a GPU is one clear error. The layer grid runs on the GPU from
tests/test_layers_vs_torch.py (the any_backend fixture)."""
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
from conftest import GPU_REASON as REASON
from conftest import dropout_mask
from torch_compare import copy_state_to_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu")))


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


# ------------------------------------------------------------------ the rest of the GPU path
# Layers over the whole torch-equivalence grid run on the GPU through the any_backend fixture
# (tests/test_layers_vs_torch.py); the tests below cover models, optimizers, dropout, labels,
# device moves and CUDA graphs, against torch on CUDA with TF32 off.

def _torch_cuda():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here: the GPU reference is torch on CUDA")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch.device("cuda")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.05)), ("SGD", dict(lr=0.05, momentum=0.9)), ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001)), ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)), ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01)), ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True))])
def test_fused_gpu_optimizers_follow_torch_cuda(name, kwargs, dtype):
    """One launch per group (optim.cu's *_multi kernels) over tensors of several shapes, 20 steps
    with a learning rate that changes mid-way, against torch.optim on CUDA."""
    import cupy as cp
    dev = _torch_cuda()
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(dtype) for s in [(3, 4), (5,), (2, 3, 2, 2), (1,)]]
    ours = [mc.nn.Parameter(cp.asarray(a)) for a in arrays]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy()).to(dev)) for a in arrays]
    opt, opt_t = getattr(mc.optim, name)(ours, **kwargs), getattr(torch.optim, name)(theirs, **kwargs)
    sched, sched_t = mc.optim.StepLR(opt, 7, 0.5), torch.optim.lr_scheduler.StepLR(opt_t, 7, 0.5)
    tol = dict(rtol=1e-10, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-6)
    for step in range(20):
        for i, (p, pt) in enumerate(zip(ours, theirs)):
            g = p.data ** 3 - cp.sin(p.data + step) * (i + 1)
            p.grad = g
            pt.grad = torch.from_dlpack(g.copy())
        opt.step()
        opt_t.step()
        sched.step()
        sched_t.step()
        for p, pt in zip(ours, theirs):
            np.testing.assert_allclose(cp.asnumpy(p.data), pt.detach().cpu().numpy(), err_msg=f"step {step}", **tol)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("index", range(7), ids=["LeNet", "ConvNet", "MnistCNN", "TinyBNNet", "FashionCNN",
                                                 "AlexNetMNIST", "AnimalNet"])
def test_models_on_gpu_match_torch_cuda(index, optimizer):
    """Every model, 3 training steps in float64 on CuPy arrays against the torch twin on CUDA
    (dropout: the twin applies our GPU-drawn mask)."""
    import cupy as cp
    from test_models_vs_torch import MODELS, paired
    dev = _torch_cuda()
    make_ours, make_theirs, _, batch = MODELS[index]
    ours, theirs = paired(make_ours, make_theirs)
    ours.to("cuda")
    theirs.to(dev)
    if optimizer == "sgd":
        opt, opt_t = mc.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9), torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    else:
        opt, opt_t = mc.optim.Adam(ours.parameters(), lr=1e-3), torch.optim.Adam(theirs.parameters(), lr=1e-3)
    loss_fn, loss_fn_t = mc.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(3)
    for _ in range(3):
        x, y = rng.standard_normal((batch,) + make_ours.input_shape), rng.integers(0, 10, batch)
        logits = ours(cp.asarray(x))
        loss = loss_fn(logits, cp.asarray(y))
        opt.zero_grad()
        dx = ours.backward(loss_fn.backward())
        opt.step()
        xt = torch.from_numpy(x).to(dev).requires_grad_()
        logits_t = theirs(xt)
        loss_t = loss_fn_t(logits_t, torch.from_numpy(y).to(dev))
        opt_t.zero_grad()
        loss_t.backward()
        opt_t.step()
        np.testing.assert_allclose(cp.asnumpy(logits), logits_t.detach().cpu().numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(float(loss), loss_t.item(), rtol=1e-8)
        np.testing.assert_allclose(cp.asnumpy(dx), xt.grad.cpu().numpy(), rtol=1e-8, atol=1e-12)
    theirs_state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        np.testing.assert_allclose(cp.asnumpy(value), theirs_state[name].cpu().numpy(), rtol=1e-8, atol=1e-10, err_msg=name)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_dropout_draws_fresh_reproducible_masks(dtype):
    import cupy as cp
    x = cp.asarray(np.random.default_rng(0).standard_normal((256, 300)).astype(dtype))
    mc.manual_seed(5)
    layer = nn.Dropout(0.3)
    y1, mask1 = layer(x), dropout_mask(layer)
    layer(x)
    mask2 = dropout_mask(layer)
    values = set(cp.asnumpy(cp.unique(mask1)).tolist())
    assert values == {0.0, float(dtype(1 / 0.7))}
    assert abs(float((mask1 != 0).mean()) - 0.7) < 0.01
    assert not bool((mask1 == mask2).all())                       # a fresh mask every call
    np.testing.assert_array_equal(cp.asnumpy(y1), cp.asnumpy(x * mask1))
    dy = cp.ones_like(x)
    np.testing.assert_array_equal(cp.asnumpy(layer.backward(dy)), cp.asnumpy(mask2))
    mc.manual_seed(5)
    again = nn.Dropout(0.3)
    again(x)
    np.testing.assert_array_equal(cp.asnumpy(dropout_mask(again)), cp.asnumpy(mask1))   # same seed, same masks
    assert bool((mask2 != 0).any()) and abs(float((mask2 != 0).mean()) - 0.7) < 0.01


@gpu
@pytest.mark.gpu
def test_gpu_labels_out_of_range_are_one_clear_error():
    """The kernel flags a bad label without making the step wait; the error names it at the
    next cross-entropy call or at raise_pending_errors() (which fit calls when it reads its totals)."""
    import cupy as cp
    from minicnn.backend import cupy_ops
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(cp.zeros((2, 3)), cp.asarray([0, 7]))
    assert np.isnan(float(loss))                                   # the bad row's loss is NaN, nothing read out of bounds
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) for 3 classes, got 7"):
        loss_fn(cp.zeros((2, 3)), cp.asarray([0, 1]))
    loss_fn(cp.zeros((2, 3)), cp.asarray([-1, 0]))
    with pytest.raises(ValueError, match="got -1"):
        cupy_ops.raise_pending_errors()
    assert float(loss_fn(cp.zeros((2, 3)), cp.asarray([0, 2]))) == pytest.approx(np.log(3))   # the flag was reset
    cupy_ops.raise_pending_errors()


@gpu
@pytest.mark.gpu
def test_model_and_optimizer_state_move_between_devices():
    """Two steps on the CPU, two on the GPU, one more on the CPU: the optimizer's state follows
    the parameters, and the result equals five steps on the CPU."""
    import cupy as cp
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 1, 28, 28)), rng.integers(0, 10, 4)) for _ in range(5)]
    results = []
    for devices in (["cpu"] * 5, ["cpu", "cpu", "cuda", "cuda", "cpu"]):
        mc.manual_seed(0)
        model = mc.models.LeNet().double()
        opt = mc.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        for (x, y), device in zip(batches, devices):
            model.to(device)
            move = cp.asarray if device == "cuda" else np.asarray
            loss_fn(model(move(x)), move(y))
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        model.to("cpu")
        assert all(isinstance(v, np.ndarray) for st in opt.state.values() for v in st.values() if hasattr(v, "shape"))
        results.append(model.state_dict())
    for name in results[0]:
        np.testing.assert_allclose(results[1][name], results[0][name], rtol=1e-10, atol=1e-13, err_msg=name)


def _graph_vs_eager(make_model, make_opt, steps=8, batch=16, dtype=np.float64, odd_batch_at=None, own_gemm=True,
                    meanwhile=None):
    """Train twice from the same seed: with CudaGraphStep and eagerly (zero_grad in place, as the
    graph does). own_gemm: both runs multiply with kernels/gemm.cu, which the captured graph
    uses, so the two must agree bit for bit. Returns both models' states, the losses, and the
    step object."""
    import cupy as cp
    from minicnn.backend import cupy_ops
    from minicnn.cuda_graph import CudaGraphStep
    previous = cupy_ops._use_own_gemm(own_gemm)
    try:
        return _two_runs(make_model, make_opt, steps, batch, dtype, odd_batch_at, cp, CudaGraphStep, meanwhile)
    finally:
        cupy_ops._use_own_gemm(previous)


def _two_runs(make_model, make_opt, steps, batch, dtype, odd_batch_at, cp, CudaGraphStep, meanwhile):
    rng = np.random.default_rng(1)
    data = []
    for i in range(steps):
        n = batch // 2 if i == odd_batch_at else batch
        data.append((cp.asarray(rng.standard_normal((n, 1, 28, 28)).astype(dtype)), cp.asarray(rng.integers(0, 10, n))))
    runs = []
    for use_graph in (True, False):
        mc.manual_seed(0)
        model = make_model().to(dtype).to("cuda")
        opt, sched = make_opt(model)
        loss_fn = nn.CrossEntropyLoss()
        step = CudaGraphStep(model, loss_fn, opt) if use_graph else None
        losses = []
        for i, (x, y) in enumerate(data):
            if step is not None:
                loss, _ = step(x, y)
            else:
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=False)
                model.backward(loss_fn.backward(), input_grad=False)
                opt.step()
            losses.append(float(loss))
            if i == 4:
                sched.step()                     # a new learning rate between replays
                if meanwhile is not None:
                    meanwhile()
        runs.append(({k: cp.asnumpy(v) for k, v in model.state_dict().items()}, losses, step))
    return runs


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("model_name", ["LeNet", "MnistCNN", "TinyBNNet"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cuda_graph_training_equals_eager_training(model_name, optimizer):
    """Dropout (MnistCNN), batch norm (TinyBNNet), momentum, Adam's bias corrections and a
    scheduler all replay correctly: the graph's run equals the eager run bit for bit."""
    def make_opt(model):
        if optimizer == "sgd":
            opt = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        else:
            opt = mc.optim.Adam(model.parameters(), lr=1e-3)
        return opt, mc.optim.StepLR(opt, 1, 0.5)
    (graph_state, graph_losses, step), (eager_state, eager_losses, _) = _graph_vs_eager(
        getattr(mc.models, model_name), make_opt)
    assert step.replays == 8 - step.warmup
    assert graph_losses == eager_losses
    for name in eager_state:
        np.testing.assert_array_equal(graph_state[name], eager_state[name], err_msg=name)


@gpu
@pytest.mark.gpu
def test_cuda_graph_runs_other_shapes_eagerly_and_checks_labels():
    import cupy as cp

    def make_opt(model):
        opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return opt, mc.optim.StepLR(opt, 1, 1.0)
    (graph_state, graph_losses, step), (eager_state, eager_losses, _) = _graph_vs_eager(
        mc.models.LeNet, make_opt, odd_batch_at=5, own_gemm=False)      # cuBLAS eagerly, gemm.cu in the graph
    assert step.replays == 8 - step.warmup - 1
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-12)
    for name in eager_state:
        np.testing.assert_allclose(graph_state[name], eager_state[name], rtol=1e-12, atol=1e-15, err_msg=name)
    x = cp.zeros((16, 1, 28, 28))
    y = cp.zeros(16, dtype=cp.int64)
    y[3] = 12
    step(x, y)
    with pytest.raises(ValueError, match="labels must be in"):
        step.check_labels()


@gpu
@pytest.mark.gpu
def test_fit_with_a_cuda_graph():
    from minicnn import data, train
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (200, 1, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, 200)
    ds = data.ArrayDataset(x, y, classes=[str(i) for i in range(10)])
    mc.manual_seed(0)
    model = mc.models.LeNet().to("cuda")
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = data.DataLoader(ds, 32, shuffle=True, seed=0, transform=data.ToFloat(), device="cuda")
    history = train.fit(model, nn.CrossEntropyLoss(), opt, loader, 2, val_loader=loader, cuda_graph=True, log=None)
    assert len(history) == 2 and all(np.isfinite(history.train_loss))
    assert 0 <= history.val_accuracy[-1] <= 1


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape_a,shape_b,transpose_a,transpose_b", [
    ((1, 1), (1, 1), False, False), ((70, 33), (33, 129), False, False), ((70, 33), (33, 5), True, False),
    ((64, 16), (16, 10), False, True), ((3, 65, 17), (3, 17, 66), False, False), ((65, 17), (4, 17, 9), False, False),
    ((4, 20, 7), (7, 3), False, False), ((5, 0), (0, 4), False, False), ((2, 9, 300), (2, 300, 8), False, False)])
def test_own_gemm_kernel_matches_cublas_and_numpy(shape_a, shape_b, transpose_a, transpose_b, dtype):
    """kernels/gemm.cu (what a captured CUDA graph multiplies with) on 2-D, batched and broadcast
    operands, transposed views included, against NumPy in float64 and cuBLAS."""
    import cupy as cp
    from minicnn.backend import cupy_ops
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape_a).astype(dtype)
    b = rng.standard_normal(shape_b).astype(dtype)
    # a transposed operand is the .T view of a contiguous array: the kernel reads it through strides
    ga = cp.asarray(np.ascontiguousarray(a.T)).T if transpose_a else cp.asarray(a)
    gb = cp.asarray(np.ascontiguousarray(b.T)).T if transpose_b else cp.asarray(b)
    assert ga.flags.c_contiguous != transpose_a and gb.flags.c_contiguous != transpose_b
    previous = cupy_ops._use_own_gemm(True)
    try:
        ours = cupy_ops.matmul(ga, gb)
    finally:
        cupy_ops._use_own_gemm(previous)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert ours.shape == expected.shape and ours.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cp.asnumpy(ours), expected, **tol)
    np.testing.assert_allclose(cp.asnumpy(ours), cp.asnumpy(ga @ gb), **tol)


@gpu
@pytest.mark.gpu
def test_cuda_graph_keeps_its_tables_when_the_cache_is_emptied():
    """Eager steps with fresh gradients fill the backend's table cache until it is emptied; a
    captured graph must keep reading valid pointer tables afterwards (it once read freed ones)."""
    from minicnn.backend import cupy_optim

    def make_opt(model):
        opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return opt, mc.optim.StepLR(opt, 1, 1.0)

    def flood():
        for i in range(1200):
            cupy_optim.cached_table((i, -i), np.int64)
    (graph_state, _, step), (eager_state, _, _) = _graph_vs_eager(mc.models.LeNet, make_opt, steps=10, meanwhile=flood)
    assert step.replays == 8
    for name in eager_state:
        np.testing.assert_array_equal(graph_state[name], eager_state[name], err_msg=name)
