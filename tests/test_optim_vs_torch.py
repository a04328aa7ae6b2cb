"""Optimizers and schedulers: 20-step trajectories equal torch's (float64), including weight
decay, dampening, nesterov, amsgrad, decoupled decay and learning-rate schedules; state dicts
resume a run exactly."""
import numpy as np
import pytest
import torch

import minicnn as mc

SHAPES = [(3, 4), (5,), (2, 3, 2, 2)]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in SHAPES]
    ours = [mc.nn.Parameter(a.copy()) for a in arrays]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    return ours, theirs


def gradient(values, step, i):
    """A deterministic gradient that depends on the current parameters (so errors compound)."""
    return values ** 3 - np.sin(values + step) * (i + 1)


def run(ours, theirs, opt, opt_t, steps, sched=None, sched_t=None, start=0):
    for step in range(start, start + steps):
        for i, (p, pt) in enumerate(zip(ours, theirs)):
            p.grad = gradient(p.data, step, i)
            pt.grad = torch.from_numpy(gradient(pt.detach().numpy(), step, i))
        opt.step()
        opt_t.step()
        if sched is not None:
            sched.step()
            sched_t.step()
            assert sched.get_last_lr() == pytest.approx(sched_t.get_last_lr(), rel=1e-15)
        for p, pt in zip(ours, theirs):
            np.testing.assert_allclose(p.data, pt.detach().numpy(), rtol=1e-10, atol=1e-13, err_msg=f"step {step}")


CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_optimizer_trajectory(cpu_backend, name, kwargs):
    ours, theirs = make_params()
    run(ours, theirs, getattr(mc.optim, name)(ours, **kwargs), getattr(torch.optim, name)(theirs, **kwargs), 20)


@pytest.mark.parametrize("sched_name,kwargs", [("StepLR", dict(step_size=3, gamma=0.5)),
                                               ("StepLR", dict(step_size=1, gamma=0.9)),
                                               ("CosineAnnealingLR", dict(T_max=7)),
                                               ("CosineAnnealingLR", dict(T_max=5, eta_min=0.001))])
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_scheduler_trajectory(sched_name, kwargs, opt_name):
    ours, theirs = make_params()
    opt = getattr(mc.optim, opt_name)(ours, lr=0.05, **({"momentum": 0.9} if opt_name == "SGD" else {}))
    opt_t = getattr(torch.optim, opt_name)(theirs, lr=0.05, **({"momentum": 0.9} if opt_name == "SGD" else {}))
    sched = getattr(mc.optim, sched_name)(opt, **kwargs)
    sched_t = getattr(torch.optim.lr_scheduler, sched_name)(opt_t, **kwargs)
    run(ours, theirs, opt, opt_t, 20, sched, sched_t)


@pytest.mark.parametrize("name,kwargs", [CONFIGS[4], CONFIGS[7], CONFIGS[9]])
def test_state_dict_resumes_exactly(cpu_backend, name, kwargs, tmp_path):
    ours, theirs = make_params()
    opt, opt_t = getattr(mc.optim, name)(ours, **kwargs), getattr(torch.optim, name)(theirs, **kwargs)
    sched, sched_t = mc.optim.StepLR(opt, 4, 0.5), torch.optim.lr_scheduler.StepLR(opt_t, 4, 0.5)
    run(ours, theirs, opt, opt_t, 10, sched, sched_t)
    path = tmp_path / "opt.npz"
    mc.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, path)
    restored = [mc.nn.Parameter(p.data.copy()) for p in ours]
    opt2 = getattr(mc.optim, name)(restored, **kwargs)
    sched2 = mc.optim.StepLR(opt2, 4, 0.5)
    saved = mc.load(path)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    run(restored, theirs, opt2, opt_t, 10, sched2, sched_t, start=10)


def test_param_groups_and_zero_grad():
    ours, _ = make_params()
    opt = mc.optim.SGD([{"params": ours[:1], "lr": 0.5}, {"params": ours[1:]}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    for p in ours:
        p.grad = np.ones_like(p.data)
    before = [p.data.copy() for p in ours]
    opt.step()
    np.testing.assert_allclose(ours[0].data, before[0] - 0.5)
    np.testing.assert_allclose(ours[1].data, before[1] - 0.1)
    opt.zero_grad()
    assert all(p.grad is None for p in ours)


@pytest.mark.parametrize("name,kwargs", CONFIGS[:5], ids=[f"SGD-{i}" for i in range(5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sgd_step_equals_the_reference_bit_for_bit(name, kwargs, dtype):
    """Numba's one-pass SGD update performs NumPy's operations in the same order and precision."""
    from minicnn import backend
    results = []
    for backend_name in ("numpy", "numba"):
        ours, _ = make_params()
        params = [mc.nn.Parameter(p.data.astype(dtype)) for p in ours]
        opt = mc.optim.SGD(params, **kwargs)
        with backend.use_backend(backend_name):
            for step in range(5):
                for i, p in enumerate(params):
                    p.grad = gradient(p.data, step, i).astype(dtype)
                opt.step()
        results.append([p.data for p in params])
    for a, b in zip(*results):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)


def test_float32_parameters_stay_float32(cpu_backend):
    p = mc.nn.Parameter(np.ones(3, dtype=np.float32))
    for opt in (mc.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1), mc.optim.AdamW([p], lr=0.1)):
        p.grad = np.ones(3, dtype=np.float32)
        opt.step()
        assert p.data.dtype == np.float32


@pytest.mark.parametrize("make", [lambda ps: mc.optim.SGD(ps, lr=-1), lambda ps: mc.optim.SGD(ps, lr=0.1, nesterov=True),
                                  lambda ps: mc.optim.Adam(ps, betas=(1.0, 0.9)), lambda ps: mc.optim.SGD([], lr=0.1),
                                  lambda ps: mc.optim.SGD(ps, lr=0.1, momentum=-0.5)])
def test_invalid_hyperparameters(make):
    ours, _ = make_params()
    with pytest.raises(ValueError):
        make(ours)


def test_load_state_dict_from_other_parameters_fails():
    ours, _ = make_params()
    opt = mc.optim.Adam(ours)
    other = mc.optim.Adam(ours[:2])
    with pytest.raises(ValueError, match="groups of sizes"):
        other.load_state_dict(opt.state_dict())
