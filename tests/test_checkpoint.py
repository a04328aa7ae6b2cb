"""Checkpoints: round trips, no pickling, atomic writes, and clear errors for files or states
that do not fit."""
import os
import zipfile

import numpy as np
import pytest

import minicnn as mc


def test_model_round_trip(tmp_path):
    net = mc.models.ConvNet()
    net(np.random.rand(4, 1, 28, 28).astype(np.float32))         # move the running statistics
    mc.save(net.state_dict(), tmp_path / "convnet.npz")
    other = mc.models.ConvNet()
    other.load_state_dict(mc.load(tmp_path / "convnet.npz"))
    for (k, a), (k2, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert int(other.state_dict()["3.num_batches_tracked"]) == 1


def test_nested_values_round_trip(tmp_path):
    obj = {"epoch": 3, "lr": 0.1, "name": "run", "flag": True, "none": None, "list": [1, np.arange(3)],
           "tuple": (1.5, "a"), 7: {"inner": np.ones((2, 2), np.float32)}, "inf": float("inf")}
    mc.save(obj, tmp_path / "obj.npz")
    back = mc.load(tmp_path / "obj.npz")
    assert back["epoch"] == 3 and back["lr"] == 0.1 and back["name"] == "run" and back["flag"] is True
    assert back["none"] is None and back["tuple"] == (1.5, "a") and back["inf"] == float("inf")
    np.testing.assert_array_equal(back["list"][1], np.arange(3))
    assert back[7]["inner"].dtype == np.float32


def test_load_of_some_entries_reads_only_their_arrays(tmp_path, monkeypatch):
    from minicnn import checkpoint
    mc.save({"meta": {"model": "lenet"}, "epoch": 2, "model": {"w": np.ones((3, 3))}}, tmp_path / "c.npz")
    read = []
    original = checkpoint._read_member
    monkeypatch.setattr(checkpoint, "_read_member", lambda archive, name: read.append(name) or original(archive, name))
    assert mc.load(tmp_path / "c.npz", keys=("meta", "epoch")) == {"meta": {"model": "lenet"}, "epoch": 2}
    assert read == ["__structure__"]                          # the model's array was not read
    mc.save([1, 2], tmp_path / "list.npz")
    assert mc.load(tmp_path / "list.npz", keys=("meta",)) == {}


def test_refuses_objects_it_cannot_store_without_pickle(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        mc.save({"f": lambda: 0}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="dtype object"):
        mc.save({"a": np.array([{}], dtype=object)}, tmp_path / "x.npz")


def test_mismatched_checkpoint_lists_every_problem():
    state = mc.models.LeNet().state_dict()
    del state["0.weight"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["7.weight"] = np.zeros((121, 400), np.float32)
    with pytest.raises(ValueError) as info:
        mc.models.LeNet().load_state_dict(state)
    message = str(info.value)
    assert "missing: 0.weight" in message and "unexpected: extra.weight" in message
    assert "7.weight: checkpoint (121, 400), model (120, 400)" in message


def test_loading_another_model_fails_clearly(tmp_path):
    mc.save(mc.models.LeNet().state_dict(), tmp_path / "lenet.npz")
    with pytest.raises(ValueError, match="does not fit the model"):
        mc.models.MnistCNN().load_state_dict(mc.load(tmp_path / "lenet.npz"))


def test_truncated_and_corrupted_files(tmp_path):
    path = tmp_path / "good.npz"
    mc.save(mc.models.LeNet().state_dict(), path)
    data = path.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    corrupted = bytearray(data)
    corrupted[len(data) // 3: len(data) // 3 + 64] = b"\xff" * 64
    (tmp_path / "corrupted.npz").write_bytes(bytes(corrupted))
    (tmp_path / "garbage.npz").write_bytes(b"not a checkpoint")
    for name in ("truncated.npz", "corrupted.npz", "garbage.npz"):
        with pytest.raises(ValueError, match="truncated or corrupt"):
            mc.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        mc.load(tmp_path / "missing.npz")


def test_pickled_object_arrays_are_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __structure__=np.frombuffer(b'{"format": "minicnn-checkpoint-1", "tree": {"array": "a0"}}', np.uint8),
             a0=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        mc.load(path)


def test_a_crash_while_saving_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    mc.save({"v": np.arange(3)}, path)
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        mc.save({"v": np.arange(1000)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert zipfile.is_zipfile(path)
