"""Every example runs at a tiny size as a user would (a subprocess in a scratch folder), so none can
rot; the numbers they print are not checked beyond being there."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))
DATA = os.environ.get("MINICNN_DATA", "")
needs = {"mnist": pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "mnist")), reason="no MINICNN_DATA/mnist"),
         "fashion": pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "fashion-mnist")),
                                       reason="no MINICNN_DATA/fashion-mnist")}


def run(script, *args, cwd):
    env = {**os.environ, "MINICNN_DATA": os.path.abspath(DATA) if DATA else ""}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_there_are_five_examples_and_no_hidden_helper():
    assert len(EXAMPLES) == 5 and not any(f.startswith("_") for f in EXAMPLES)


@needs["mnist"]
def test_01_lenet_training_loop(tmp_path):
    out = run("01_lenet_training_loop.py", "--limit", "512", "--epochs", "1", cwd=tmp_path)
    assert "test accuracy" in out and (tmp_path / "runs" / "example-lenet" / "lenet.npz").exists()


@needs["mnist"]
def test_02_mnist_cnn_adam(tmp_path):
    out = run("02_mnist_cnn_adam.py", "--limit", "512", "--epochs", "1", cwd=tmp_path)
    assert "test accuracy" in out
    for name in ("confusion.png", "predictions.png", "curves.png", "history.csv"):
        assert (tmp_path / "runs" / "example-mnist-cnn" / name).exists(), name


@needs["fashion"]
def test_03_fashion_bn_submission(tmp_path):
    out = run("03_fashion_bn_submission.py", "--limit", "600", "--epochs", "2", cwd=tmp_path)
    lines = (tmp_path / "runs" / "example-fashion" / "submission.csv").read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 601 and "best validation loss" in out


@needs["mnist"]
def test_04_convnet_checkpoints_and_resume(tmp_path):
    run("04_convnet_sgd_checkpoints.py", "--limit", "512", "--epochs", "2", cwd=tmp_path)
    folder = tmp_path / "runs" / "example-convnet"
    assert {"epoch-1.npz", "epoch-2.npz", "loss_accuracy.png"} <= set(os.listdir(folder))
    out = run("04_convnet_sgd_checkpoints.py", "--limit", "512", "--epochs", "3", "--resume",
              str(folder / "epoch-2.npz"), cwd=tmp_path)
    assert "epoch 3:" in out and "epoch 1:" not in out and (folder / "epoch-3.npz").exists()


def test_05_imagefolder_vgg_on_generated_shapes(tmp_path):
    out = run("05_imagefolder_vgg.py", "--per-class", "10", "--epochs", "1", cwd=tmp_path)
    assert "classes ['circle', 'square', 'triangle']" in out and "validation accuracy" in out
    assert (tmp_path / "runs" / "example-vgg" / "predictions.png").exists()
