"""fit's features for Keras/PyTorch users: early stopping (restoring the best weights), per-batch and
plateau schedulers, gradient clipping, a CSV log after every epoch, and resume with all of them."""
import csv

import numpy as np
import pytest
import torch

import minicnn as mc
from minicnn import data, train
from test_train import make_run, toy_problem


def _quiet(**kwargs):
    return dict(log=None, progress=False, **kwargs)


class _Scripted(train.EarlyStopping):
    """EarlyStopping fed a scripted sequence instead of the real metric (to know the best epoch)."""

    def __init__(self, values, **kwargs):
        super().__init__(**kwargs)
        self.values = list(values)

    def update(self, row, model):
        return super().update({**row, self.monitor: self.values[row["epoch"] - 1]}, model)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(tmp_path):
    model, opt, sched, loader, val = make_run()
    weights_after = {}
    stopper = _Scripted([0.9, 0.5, 0.7, 0.6, 0.8, 0.1], monitor="val_loss", patience=2)

    def log(line):
        if line.startswith("epoch"):
            weights_after[int(line.split()[1].split("/")[0])] = model.state_dict()
    history = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 6, val_loader=val, early_stopping=stopper,
                        checkpoint_dir=tmp_path, log=log, progress=False)
    assert len(history) == 5 and stopper.stopped_epoch == 5 and stopper.best_epoch == 2
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, weights_after[2][k], err_msg=k)
    first = next(iter(weights_after[5]))
    assert not np.array_equal(model.state_dict()[first], weights_after[5][first])
    assert mc.load(tmp_path / "last.npz")["epoch"] == 5           # the stopping epoch is saved


def test_early_stopping_on_real_metric_and_its_checks():
    model, opt, sched, loader, val = make_run()
    stopper = train.EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.5)   # nothing improves by 0.5
    history = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 10, val_loader=val, early_stopping=stopper,
                        **_quiet())
    assert len(history) == 3 and stopper.best_epoch == 1 and stopper.mode == "max"
    with pytest.raises(ValueError, match="no val_loader"):
        train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 1, early_stopping=train.EarlyStopping(), **_quiet())
    with pytest.raises(ValueError, match="monitor must be one of"):
        train.EarlyStopping(monitor="val_acc")


def test_resume_with_early_stopping_ends_where_an_uninterrupted_run_ends(tmp_path):
    values = [0.9, 0.5, 0.7, 0.4, 0.8, 0.85, 0.9, 0.3]
    model, opt, sched, loader, val = make_run()
    full = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 8, val_loader=val, scheduler=sched,
                     early_stopping=_Scripted(values, patience=2), checkpoint_dir=tmp_path / "a", **_quiet())
    reference = model.state_dict()
    model, opt, sched, loader, val = make_run()
    train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 3, val_loader=val, scheduler=sched,
              early_stopping=_Scripted(values, patience=2), checkpoint_dir=tmp_path / "b", **_quiet())
    model, opt, sched, loader, val = make_run(seed=5)
    stopper = _Scripted(values, patience=2)
    resumed = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 8, val_loader=val, scheduler=sched,
                        early_stopping=stopper, resume=tmp_path / "b" / "last.npz", **_quiet())
    assert len(full) == len(resumed) == 7 and stopper.best_epoch == 4
    for k in reference:
        np.testing.assert_array_equal(model.state_dict()[k], reference[k], err_msg=k)
    # resuming the run that stopped: it is over, as the uninterrupted one is (no epoch, the best weights)
    model, opt, sched, loader, val = make_run(seed=6)
    lines = []
    again = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 8, val_loader=val, scheduler=sched,
                      early_stopping=_Scripted(values, patience=2), resume=tmp_path / "a" / "last.npz", log=lines.append,
                      progress=False)
    assert len(again) == 7 and any("stopped early at epoch 7" in line for line in lines)
    for k in reference:
        np.testing.assert_array_equal(model.state_dict()[k], reference[k], err_msg=k)


def test_one_cycle_steps_per_batch_in_fit_as_in_a_torch_loop():
    model, opt, _, loader, _ = make_run()
    sched = mc.optim.OneCycleLR(opt, max_lr=0.1, epochs=3, steps_per_epoch=len(loader))
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt_t = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    sched_t = torch.optim.lr_scheduler.OneCycleLR(opt_t, max_lr=0.1, epochs=3, steps_per_epoch=len(loader))
    history = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 3, scheduler=sched, **_quiet())
    expected_first_lrs = []
    for epoch in range(3):
        expected_first_lrs.append(opt_t.param_groups[0]["lr"])
        for _ in range(len(loader)):
            opt_t.step()
            sched_t.step()
    assert history.lr == pytest.approx(expected_first_lrs, rel=1e-15)
    assert opt.param_groups[0]["lr"] == pytest.approx(opt_t.param_groups[0]["lr"], rel=1e-15)
    assert opt.param_groups[0]["momentum"] == pytest.approx(opt_t.param_groups[0]["momentum"], rel=1e-15)


def test_the_epoch_line_shows_where_a_per_batch_schedule_moved_the_rate():
    model, opt, _, loader, _ = make_run()
    sched = mc.optim.OneCycleLR(opt, max_lr=0.1, epochs=2, steps_per_epoch=len(loader))
    lines = []
    history = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 2, scheduler=sched, log=lines.append,
                        progress=False)
    end = opt.param_groups[0]["lr"]
    assert history.lr[0] == pytest.approx(0.004) and history.lr[1] > 0.05 and end < 0.01     # up, then down
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert f" lr 0.004->{history.lr[1]:.3g} " in epoch_lines[0], epoch_lines
    assert f" lr {history.lr[1]:.3g}->{end:.3g} " in epoch_lines[1], epoch_lines
    model, opt, sched, loader, _ = make_run()                  # a rate that holds within the epoch: one number
    lines = []
    train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 1, log=lines.append, progress=False)
    assert " lr 0.05 " in lines[0], lines


def test_reduce_on_plateau_is_given_the_validation_loss():
    model, opt, _, loader, val = make_run()
    sched = mc.optim.ReduceLROnPlateau(opt, patience=0, threshold=10.0, threshold_mode="abs")  # only epoch 1 is better
    history = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 3, val_loader=val, scheduler=sched, **_quiet())
    assert history.lr == pytest.approx([0.05, 0.05, 0.005])               # epoch 1 sets the best, then cuts
    assert sched.best == pytest.approx(history.val_loss[0])


def test_clip_grad_norm_in_fit_clips_every_step():
    model, opt, _, loader, _ = make_run()
    seen = []
    original = opt.step

    def step():
        seen.append(np.sqrt(sum(float((p.grad ** 2).sum()) for p in model.parameters() if p.grad is not None)))
        original()
    opt.step = step
    train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 1, clip_grad_norm=0.01, **_quiet())
    assert len(seen) == len(loader) and max(seen) <= 0.01 * (1 + 1e-6)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 1, clip_grad_norm=-1, **_quiet())


def test_csv_log_is_written_after_every_epoch(tmp_path):
    model, opt, sched, loader, val = make_run()
    path = tmp_path / "log.csv"
    rows_seen = []

    def log(line):
        if path.exists():
            rows_seen.append(len(list(csv.DictReader(path.open()))))
    train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 3, val_loader=val, csv_log=path, log=log, progress=False)
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and float(rows[-1]["val_accuracy"]) > 0
    assert rows_seen == [0, 1, 2] or rows_seen == [1, 2]    # log runs before the csv is rewritten for its epoch


def test_toy_problem_is_learnable_with_adam_and_onecycle():
    mc.manual_seed(0)
    model = mc.models.LeNet(num_classes=4)
    opt = mc.optim.Adam(model.parameters(), lr=1e-3)
    loader = data.DataLoader(toy_problem(192), 32, shuffle=True, seed=0)
    sched = mc.optim.OneCycleLR(opt, max_lr=3e-3, epochs=4, steps_per_epoch=len(loader))
    history = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 4, scheduler=sched, **_quiet())
    assert history.train_accuracy[-1] > 0.9 and 0.94 < opt.param_groups[0]["betas"][0] < 0.96


def _folder_loader(root, num_workers, seed=3):
    augment = data.Compose([data.RandomHorizontalFlip(0.5), data.RandomRotation(20), data.RandomCrop(28, padding=2)])
    folder = data.ImageFolder(root, transform=data.Compose([data.Resize(32), data.CenterCrop(28)]))
    return data.DataLoader(folder, 5, shuffle=True, seed=seed, transform=augment, num_workers=num_workers)


@pytest.mark.parametrize("num_workers", [1, 3])
def test_workers_deliver_the_batches_of_zero_workers(tmp_path, num_workers):
    root = data.make_shapes_folder(tmp_path / "shapes", per_class=6, size=40)
    serial, parallel = _folder_loader(root, 0), _folder_loader(root, num_workers)
    for epoch in range(2):
        a, b = list(serial), list(parallel)
        assert len(a) == len(b) == 4
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    first = next(iter(_folder_loader(root, num_workers, seed=4)))[0]
    assert not np.array_equal(first, a[0][0])            # another seed: other batches


def test_workers_stop_cleanly_and_pass_errors_on(tmp_path):
    root = data.make_shapes_folder(tmp_path / "shapes", per_class=4, size=32)
    loader = _folder_loader(root, 2)
    for i, _ in enumerate(loader):                       # leaving early neither hangs nor leaks threads
        break
    (tmp_path / "shapes" / "circle" / "001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image"):
        list(_folder_loader(root, 2))
    with pytest.raises(ValueError, match="num_workers"):
        data.DataLoader(toy_problem(), 4, num_workers=-1)


def test_fit_with_workers_equals_fit_without(tmp_path):
    results = []
    for workers in (0, 2):
        model, opt, sched, loader, val = make_run()
        loader.num_workers = workers
        train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 2, val_loader=val, scheduler=sched, **_quiet())
        results.append(model.state_dict())
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)
