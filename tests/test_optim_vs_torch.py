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


def plateau_metric(step):
    """Falls, then wobbles on a plateau, then falls again: ReduceLROnPlateau cuts, cools down, waits."""
    return 1.0 / (1 + step) if step < 8 else (0.1 + 0.01 * np.sin(step) if step < 30 else 0.05 - 0.001 * step)


def run(ours, theirs, opt, opt_t, steps, sched=None, sched_t=None, start=0):
    for step in range(start, start + steps):
        for i, (p, pt) in enumerate(zip(ours, theirs)):
            p.grad = gradient(p.data, step, i)
            pt.grad = torch.from_numpy(gradient(pt.detach().numpy(), step, i))
        opt.step()
        opt_t.step()
        if isinstance(sched, mc.optim.ReduceLROnPlateau):
            sched.step(plateau_metric(step))
            sched_t.step(plateau_metric(step))
        elif sched is not None:
            sched.step()
            sched_t.step()
        if sched is not None:
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


SCHEDULERS_50 = [
    ("MultiStepLR", dict(milestones=[5, 12, 12, 30], gamma=0.5)),
    ("ExponentialLR", dict(gamma=0.93)),
    ("LinearLR", dict()),
    ("LinearLR", dict(start_factor=0.1, end_factor=0.8, total_iters=20)),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=50)),
    ("OneCycleLR", dict(max_lr=[0.2], epochs=5, steps_per_epoch=10, pct_start=0.25, anneal_strategy="linear",
                        div_factor=10.0, final_div_factor=100.0)),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=50, three_phase=True, base_momentum=0.8, max_momentum=0.9)),
    ("ReduceLROnPlateau", dict(patience=3)),
    ("ReduceLROnPlateau", dict(mode="max", factor=0.5, patience=2, threshold=0.01, threshold_mode="abs", cooldown=2,
                               min_lr=0.004)),
]


@pytest.mark.parametrize("sched_name,kwargs", SCHEDULERS_50, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULERS_50)])
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_scheduler_trajectory_over_50_steps(sched_name, kwargs, opt_name):
    """Rates (and OneCycleLR's momentum or beta1) equal torch's at every step, to the last bit that
    the recursive formulas allow; the parameters follow."""
    ours, theirs = make_params()
    extra = {"momentum": 0.9} if opt_name == "SGD" else {}
    opt, opt_t = getattr(mc.optim, opt_name)(ours, lr=0.05, **extra), getattr(torch.optim, opt_name)(theirs, lr=0.05, **extra)
    sched = getattr(mc.optim, sched_name)(opt, **kwargs)
    sched_t = getattr(torch.optim.lr_scheduler, sched_name)(opt_t, **kwargs)
    run(ours, theirs, opt, opt_t, 50, sched, sched_t)
    key = "betas" if opt_name == "Adam" else "momentum"
    assert opt.param_groups[0][key] == pytest.approx(opt_t.param_groups[0][key], rel=1e-15)


@pytest.mark.parametrize("sched_name,kwargs", [SCHEDULERS_50[0], SCHEDULERS_50[4], SCHEDULERS_50[8]])
def test_scheduler_state_resumes_through_a_checkpoint(sched_name, kwargs, tmp_path):
    ours, theirs = make_params()
    opt, opt_t = mc.optim.SGD(ours, lr=0.05, momentum=0.9), torch.optim.SGD(theirs, lr=0.05, momentum=0.9)
    sched = getattr(mc.optim, sched_name)(opt, **kwargs)
    sched_t = getattr(torch.optim.lr_scheduler, sched_name)(opt_t, **kwargs)
    run(ours, theirs, opt, opt_t, 20, sched, sched_t)
    mc.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.npz")
    restored = [mc.nn.Parameter(p.data.copy()) for p in ours]
    opt2 = mc.optim.SGD(restored, lr=0.05, momentum=0.9)
    sched2 = getattr(mc.optim, sched_name)(opt2, **kwargs)
    saved = mc.load(tmp_path / "s.npz")
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    run(restored, theirs, opt2, opt_t, 30, sched2, sched_t, start=20)


def test_scheduler_arguments_are_checked():
    opt = mc.optim.SGD(make_params()[0], lr=0.1)
    with pytest.raises(ValueError, match="total_steps, or epochs and steps_per_epoch"):
        mc.optim.OneCycleLR(opt, max_lr=1.0)
    with pytest.raises(ValueError, match="factor must be < 1"):
        mc.optim.ReduceLROnPlateau(opt, factor=1.5)
    with pytest.raises(ValueError, match="start_factor"):
        mc.optim.LinearLR(opt, start_factor=0)
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        mc.optim.OneCycleLR(_plain_optimizer(), max_lr=1.0, total_steps=10)
    sched = mc.optim.OneCycleLR(mc.optim.SGD(make_params()[0], lr=0.1), max_lr=1.0, total_steps=2)
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match="past its total_steps"):
        sched.step()


def _plain_optimizer():
    class Plain(mc.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(lr=0.1))
    return Plain(make_params()[0])


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_equals_torch(norm_type, max_norm, dtype):
    ours, theirs = make_params(3)
    for i, (p, pt) in enumerate(zip(ours, theirs)):
        g = gradient(p.data, 1, i).astype(dtype)
        p.data, p.grad = p.data.astype(dtype), g.copy()
        pt.data, pt.grad = pt.data.to(torch.float64 if dtype == np.float64 else torch.float32), torch.from_numpy(g.copy())
    ours[1].grad = None
    theirs[1].grad = None
    total = mc.optim.clip_grad_norm_(ours, max_norm, norm_type)
    total_t = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert total == pytest.approx(float(total_t), rel=tol)
    for p, pt in zip(ours, theirs):
        if p.grad is not None:
            assert p.grad.dtype == dtype
            np.testing.assert_allclose(p.grad, pt.grad.numpy(), rtol=tol, atol=tol)
    with pytest.raises(RuntimeError, match="error_if_nonfinite"):
        ours[0].grad[0, 0] = np.nan
        mc.optim.clip_grad_norm_(ours, max_norm, norm_type, error_if_nonfinite=True)


def test_clip_grad_value_equals_torch():
    ours, theirs = make_params(4)
    for i, (p, pt) in enumerate(zip(ours, theirs)):
        p.grad = gradient(p.data, 2, i)
        pt.grad = torch.from_numpy(p.grad.copy())
    mc.optim.clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, pt in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad, pt.grad.numpy())


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
