"""Leaving minicnn with a model and coming back: ONNX export (checked by onnx.checker, run in
onnxruntime) and import (our files and torch.onnx.export's), safetensors both ways with torch,
to_torch/from_torch, one checkpoint kind accepted by every command, and clear errors for files
that are not what they claim."""
import itertools
import os
import warnings

import numpy as np
import pytest
import torch

import minicnn as mc
import minicnn.nn as nn
from minicnn.cli import main as cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
safetensors_torch = pytest.importorskip("safetensors.torch")
from minicnn.export import from_onnx, to_onnx  # noqa: E402
from minicnn.interop import from_torch, to_torch, torch_residual_class, torch_squeeze_excitation_class  # noqa: E402

rng = np.random.default_rng(7)
MODELS = ["lenet", "convnet", "mnistcnn", "tinybnnet", "fashioncnn", "resnet14", "mobilenetmnist", "mobilenetv3mnist"]


def trained_state(model):
    """Move batch-norm statistics and counters off their defaults (as a trained model's are)."""
    model(rng.standard_normal((8,) + model.input_shape).astype(model_dtype(model)))
    return model


def model_dtype(model):
    return next(iter(model.parameters())).dtype


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def ours(model, x):
    model.eval()
    with mc.no_grad():
        return model(x)


# ------------------------------------------------------------------ ONNX export, every model

@pytest.mark.parametrize("name", MODELS)
def test_every_model_exports_runs_in_onnxruntime_and_comes_back_bit_for_bit(name, tmp_path):
    mc.manual_seed(0)
    model = trained_state(mc.models.get_model(name))
    path = tmp_path / f"{name}.onnx"
    proto = to_onnx(model, path, model.input_shape)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"        # a dynamic batch
    read = {name for node in proto.graph.node for name in node.input}
    assert [t.name for t in proto.graph.initializer if t.name not in read] == []   # onnxruntime warns of each
    for batch in (1, 5):
        x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32)
        np.testing.assert_allclose(run_onnx(path, x), ours(model, x), rtol=1e-5, atol=1e-5)
    back = from_onnx(path)
    assert list(back.state_dict()) == list(model.state_dict())
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
        assert a.dtype == b.dtype
    x = rng.standard_normal((3,) + model.input_shape).astype(np.float32)
    np.testing.assert_array_equal(ours(back, x), ours(model, x))
    back.train()                                              # trainable: a training step runs
    loss_fn = mc.nn.CrossEntropyLoss()
    loss_fn(back(x), np.arange(3))
    back.backward(loss_fn.backward())
    assert all(p.grad is not None for p in back.parameters())


def test_batch_norm_counts_come_back_from_metadata_and_from_older_files_initializers(tmp_path):
    """num_batches_tracked travels as metadata (no node reads it); files written before that held it
    as an initializer beside the running mean, and still import with their counts."""
    model = mc.models.TinyBNNet()
    for _ in range(2):                                          # two training-mode batches: counts of 2
        with mc.no_grad():
            model(rng.standard_normal((8,) + model.input_shape).astype(np.float32))
    counts = {k: int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    assert set(counts.values()) == {2}
    proto = to_onnx(model, tmp_path / "new.onnx", model.input_shape)
    assert {k: int(v) for k, v in from_onnx(tmp_path / "new.onnx").state_dict().items() if k in counts} == counts
    del proto.metadata_props[:]                                # as an older file: the counts as initializers
    for key, count in counts.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(count, np.int64), key))
    (tmp_path / "old.onnx").write_bytes(proto.SerializeToString())
    assert {k: int(v) for k, v in from_onnx(tmp_path / "old.onnx").state_dict().items() if k in counts} == counts
    del proto.graph.initializer[-len(counts):]                  # a file from elsewhere: counts start at 0
    (tmp_path / "none.onnx").write_bytes(proto.SerializeToString())
    assert {int(v) for k, v in from_onnx(tmp_path / "none.onnx").state_dict().items() if k in counts} == {0}


# ------------------------------------------------------------------ ONNX export, every layer configuration of the grids

def layer_cases():
    from test_layers_vs_torch import CONV_CASES, DILATED_GROUPED_CASES, POOL_CASES
    for kernel, stride, padding, c_in, c_out, batch, H, W, bias in CONV_CASES:
        yield f"conv{kernel}-{stride}-{padding}", lambda k=kernel, s=stride, p=padding, ci=c_in, co=c_out, b=bias: \
            nn.Conv2d(ci, co, k, stride=s, padding=p, bias=b), (c_in, H, W)
    for kernel, stride, padding, dilation, groups, c_in, c_out, batch, H, W, bias in DILATED_GROUPED_CASES:
        yield f"conv{kernel}-{stride}-{padding}-d{dilation}-g{groups}", \
            lambda k=kernel, s=stride, p=padding, d=dilation, g=groups, ci=c_in, co=c_out, b=bias: \
            nn.Conv2d(ci, co, k, stride=s, padding=p, dilation=d, groups=g, bias=b), (c_in, H, W)
    for kernel, stride, padding, batch, channels, H, W in POOL_CASES:
        yield f"maxpool{kernel}-{stride}-{padding}", lambda k=kernel, s=stride, p=padding: nn.MaxPool2d(k, s, p), \
            (channels, H, W)
        yield f"avgpool{kernel}-{stride}-{padding}", lambda k=kernel, s=stride, p=padding, inc=batch != 2: \
            nn.AvgPool2d(k, s, p, count_include_pad=inc), (channels, H, W)
    yield "adaptive global", lambda: nn.AdaptiveAvgPool2d(1), (3, 7, 5)
    yield "adaptive even", lambda: nn.AdaptiveAvgPool2d((2, 3)), (3, 6, 9)
    yield "adaptive max global", lambda: nn.AdaptiveMaxPool2d(1), (3, 7, 5)
    yield "adaptive max even", lambda: nn.AdaptiveMaxPool2d((2, 3)), (3, 6, 9)
    for C, (N, H, W), training, momentum in [(3, (2, 5, 4), True, 0.1), (16, (2, 3, 3), False, None)]:
        yield f"batchnorm2d{C}", lambda c=C: nn.BatchNorm2d(c), (C, H, W)
    yield "batchnorm1d", lambda: nn.BatchNorm1d(5), (5,)
    yield "batchnorm2d no affine", lambda: nn.BatchNorm2d(4, affine=False), (4, 3, 3)
    for name, make in [("relu", nn.ReLU), ("leakyrelu", lambda: nn.LeakyReLU(0.2)), ("sigmoid", nn.Sigmoid),
                       ("tanh", nn.Tanh), ("silu", nn.SiLU), ("gelu", nn.GELU), ("gelu tanh", lambda: nn.GELU("tanh")),
                       ("identity", nn.Identity), ("dropout", lambda: nn.Dropout(0.3)),
                       ("dropout2d", lambda: nn.Dropout2d(0.3)),
                       ("hardtanh", lambda: nn.Hardtanh(-0.5, 0.8)), ("relu6", nn.ReLU6),
                       ("hardsigmoid", nn.Hardsigmoid),
                       ("hardswish", nn.Hardswish), ("softmax", lambda: nn.Softmax(dim=1)),
                       ("log softmax last", lambda: nn.LogSoftmax(dim=-1))]:
        yield name, make, (3, 4, 5)
    for in_f, out_f, bias in [(1, 1, True), (5, 3, True), (16, 7, False), (400, 120, True)]:
        yield f"linear{in_f}-{out_f}", lambda i=in_f, o=out_f, b=bias: nn.Linear(i, o, bias=b), (in_f,)
    yield "linear 3-d", lambda: nn.Linear(9, 12), (3, 9)
    yield "flatten", nn.Flatten, (3, 2, 2)
    yield "residual identity", lambda: nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)),
                                                   activation=nn.ReLU()), (3, 6, 5)
    yield "residual conv", lambda: mc.models.basic_block(2, 4, stride=2), (2, 9, 8)
    yield "squeeze excitation", lambda: nn.SqueezeExcitation(6, 3), (6, 5, 4)
    yield "squeeze excitation hard", lambda: nn.SqueezeExcitation(4, 8, nn.Hardswish, nn.Hardsigmoid), (4, 3, 3)
    yield "residual no activation", lambda: nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 1)), nn.Conv2d(4, 4, 3, padding=1)), \
        (4, 5, 5)


CASES = list(layer_cases())


@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_every_layer_configuration_exports_and_imports(name, make, shape, tmp_path):
    layer = make()
    model = nn.Sequential(layer)
    model(rng.standard_normal((4,) + shape).astype(np.float32))              # batch statistics off their defaults
    path = tmp_path / "layer.onnx"
    to_onnx(model, path, shape)
    for batch in (1, 3):
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        np.testing.assert_allclose(run_onnx(path, x), ours(model, x), rtol=1e-5, atol=1e-5, err_msg=name)
    back = from_onnx(path)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    # an adaptive pool of even windows comes back as an AvgPool2d: the same windows, another rounding
    np.testing.assert_allclose(ours(back, x), ours(model, x), rtol=1e-6, atol=1e-7)
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


# ------------------------------------------------------------------ ONNX import of torch's exports

@pytest.mark.parametrize("name", MODELS)
def test_models_exported_by_torch_import_and_equal_torch(name, tmp_path):
    mc.manual_seed(1)
    twin = to_torch(trained_state(mc.models.get_model(name))).eval()
    shape = mc.models.get_model_class(name).input_shape
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(twin, (torch.randn(2, *shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "N"}})
    model = from_onnx(path)
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    np.testing.assert_allclose(ours(model, x), twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def mobile_layers_in_torch():
    t = torch.nn
    se = torch_squeeze_excitation_class()(4, 2, scale_activation=t.Hardsigmoid)
    return t.Sequential(t.Conv2d(2, 4, 3, padding=1), t.Hardswish(), t.Conv2d(4, 4, 1), t.ReLU6(),
                        t.Conv2d(4, 4, 3, padding=1, groups=4), t.Hardtanh(-0.5, 2.0), se, t.AdaptiveMaxPool2d(1),
                        t.Flatten(), t.Linear(4, 3), t.Hardsigmoid(), t.LogSoftmax(dim=1))


def test_torchs_export_of_mobilenet_layers_imports_and_equals_torch(tmp_path):
    torch.manual_seed(0)
    twin = mobile_layers_in_torch().eval()
    path = tmp_path / "mobile.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(twin, (torch.randn(2, 2, 6, 6),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "N"}})
    model = from_onnx(path)
    assert [type(m).__name__ for m in model][:7] == ["Conv2d", "Hardswish", "Conv2d", "ReLU6", "Conv2d", "Hardtanh",
                                                     "SqueezeExcitation"]
    assert type(model[6].scale_activation) is nn.Hardsigmoid and type(model[-2]) is nn.Hardsigmoid
    assert type(model[-1]) is nn.LogSoftmax and model[-1].dim == 1
    assert model[7].kernel_size == (6, 6)          # torch writes its global max pool as a MaxPool over the image
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32) * 3
    np.testing.assert_allclose(ours(model, x), twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    back = from_torch(twin)                       # and the same net straight from torch
    np.testing.assert_array_equal(ours(back, x), ours(model, x))
    assert type(to_torch(back)[3]) is torch.nn.ReLU6 and to_torch(back)[5].min_val == -0.5
    assert type(to_torch(back)[6]) is torch_squeeze_excitation_class()


def test_squeeze_excitation_goes_to_torch_and_back_in_train_mode():
    mc.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SqueezeExcitation(8, 2, nn.SiLU, nn.Hardsigmoid)).double()
    twin = to_torch(model)
    assert list(twin.state_dict()) == list(model.state_dict()) and twin.training
    x = rng.standard_normal((2, 3, 6, 6))
    y = model(x)
    dx = model.backward(np.ones_like(y))
    xt = torch.from_numpy(x).requires_grad_()
    twin(xt).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    back = from_torch(twin)
    assert type(back[1].activation) is nn.SiLU and type(back[1].scale_activation) is nn.Hardsigmoid
    np.testing.assert_array_equal(back(x), model(x))


def test_the_newer_layers_cross_to_torch_and_back_as_themselves():
    t = torch.nn
    twin = t.Sequential(t.Conv2d(2, 4, 3), t.Dropout2d(0.3), t.AdaptiveMaxPool2d((2, 1)), t.ReLU6(), t.Hardswish())
    ours = from_torch(twin)
    assert [type(m).__name__ for m in ours] == ["Conv2d", "Dropout2d", "AdaptiveMaxPool2d", "ReLU6", "Hardswish"]
    assert ours[1].p == 0.3 and ours[2].output_size == (2, 1)
    back = to_torch(ours)
    assert [type(m) for m in back] == [type(m) for m in twin] and back[1].p == 0.3 and back[2].output_size == (2, 1)
    with pytest.raises(ValueError, match=r"AdaptiveMaxPool2d\) returns indices"):
        from_torch(t.AdaptiveMaxPool2d(1, return_indices=True))


def test_group_norm_goes_to_torch_and_back_and_is_refused_by_onnx_by_name(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4, eps=1e-3), nn.ReLU())
    model[1].weight.data[...] = rng.uniform(0.5, 1.5, 4)
    twin = to_torch(model)
    assert type(twin[1]) is torch.nn.GroupNorm and twin[1].num_groups == 2 and twin[1].eps == 1e-3
    back = from_torch(twin)
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(ours(back, x), ours(model, x))
    with pytest.raises(ValueError, match=r"to_onnx: 1 \(GroupNorm\) has no ONNX form here: opset 20's"):
        to_onnx(model, tmp_path / "g.onnx", (1, 6, 6))


def test_a_gate_that_is_not_squeeze_excitation_is_refused(tmp_path):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 3, 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, 3, 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["g"], name="pool"),
             helper.make_node("Sigmoid", ["g"], ["s"], name="sigmoid"),
             helper.make_node("Mul", ["input", "s"], ["output"], name="scale")]
    path = tmp_path / "gate.onnx"
    path.write_bytes(helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                                       opset_imports=[helper.make_opsetid("", 20)]).SerializeToString())
    with pytest.raises(ValueError, match=r"node 'scale' multiplies 'input' by a gate that is not squeeze and "
                                         r"excitation's .*got AdaptiveAvgPool2d, Sigmoid"):
        from_onnx(path)


def test_a_softmax_of_an_old_opset_is_refused(tmp_path):
    path = graph_with("Softmax", tmp_path, axis=1)
    proto = onnx.load(str(path))
    proto.opset_import[0].version = 11
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="is of opset 11, where it normalizes over every axis from its axis on"):
        from_onnx(path)


def test_a_clip_without_both_bounds_is_refused(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])
    low = numpy_helper.from_array(np.array(0, np.float32), "low")
    node = helper.make_node("Clip", ["input", "low"], ["output"], name="clip")
    path = tmp_path / "clip.onnx"
    path.write_bytes(helper.make_model(helper.make_graph([node], "g", [x], [y], [low]),
                                       opset_imports=[helper.make_opsetid("", 20)]).SerializeToString())
    with pytest.raises(ValueError, match=r"node 'clip' \(Clip\) clips by bounds that are not both constants"):
        from_onnx(path)


# ------------------------------------------------------------------ ONNX refusals

def graph_with(node_op, tmp_path, **attributes):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node(node_op, ["input"], ["output"], name="the_node", **attributes)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 20)])
    path = tmp_path / "g.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_an_unsupported_operator_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"node 'the_node' is a Softplus, which minicnn does not import"):
        from_onnx(graph_with("Softplus", tmp_path))


def test_unusual_attributes_are_refused_by_name(tmp_path):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 6, 6])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, 3, 3])
    node = helper.make_node("MaxPool", ["input"], ["output"], name="pool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    path = tmp_path / "ceil.onnx"
    path.write_bytes(helper.make_model(helper.make_graph([node], "g", [x], [y]),
                                       opset_imports=[helper.make_opsetid("", 20)]).SerializeToString())
    with pytest.raises(ValueError, match=r"node 'pool' \(MaxPool\) uses ceil_mode"):
        from_onnx(path)


def test_truncated_and_foreign_onnx_files_are_one_line_errors(tmp_path):
    model = mc.models.LeNet()
    path = tmp_path / "lenet.onnx"
    to_onnx(model, path, (1, 28, 28))
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    (tmp_path / "junk.onnx").write_bytes(b"this is not a model")
    for name in ("cut.onnx", "junk.onnx"):
        with pytest.raises(ValueError, match="not a valid ONNX model") as err:
            from_onnx(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        from_onnx(tmp_path / "missing.onnx")


def test_a_module_without_an_onnx_form_is_refused_before_anything_is_written(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x

    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 4), Custom()))
    with pytest.raises(ValueError, match=r"to_onnx: 1.1 is a Custom, which has no ONNX form"):
        to_onnx(model, tmp_path / "x.onnx", (4,))
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="unequal sizes"):
        to_onnx(nn.Sequential(nn.AdaptiveAvgPool2d(3)), tmp_path / "x.onnx", (1, 7, 7))


# ------------------------------------------------------------------ safetensors

@pytest.mark.parametrize("name", ["lenet", "resnet14", "mobilenetmnist"])
def test_safetensors_move_weights_to_torch_and_back(name, tmp_path):
    mc.manual_seed(2)
    model = trained_state(mc.models.get_model(name))
    mc.save(model.state_dict(), tmp_path / "ours.safetensors")
    twin = to_torch(mc.models.get_model(name))                 # other weights, the same network in torch
    twin.load_state_dict(safetensors_torch.load_file(str(tmp_path / "ours.safetensors")))
    x = rng.standard_normal((3,) + model.input_shape).astype(np.float32)
    np.testing.assert_allclose(twin.eval()(torch.from_numpy(x)).detach().numpy(), ours(model, x), rtol=1e-5, atol=1e-6)
    for p in twin.parameters():
        p.data.mul_(0.5)
    safetensors_torch.save_file(twin.state_dict(), str(tmp_path / "theirs.safetensors"))
    back = mc.models.get_model(name)
    back.load_state_dict(mc.load(tmp_path / "theirs.safetensors"))
    np.testing.assert_allclose(ours(back, x), twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_safetensors_round_trip_in_minicnn_keeps_scalar_buffers(tmp_path):
    """A model with batch norm saved and loaded back by minicnn alone: every entry the same shape and
    value (num_batches_tracked stays a 0-d array, as torch's is). A file that held it as shape (1,)
    (minicnn's before December 2026) loads as torch loads it; any other shape is refused."""
    model = trained_state(mc.models.ResNet14())
    mc.save(model.state_dict(), tmp_path / "m.safetensors")
    state = mc.load(tmp_path / "m.safetensors")
    assert safetensors_torch.load_file(str(tmp_path / "m.safetensors"))["1.num_batches_tracked"].shape == ()
    back = mc.models.ResNet14()
    back.load_state_dict(state)
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert a.shape == b.shape and a.dtype == b.dtype, k
        np.testing.assert_array_equal(a, b, err_msg=k)
    old = {k: v.reshape(1) if v.ndim == 0 else v for k, v in state.items()}
    back = mc.models.ResNet14()
    back.load_state_dict(old)
    assert back.state_dict()["1.num_batches_tracked"].shape == () and int(back.state_dict()["1.num_batches_tracked"]) == 1
    with pytest.raises(ValueError, match=r"wrong shape: 1.num_batches_tracked: checkpoint \(2,\), model \(\)"):
        back.load_state_dict({**state, "1.num_batches_tracked": np.array([1, 1])})


def test_safetensors_refuse_what_they_cannot_hold_and_files_that_lie(tmp_path):
    with pytest.raises(TypeError, match="flat"):
        mc.save({"model": {"a": np.ones(2)}}, tmp_path / "x.safetensors")
    mc.save(mc.models.LeNet().state_dict(), tmp_path / "good.safetensors")
    data = bytearray((tmp_path / "good.safetensors").read_bytes())
    lying = bytearray(data)
    lying[:8] = (10**9).to_bytes(8, "little")                           # a header longer than the file
    (tmp_path / "lying.safetensors").write_bytes(bytes(lying))
    (tmp_path / "cut.safetensors").write_bytes(bytes(data[:len(data) // 2]))
    for name in ("lying.safetensors", "cut.safetensors"):
        with pytest.raises(ValueError, match="truncated or corrupt") as err:
            mc.load(tmp_path / name)
        assert "\n" not in str(err.value)


def test_a_torch_file_gets_a_hint_instead_of_corrupt(tmp_path):
    torch.save(to_torch(mc.models.LeNet()).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="PyTorch file.*safetensors"):
        mc.load(tmp_path / "model.pt")


# ------------------------------------------------------------------ to_torch / from_torch

@pytest.mark.parametrize("name", MODELS)
def test_to_torch_and_from_torch_round_trip(name):
    mc.manual_seed(3)
    model = trained_state(mc.models.get_model(name)).double()
    twin = to_torch(model)
    assert next(twin.parameters()).dtype == torch.float64
    back = from_torch(twin)
    assert list(back.state_dict()) == list(model.state_dict())
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    x = rng.standard_normal((2,) + model.input_shape)
    np.testing.assert_allclose(ours(back, x), twin.eval()(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(ours(back, x), ours(model, x))


def test_from_torch_refuses_a_layer_minicnn_lacks_by_name():
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Softplus()))
    with pytest.raises(ValueError, match=r"Sequential.1.1 \(Softplus\) has no minicnn counterpart"):
        from_torch(module)
    with pytest.raises(ValueError, match="ceil_mode"):
        from_torch(torch.nn.MaxPool2d(2, ceil_mode=True))
    residual = torch_residual_class()(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1)), None, torch.nn.ReLU())
    assert isinstance(from_torch(residual), nn.Residual)


# ------------------------------------------------------------------ one checkpoint kind

@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A tiny minicnn train run on generated IDX files (no real data needed)."""
    from test_data import write_small_dataset
    root = tmp_path_factory.mktemp("data")
    write_small_dataset(root / "mnist", n=64)
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli(["train", "--data", str(root / "mnist"), "--epochs", "2", "--batch-size", "16", "--val-split", "0.25",
                "--out", str(out)]) == 0
    return root, out


def test_every_checkpoint_file_is_accepted_by_every_command(run_folder, capsys, tmp_path):
    root, out = run_folder
    files = [out, out / "model.npz", out / "checkpoints" / "last.npz", out / "checkpoints" / "best.npz"]
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((3, 28, 28), np.uint8))
    for f in files:
        assert cli(["evaluate", str(f), "--data", str(root / "mnist")]) == 0, f
        assert cli(["predict", str(f), str(images)]) == 0, f
        assert cli(["export", str(f), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0, f
        assert cli(["export", str(f), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")]) == 0, f
        net = mc.models.LeNet()
        net.load_state_dict(mc.load(f / "model.npz" if f.is_dir() else f))      # a whole checkpoint is accepted
    assert from_onnx(tmp_path / "m.onnx") is not None
    assert cli(["train", "--data", str(root / "mnist"), "--epochs", "3", "--batch-size", "16", "--val-split", "0.25",
                "--resume", str(out)]) == 0                                    # the run's own folder
    assert "epoch   3/3" in capsys.readouterr().out


def test_resume_from_a_model_file_says_to_use_init_from(run_folder, capsys, tmp_path):
    root, out = run_folder
    assert cli(["train", "--data", str(root / "mnist"), "--epochs", "3", "--resume", str(out / "model.npz"),
                "--out", str(tmp_path / "again")]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert cli(["train", "--data", str(root / "mnist"), "--epochs", "1", "--batch-size", "16",
                "--init-from", str(out / "model.npz"), "--out", str(tmp_path / "fresh")]) == 0


def test_train_resume_continues_the_run_as_it_was_started(run_folder, capsys, tmp_path):
    """`minicnn train --resume RUN` alone (the line an interrupted run prints) takes the run's model,
    dataset, optimizer, schedule and batch size from its checkpoint; --epochs is the new total. A
    --model other than the run's, or a total already reached, is refused with the fix; a checkpoint
    from before the settings were kept still gives its model and dataset."""
    root, _ = run_folder
    out = tmp_path / "bn"
    assert cli(["train", "--data", str(root / "mnist"), "--model", "tinybnnet", "--optimizer", "adam", "--scheduler",
                "step", "--epochs", "1", "--batch-size", "8", "--val-split", "0.25", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli(["train", "--data", str(root / "mnist"), "--resume", str(out), "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "training TinyBNNet" in printed and "adam lr 0.001, step schedule, batch 8, 2 epochs" in printed
    assert "epoch   2/2" in printed
    assert cli(["train", "--data", str(root / "mnist"), "--resume", str(out), "--model", "lenet", "--epochs", "3"]) == 2
    assert "is a run of tinybnnet on mnist: --model lenet cannot continue it" in capsys.readouterr().err
    assert cli(["train", "--data", str(root / "mnist"), "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has finished 2 epochs" in err and "--epochs N with N > 2" in err
    state = mc.load(out / "checkpoints" / "last.npz")
    mc.save({**state, "early_stopping": {"stopped_epoch": 2}}, tmp_path / "stopped.npz")
    assert cli(["train", "--data", str(root / "mnist"), "--resume", str(tmp_path / "stopped.npz"), "--epochs", "4"]) == 2
    assert "stopped early at epoch 2" in capsys.readouterr().err           # over: --init-from is the way on
    del state["meta"]["settings"]                           # as written before the settings were kept
    mc.save(state, out / "checkpoints" / "last.npz")
    assert cli(["train", "--data", str(root / "mnist"), "--resume", str(out), "--epochs", "3", "--optimizer", "adam",
                "--scheduler", "step", "--batch-size", "8", "--val-split", "0.25"]) == 0
    assert "training TinyBNNet" in capsys.readouterr().out


def test_resume_with_another_optimizer_changes_nothing(run_folder):
    root, out = run_folder
    model = mc.models.LeNet()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = mc.optim.Adam(model.parameters())
    x = np.zeros((4, 1, 28, 28), np.uint8)
    loader = mc.data.DataLoader(mc.data.ArrayDataset(x, np.arange(4) % 10, classes=[str(i) for i in range(10)]), 4)
    with pytest.raises(ValueError, match="written with SGD, this run uses Adam"):
        mc.train.fit(model, mc.nn.CrossEntropyLoss(), opt, loader, 5, resume=out / "checkpoints" / "last.npz", log=None)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert opt.state == {}
