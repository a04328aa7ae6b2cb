"""Training glue: fit/evaluate/predict, History files, exact resume, plots, the CLI, and a
real-data smoke test (LeNet on 5,000 MNIST images for one epoch reaches >= 90%)."""
import json
import os

import numpy as np
import pytest

import minicnn as mc
from minicnn import data, plot, train
from minicnn.cli import main as cli

SHARED = os.environ.get("MINICNN_DATA")
needs_data = pytest.mark.skipif(not SHARED or not os.path.isdir(os.path.join(SHARED or "", "mnist")),
                                reason="MINICNN_DATA does not point at the MNIST files")


def toy_problem(n=96, seed=0):
    """Images whose class is the quadrant holding a bright square: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 1, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 4, n)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, 14 * r + 3:14 * r + 11, 14 * c + 3:14 * c + 11] = 255
    return data.ArrayDataset(x, y, classes=["tl", "tr", "bl", "br"])


def make_run(seed=0, dtype=np.float64):
    mc.manual_seed(seed)
    model = mc.models.ConvNet(num_classes=4).to(dtype)          # dropout and batch norm: state to restore
    opt = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = mc.optim.StepLR(opt, 2, 0.5)
    ds = toy_problem()
    transform = data.RandomCrop(28, padding=1)                   # random augmentation draws too
    loader = data.DataLoader(ds, 16, shuffle=True, seed=seed, transform=transform, dtype=dtype)
    val = data.DataLoader(toy_problem(32, seed=1), 16, dtype=dtype)
    return model, opt, sched, loader, val


def test_fit_learns_and_records_history(tmp_path):
    model, opt, sched, loader, val = make_run(dtype=np.float32)
    history = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 4, val_loader=val, scheduler=sched,
                        checkpoint_dir=tmp_path, log=None, progress=False)
    assert len(history) == 4 and history.lr == [0.05, 0.05, 0.025, 0.025]
    assert history.val_accuracy[-1] >= 0.9
    assert history.train_loss[-1] < history.train_loss[0]
    assert all(r["images_per_second"] > 0 for r in history.rows)
    history.to_json(tmp_path / "h.json")
    history.to_csv(tmp_path / "h.csv")
    assert json.loads((tmp_path / "h.json").read_text())[0]["epoch"] == 1
    assert (tmp_path / "h.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    assert {"last.npz", "best.npz"} <= set(os.listdir(tmp_path))


def test_resume_ends_bitwise_where_an_uninterrupted_run_ends(tmp_path):
    model, opt, sched, loader, val = make_run()
    full = train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 4, val_loader=val, scheduler=sched,
                     checkpoint_dir=tmp_path / "full", every=2, log=None, progress=False)
    reference = model.state_dict()

    model2, opt2, sched2, loader2, val2 = make_run()
    train.fit(model2, mc.nn.CrossEntropyLoss(), opt2, loader2, 2, val_loader=val2, scheduler=sched2,
              checkpoint_dir=tmp_path / "half", log=None, progress=False)
    mc.manual_seed(999)                                      # disturb every generator before resuming
    model3, opt3, sched3, loader3, val3 = make_run(seed=5)
    resumed = train.fit(model3, mc.nn.CrossEntropyLoss(), opt3, loader3, 4, val_loader=val3, scheduler=sched3,
                        resume=tmp_path / "half" / "last.npz", log=None, progress=False)
    for name, value in model3.state_dict().items():
        assert np.array_equal(value, reference[name]), name
    assert resumed.rows[2:] != [] and [r["train_loss"] for r in resumed.rows] == [r["train_loss"] for r in full.rows]


def test_resume_rejects_foreign_checkpoints(tmp_path):
    mc.save(mc.models.LeNet().state_dict(), tmp_path / "weights.npz")
    model, opt, sched, loader, _ = make_run()
    with pytest.raises(ValueError, match="was not written by fit"):
        train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 2, resume=tmp_path / "weights.npz", log=None)


def test_resume_refuses_a_run_without_the_checkpoints_scheduler(tmp_path):
    """A checkpoint written with StepLR resumed with no scheduler (the rate would stay where the
    schedule left it) or with another kind (which would take StepLR's state) is refused, and nothing
    changes; a scheduler for a checkpoint written without one starts at its beginning."""
    model, opt, sched, loader, val = make_run()
    train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 1, scheduler=sched, checkpoint_dir=tmp_path / "a",
              log=None, progress=False)
    model2, opt2, _, loader2, _ = make_run(seed=3)
    before = model2.state_dict()
    with pytest.raises(ValueError, match="written with StepLR and this run has no scheduler"):
        train.fit(model2, mc.nn.CrossEntropyLoss(), opt2, loader2, 2, resume=tmp_path / "a" / "last.npz",
                  log=None, progress=False)
    cosine = mc.optim.CosineAnnealingLR(opt2, 4)
    with pytest.raises(ValueError, match="written with StepLR, this run uses CosineAnnealingLR"):
        train.fit(model2, mc.nn.CrossEntropyLoss(), opt2, loader2, 2, scheduler=cosine,
                  resume=tmp_path / "a" / "last.npz", log=None, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(before.values(), model2.state_dict().values()))
    assert cosine.last_epoch == 0 and opt2.param_groups[0]["lr"] == 0.05
    train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 1, checkpoint_dir=tmp_path / "b", log=None, progress=False)
    model3, opt3, _, loader3, _ = make_run()
    fresh = mc.optim.StepLR(opt3, 1, 0.5)
    history = train.fit(model3, mc.nn.CrossEntropyLoss(), opt3, loader3, 3, scheduler=fresh,
                        resume=tmp_path / "b" / "last.npz", log=None, progress=False)
    assert history.lr[1:] == [0.05, 0.025]                   # epochs 2 and 3: StepLR from its start


def test_evaluate_predict_confusion():
    model, _, _, loader, _ = make_run(dtype=np.float32)
    result = train.evaluate(model, loader, mc.nn.CrossEntropyLoss())
    assert 0 <= result["accuracy"] <= 1 and result["loss"] > 0 and model.training
    x = toy_problem(10).data.astype(np.float32) / 255
    probs, classes = train.predict(model, x, batch_size=3)
    assert probs.shape == (10, 4) and np.allclose(probs.sum(1), 1) and np.array_equal(classes, probs.argmax(1))
    cm = train.confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError):
        train.confusion_matrix([0, 5], [0, 1], 3)


def test_plots_are_written_as_png(tmp_path):
    history = train.History([{"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 0.1 / e, "val_loss": 1.2 / e,
                              "val_accuracy": 1 - 0.2 / e} for e in range(1, 5)])
    ds = toy_problem(16)
    paths = [plot.learning_curves(history, tmp_path / "a.png"), plot.loss_accuracy_chart(history, tmp_path / "b.png"),
             plot.confusion_matrix_plot(np.eye(4, dtype=int) * 5, ds.classes, tmp_path / "c.png"),
             plot.predictions_grid(ds.data, ds.targets, (ds.targets + 1) % 4, ds.classes, tmp_path / "d.png"),
             plot.filters(mc.models.LeNet()[0].weight.data, tmp_path / "e.png")]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "resnet"], "unknown model 'resnet'"),
    (["train", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["train", "--epochs", "0"], "expected a positive integer"),
    (["train", "--lr", "-1"], "expected a positive finite number"),
    (["train", "--lr", "inf"], "expected a positive finite number, got inf"),
    (["train", "--weight-decay", "nan"], "expected a finite number >= 0, got nan"),
    (["train", "--optimizer", "rmsprop"], "unknown optimizer"),
    (["train", "--label-smoothing", "1.5"], "--label-smoothing: expected a number in [0, 1), got 1.5"),
    (["train", "--val-split", "1"], "--val-split: expected a number in [0, 1), got 1"),
    (["train", "--cuda-graph"], "--cuda-graph needs --device cuda"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["predict", "/nonexistent.npz", "x"], "does not exist"),
    (["bogus"], "invalid choice"),
])
def test_cli_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_info(capsys):
    assert cli(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "backends available" in out
    assert "Numba path:" in out and "threads" in out


@needs_data
def test_smoke_lenet_on_real_mnist(tmp_path, capsys):
    """The CI smoke test: 5,000 training images, one epoch, >= 90% on 1,000 test images; then
    evaluate and predict from the run folder as a user would."""
    out = tmp_path / "run"
    code = cli(["train", "--model", "lenet", "--dataset", "mnist", "--epochs", "1", "--train-limit", "5000",
                "--test-limit", "1000", "--batch-size", "32", "--optimizer", "adam", "--lr", "0.003",
                "--seed", "0", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy ")[1].split("%")[0])
    assert accuracy >= 90.0, printed
    for name in ("model.npz", "history.json", "history.csv", "curves.png", "loss_accuracy.png", "confusion.png",
                 "predictions.png", "filters.png", "checkpoints"):
        assert (out / name).exists(), name
    assert cli(["evaluate", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    images = data.MNIST(train=False).data[:5, 0]
    np.save(tmp_path / "five.npy", images)
    assert cli(["predict", str(out / "model.npz"), str(tmp_path / "five.npy"), "--csv", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 6
    assert sum(int(line.split(",")[1]) == t for line, t in zip(lines[1:], [7, 2, 1, 0, 4])) >= 4


def test_cli_gradcheck_of_the_layers_and_a_model(capsys):
    assert cli(["gradcheck", "--entries", "4"]) == 0
    out = capsys.readouterr().out
    assert "Conv2d" in out and "FAIL" not in out
    assert cli(["gradcheck", "--model", "lenet", "--entries", "3"]) == 0
    assert "LeNet" in capsys.readouterr().out
