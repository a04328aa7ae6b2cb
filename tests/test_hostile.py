"""Hostile input, crashes and interrupts (issue 18's battery): each case ends in a clear error or a
clean exit, never a traceback, a lost or half-written file, a memory bomb or a silent wrong result."""
import gzip
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile

import numpy as np
import pytest

import minicnn as mc
from minicnn import data, train
from minicnn.cli import main as cli
from test_data import write_idx, write_small_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dead_pid():
    """The process id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------ 1. interrupts

@pytest.mark.parametrize("delay", [0.05, 0.3, 0.9])
def test_sigint_during_training_ends_with_130_and_says_what_was_saved(tmp_path, delay):
    write_small_dataset(tmp_path / "mnist", n=256)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "minicnn.cli", "train", "--data", str(tmp_path / "mnist"),
                             "--epochs", "200", "--batch-size", "8", "--out", str(tmp_path / "run")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.time() + 120
        while "epoch   1/200" not in line and time.time() < deadline:
            line = proc.stdout.readline()              # the first epoch (and its checkpoint) is done
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SystemError" not in err, err
    assert "minicnn: interrupted in epoch" in err and "saved:" in err and "--resume" in err, err
    state = mc.load(tmp_path / "run" / "checkpoints" / "last.npz")
    assert state["epoch"] >= 1
    assert not [f for f in os.listdir(tmp_path / "run" / "checkpoints") if f.startswith(".tmp-")]


def test_sigint_before_the_first_checkpoint_says_nothing_was_saved(tmp_path):
    write_small_dataset(tmp_path / "mnist", n=16384)   # 14,746 steps of 1 image: seconds, on a fast CPU too
    proc = subprocess.Popen([sys.executable, "-m", "minicnn.cli", "train", "--data", str(tmp_path / "mnist"),
                             "--epochs", "3", "--batch-size", "1", "--out", str(tmp_path / "run")],
                            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        while "training" not in proc.stdout.readline():
            pass
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "nothing was saved yet" in err and "Traceback" not in err, err


# ------------------------------------------------------------------ 2. divergence and non-finite hyper-parameters

@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_divergence_is_one_line_and_exit_1(tmp_path, optimizer, capsys):
    write_small_dataset(tmp_path / "mnist", n=64)
    with warnings.catch_warnings(record=True) as caught:        # NumPy's overflow warnings would print too
        warnings.simplefilter("always")
        code = cli(["train", "--data", str(tmp_path / "mnist"), "--epochs", "2", "--lr", "1e6", "--optimizer",
                    optimizer, "--out", str(tmp_path / "run")])
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    err = capsys.readouterr().err
    assert code == 1 and "training loss became" in err and "lower the learning rate" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------ 3. temporaries of killed writers

def test_temporaries_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    gone, here = dead_pid(), os.getpid()
    stale = [tmp_path / f".tmp-{gone}-x1last.npz", tmp_path / ".tmp-oldformatlast.npz"]
    kept = [tmp_path / f".tmp-{here}-x2last.npz", tmp_path / ".tmp-youngformatlast.npz"]
    for f in stale + kept:
        f.write_bytes(b"x" * 1000)
    old = time.time() - 2 * 3600
    os.utime(stale[1], (old, old))
    mc.save({"a": np.ones(3)}, tmp_path / "last.npz")
    assert [f.exists() for f in stale] == [False, False] and all(f.exists() for f in kept)
    assert mc.load(tmp_path / "last.npz")["a"].tolist() == [1, 1, 1]


def test_download_temporaries_of_dead_downloads_are_removed_and_a_trickle_hits_the_deadline(tmp_path):
    from minicnn.data.download import DownloadError, download
    part = tmp_path / f".part-{dead_pid()}-abc"
    part.write_bytes(b"half a file")

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.time()
        with pytest.raises(DownloadError, match="still downloading after 1 s"):
            download(f"http://127.0.0.1:{server.server_port}/f", tmp_path / "f.gz", "0" * 32, timeout=5, deadline=1)
        assert time.time() - started < 5
    finally:
        server.shutdown()
    assert not part.exists()
    assert [f for f in os.listdir(tmp_path) if f.startswith(".part-")] == []


# ------------------------------------------------------------------ 4. generators of layers and transforms in checkpoints

def test_resume_is_exact_with_seeded_dropout_and_crop(tmp_path):
    def run(epochs, resume=None, checkpoint_dir=None):
        mc.manual_seed(0)
        model = mc.nn.Sequential(mc.nn.Flatten(), mc.nn.Linear(784, 32), mc.nn.ReLU(), mc.nn.Dropout(0.5, seed=7),
                                 mc.nn.Linear(32, 10)).double()
        opt = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        rng = np.random.default_rng(0)
        ds = data.ArrayDataset(rng.integers(0, 255, (64, 1, 28, 28)).astype(np.uint8), rng.integers(0, 10, 64),
                               classes=[str(i) for i in range(10)])
        loader = data.DataLoader(ds, 16, shuffle=True, seed=1, transform=data.RandomCrop(28, 2, seed=5),
                                 dtype=np.float64)
        train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, epochs, checkpoint_dir=checkpoint_dir,
                  resume=resume, log=None, progress=False)
        return model.state_dict()

    whole = run(4)
    run(2, checkpoint_dir=tmp_path)
    resumed = run(4, resume=tmp_path / "last.npz")
    state = mc.load(tmp_path / "last.npz")
    assert sorted(state["generators"]) == ["model:3", "transform:0:RandomCrop"]
    for k, v in whole.items():
        np.testing.assert_array_equal(resumed[k], v, err_msg=k)


# ------------------------------------------------------------------ 5. empty batches

@pytest.mark.parametrize("name", ["lenet", "convnet", "mnistcnn", "fashioncnn", "resnet14", "mobilenetmnist"])
def test_an_empty_batch_gives_empty_outputs_as_torch(cpu_backend, name):
    import torch
    from minicnn.interop import to_torch
    model = mc.models.get_model(name).eval()
    x = np.zeros((0, 1, 28, 28), np.float32)
    with mc.no_grad():
        y = model(x)
    assert y.shape == tuple(to_torch(model).eval()(torch.from_numpy(x)).shape) == (0, 10)
    y = model(x)                                            # eval mode, with a backward
    assert model.backward(np.zeros_like(y)).shape == x.shape
    loss_fn = mc.nn.CrossEntropyLoss()
    assert np.isnan(loss_fn(y, np.zeros(0, np.int64))) and loss_fn.backward().shape == (0, 10)
    probs, classes = train.predict(model, x)
    assert probs.shape == (0, 10) and classes.shape == (0,)
    if any(isinstance(m, mc.nn.BatchNorm2d) for m in model.modules()):
        model.train()
        with pytest.raises(ValueError, match="expected more than 1 value per channel when training"):
            model(x)                                        # torch refuses this too


# ------------------------------------------------------------------ 6. checkpoint files as an attack surface

def npz_with(tmp_path, structure, members):
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__structure__.npy", _npy(np.frombuffer(json.dumps(structure).encode(), np.uint8)))
        for name, payload in members.items():
            z.writestr(name, payload)
    return path


def _npy(array):
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_member_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    header = np.lib.format.header_data_from_array_1_0(np.zeros(3, np.float64))
    header["shape"] = (10**12,)
    import io
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    path = npz_with(tmp_path, {"format": "minicnn-checkpoint-1", "tree": {"array": "a"}},
                    {"a.npy": buffer.getvalue() + b"\0" * 24})
    with pytest.raises(ValueError, match=r"declares shape \(1000000000000,\)"):
        mc.load(path)


def test_a_zip_bomb_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("__structure__.npy", _npy(np.frombuffer(b'{"format": "minicnn-checkpoint-1", "tree": {"array": "a"}}',
                                                          np.uint8)))
        with z.open("a.npy", "w", force_zip64=True) as f:
            f.write(np.lib.format.magic(1, 0))
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2**25,)})
            zeros = bytes(2**22)
            for _ in range(64):                             # 256 MB of zeros, a few hundred KB on disk
                f.write(zeros)
    assert os.path.getsize(path) < 2**21
    started = time.time()
    with pytest.raises(ValueError, match="more than a .*-byte file holds"):
        mc.load(path)
    assert time.time() - started < 2


@pytest.mark.parametrize("structure,message", [
    ({"format": "minicnn-checkpoint-1", "tree": [1, 2]}, "unknown node of type list"),
    ([1, 2], "unknown format"),
    ({"format": "minicnn-checkpoint-1", "tree": {"list": [1], "dict": []}}, "unknown node with keys"),
    ({"format": "minicnn-checkpoint-1", "tree": {"array": "missing"}}, "missing array"),
    ({"format": "minicnn-checkpoint-1", "tree": {"dict": [[1]]}}, "pairs"),
])
def test_malformed_structures_are_valueerrors(tmp_path, structure, message):
    with pytest.raises(ValueError, match=message):
        mc.load(npz_with(tmp_path, structure, {}))


def test_deep_nesting_is_refused(tmp_path):
    tree = 1
    for _ in range(5000):
        tree = {"list": [tree]}
    path = tmp_path / "deep.npz"
    with zipfile.ZipFile(path, "w") as z:
        text = '{"format": "minicnn-checkpoint-1", "tree": ' + '{"list": [' * 5000 + "1" + "]}" * 5000 + "}"
        z.writestr("__structure__.npy", _npy(np.frombuffer(text.encode(), np.uint8)))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        mc.load(path)


# ------------------------------------------------------------------ 7. data files as an attack surface

def test_a_gzip_bomb_behind_a_small_header_is_refused_after_a_few_bytes(tmp_path):
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in (10, 28, 28))
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + bytes(7840))
        zeros = bytes(2**22)
        for _ in range(100):                                # 400 MB after the declared 7,840 bytes
            f.write(zeros)
    started = time.time()
    with pytest.raises(data.CorruptFileError, match="too long"):
        data.read_idx(path, expected_ndim=3)
    assert time.time() - started < 1


def test_huge_declared_dimensions_do_not_overflow(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 8, 4]) + b"".join((65536).to_bytes(4, "big") for _ in range(4)) + bytes(16))
    with pytest.raises(data.CorruptFileError, match=r"declares \(65536, 65536, 65536, 65536\), 18,446,744,073,709,551,616 bytes"):
        data.read_idx(path)


@pytest.mark.parametrize("which,type_code,values,message", [
    ("labels", 0x09, np.array([-1, 3, 2], np.int8), "holds signed byte values"),
    ("images", 0x0D, np.zeros((3, 28, 28), ">f4"), "holds float values"),
])
def test_mnist_files_of_other_value_types_are_refused(tmp_path, which, type_code, values, message, monkeypatch):
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    write_small_dataset(tmp_path / "mnist", n=3, compress=False)
    name = {"labels": "train-labels-idx1-ubyte", "images": "train-images-idx3-ubyte"}[which]
    header = bytes([0, 0, type_code, values.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in values.shape)
    (tmp_path / "mnist" / name).write_bytes(header + values.tobytes())
    with pytest.raises(data.CorruptFileError, match=message):
        data.MNIST(root=tmp_path / "mnist", download=False)


def test_image_folder_refuses_bombs_and_empty_classes(tmp_path, monkeypatch):
    from PIL import Image
    for name in ("cat", "dog"):
        os.makedirs(tmp_path / "photos" / name)
        Image.new("RGB", (20, 20)).save(tmp_path / "photos" / name / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)     # 400 pixels: over twice the limit, a "bomb"
    folder = data.ImageFolder(tmp_path / "photos")
    with pytest.raises(ValueError, match="too large to decode safely"):
        folder[0]
    os.makedirs(tmp_path / "photos" / "empty")
    with pytest.raises(FileNotFoundError, match="'empty'.*hold no images"):
        data.ImageFolder(tmp_path / "photos")


# ------------------------------------------------------------------ 10, 11. run folders, silent truncations

def test_a_run_folder_is_never_overwritten_silently(tmp_path, capsys, monkeypatch):
    write_small_dataset(tmp_path / "mnist", n=32)
    args = ["train", "--data", str(tmp_path / "mnist"), "--epochs", "1", "--batch-size", "16"]
    assert cli(args + ["--out", str(tmp_path / "run")]) == 0
    before = (tmp_path / "run" / "model.npz").read_bytes()
    assert cli(args + ["--out", str(tmp_path / "run")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.npz").read_bytes() == before
    assert cli(args + ["--out", str(tmp_path / "run"), "--overwrite"]) == 0
    from minicnn.cli import _run_folder
    monkeypatch.chdir(tmp_path)
    import argparse
    ns = argparse.Namespace(out=None, overwrite=False)
    first, second = _run_folder(ns, "lenet", "mnist", None), _run_folder(ns, "lenet", "mnist", None)
    assert first != second and os.path.isdir(first) and os.path.isdir(second)


def test_fractional_epochs_and_complex_weights_and_a_hungry_val_split_are_refused(tmp_path, capsys):
    model = mc.models.LeNet()
    ds = data.ArrayDataset(np.zeros((8, 1, 28, 28), np.uint8), np.arange(8) % 10, classes=[str(i) for i in range(10)])
    for epochs in (2.7, 0, True, "3"):
        with pytest.raises(ValueError, match="epochs must be a whole number"):
            train.fit(model, mc.nn.CrossEntropyLoss(), mc.optim.SGD(model.parameters()), data.DataLoader(ds, 4), epochs)
    state = model.state_dict()
    state["0.weight"] = state["0.weight"].astype(np.complex64) + 1j
    with pytest.raises(ValueError, match=r"not real numbers.*0.weight: complex64"):
        model.load_state_dict(state)
    write_small_dataset(tmp_path / "mnist", n=40)
    assert cli(["train", "--data", str(tmp_path / "mnist"), "--val-split", "0.9999999",
                "--out", str(tmp_path / "r")]) == 2
    assert "leaves" in capsys.readouterr().err
