"""The first day of a PyTorch user: each habit that would silently go wrong here either works as in
torch or stops with a message that says what to do instead. One test per trap."""
import math
import warnings

import numpy as np
import pytest
import torch

import minicnn as mc
from minicnn import data, nn


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def test_loss_backward_explains_the_minicnn_way():
    net, loss_fn = mc.models.LeNet(), nn.CrossEntropyLoss()
    x, y = _batch()
    loss = loss_fn(net(x), y)
    assert float(loss) > 0 and loss.item() == float(loss) and np.isfinite(loss + 1)
    with pytest.raises(RuntimeError, match=r"model.backward\(loss_fn.backward\(\)\)"):
        loss.backward()


def test_second_backward_of_one_forward_is_refused():
    net, loss_fn = mc.models.LeNet(), nn.CrossEntropyLoss()
    x, y = _batch()
    loss_fn(net(x), y)
    dy = loss_fn.backward()
    net.backward(dy)
    with pytest.raises(RuntimeError, match="second time"):
        net.backward(dy)
    with pytest.raises(RuntimeError, match="second time"):
        loss_fn.backward()


def test_training_forward_between_forward_and_backward_warns():
    """The tutorial order: forward(train batch), forward(validation batch), backward -> would train on
    the validation batch's state. Inside no_grad it is fine and silent."""
    net, loss_fn = mc.models.LeNet(), nn.CrossEntropyLoss()
    x, y = _batch()
    loss_fn(net(x), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mc.no_grad():
            net(x[:2])                      # evaluation done right: no warning
    with pytest.warns(nn.StateReuseWarning, match="no_grad"):
        net(x[:2])
    net.backward(loss_fn.backward()[:2])    # state is the last forward's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(net(x), y)                  # after a backward: silent again
        net.backward(loss_fn.backward())


def test_to_half_precision_is_refused_with_the_choices():
    net = mc.models.LeNet()
    with pytest.raises(TypeError, match="float32 or float64"):
        net.to(np.float16)
    net.to(np.float64)
    assert all(p.dtype == np.float64 for p in net.parameters())


def test_torch_constructor_arguments_are_accepted_or_refused_clearly():
    nn.ReLU(inplace=True), nn.LeakyReLU(0.1, inplace=True), nn.SiLU(inplace=True), nn.Dropout(0.5, inplace=True)
    nn.Conv2d(1, 2, 3, device="cpu"), nn.Linear(2, 3, device="cpu"), nn.Flatten(1, -1)
    nn.MaxPool2d(2, dilation=1, return_indices=False, ceil_mode=False)
    nn.AvgPool2d(2, ceil_mode=False, divisor_override=None)
    with pytest.raises(ValueError, match="ceil_mode=True"):
        nn.MaxPool2d(2, ceil_mode=True)
    with pytest.raises(ValueError, match="divisor_override=3"):
        nn.AvgPool2d(2, divisor_override=3)
    with pytest.raises(ValueError, match="start_dim=0"):
        nn.Flatten(0)
    with pytest.raises(ValueError, match="class weights"):
        nn.CrossEntropyLoss(weight=np.ones(10))
    nn.CrossEntropyLoss(ignore_index=-100)


def test_dataloader_takes_a_tutorials_arguments_or_says_what_to_use():
    x, y = _batch(8)
    ds = data.ArrayDataset((x * 0 + 1).astype(np.float32), y)
    loader = data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, pin_memory=True, persistent_workers=True,
                             timeout=0, prefetch_factor=2, seed=0)
    plain = data.DataLoader(ds, batch_size=4, shuffle=True, seed=0)
    for (a, la), (b, lb) in zip(loader, plain):               # the no-op arguments change nothing
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    for name, message in [("collate_fn", "give a transform"), ("worker_init_fn", "nothing to seed"),
                          ("generator", "give seed=")]:
        with pytest.raises(ValueError, match=f"{name} is not supported: .*{message}"):
            data.DataLoader(ds, batch_size=4, **{name: lambda *a: None})


def test_layer_made_with_inplace_gives_the_same_result_and_keeps_the_input():
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 2, 2)
    before = x.copy()
    for layer in (nn.ReLU(inplace=True), nn.LeakyReLU(0.2, inplace=True), nn.SiLU(inplace=True)):
        ref = {nn.ReLU: torch.nn.ReLU(), nn.LeakyReLU: torch.nn.LeakyReLU(0.2), nn.SiLU: torch.nn.SiLU()}[type(layer)]
        np.testing.assert_allclose(layer(x), ref(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("shape, size, antialias", [
    ((2, 1, 28, 28), (14, 14), True), ((1, 3, 30, 40), (17, 23), True), ((1, 1, 9, 13), (20, 31), True),
    ((1, 2, 28, 28), (14, 9), False), ((3, 1, 7, 5), (7, 5), True), ((1, 1, 64, 48), 32, True)])
def test_resize_equals_torch_interpolate(shape, size, antialias):
    """torchvision's Resize on tensors is interpolate(bilinear, align_corners=False, antialias) with an
    int meaning the shorter side; float64 so the comparison is to the last bits."""
    x = np.random.default_rng(1).random(shape)
    out = data.Resize(size, antialias=antialias)(x)
    H, W = shape[-2:]
    if isinstance(size, int):
        size = (size, int(size * W / H)) if H <= W else (int(size * H / W), size)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                           align_corners=False, antialias=antialias).numpy()
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_resize_of_uint8_images_rounds_like_torchvision():
    x = np.random.default_rng(2).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    out = data.Resize((10, 12))(x)
    want = torch.nn.functional.interpolate(torch.from_numpy(x.astype(np.float64)), size=(10, 12), mode="bilinear",
                                           align_corners=False, antialias=True).round().clamp(0, 255).numpy()
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1   # torchvision rounds in its own kernel


def test_center_crop_and_random_crop_follow_torchvision_rules():
    x = np.arange(7 * 9).reshape(1, 7, 9)
    crop = data.CenterCrop((3, 4))(x)
    top, left = int(round((7 - 3) / 2.0)), int(round((9 - 4) / 2.0))      # torchvision's rounding
    np.testing.assert_array_equal(crop, x[:, top:top + 3, left:left + 4])
    padded = data.CenterCrop(11)(x)                                        # larger than the image: zero pad
    assert padded.shape == (1, 11, 11) and padded.sum() == x.sum()
    grown = data.RandomCrop(10, pad_if_needed=True, seed=0)(x)
    assert grown.shape == (1, 10, 10) and grown.sum() == x.sum()
    with pytest.raises(ValueError, match="padding_mode"):
        data.RandomCrop(5, padding=1, padding_mode="reflect")


def test_random_rotation_by_a_right_angle_is_exact():
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    for mode in ("nearest", "bilinear"):
        out = data.RandomRotation((90, 90), interpolation=mode, seed=0)(x)
        np.testing.assert_allclose(out[0, 0], np.rot90(x[0, 0]), atol=1e-9)   # counter-clockwise as torchvision


def test_normalize_inplace_writes_into_the_given_array():
    x = np.full((1, 1, 2, 2), 3.0, np.float32)
    out = data.Normalize(1.0, 2.0, inplace=True)(x)
    assert out is x and np.all(x == 1.0)
    y = np.full((1, 1, 2, 2), 3.0, np.float32)
    data.Normalize(1.0, 2.0)(y)
    assert np.all(y == 3.0)


# ------------------------------------------------------------------ the CLI

from minicnn.cli import main as cli  # noqa: E402
from test_data import write_small_dataset  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A folder laid out as MINICNN_DATA: data_root/mnist/ holds tiny generated IDX files."""
    root = tmp_path_factory.mktemp("data")
    write_small_dataset(root / "mnist", n=80)
    return root


def test_cli_refuses_abbreviated_options(data_root, capsys):
    assert cli(["train", "--data", str(data_root), "--epoch", "1"]) == 2
    assert "--epoch" in capsys.readouterr().err


def test_cli_help_shows_defaults_and_every_model(capsys):
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 3)" in text and "(default: 0.1)" in text and "(default: 0.0)" in text
    for name in mc.models.MODELS:
        assert name in text, name


def test_cli_data_is_the_folder_minicnn_data_names(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    monkeypatch.setenv("MINICNN_CACHE", str(tmp_path / "cache"))
    for given in (data_root, data_root / "mnist"):                  # the parent, or the dataset's own folder
        assert cli(["train", "--data", str(given), "--epochs", "1", "--batch-size", "16", "--out",
                    str(tmp_path / given.name)]) == 0
    capsys.readouterr()
    assert cli(["evaluate", str(tmp_path / "mnist"), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "looked in\n" in err                                   # line breaks kept
    for place in (tmp_path / "nowhere" / "mnist", tmp_path / "nowhere", tmp_path / "cache" / "mnist"):
        assert f"\n    {place}\n" in err, place


def test_cli_validation_is_held_out_of_training_by_default(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["train", "--data", str(data_root), "--epochs", "2", "--batch-size", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train: 72 images" in printed and "validation: 8 images held out of the training set" in printed
    assert "test: 80 images, scored once at the end (loss without smoothing)" in printed
    assert (out / "checkpoints" / "best.npz").exists()
    assert cli(["train", "--data", str(data_root), "--epochs", "1", "--batch-size", "16", "--val-split", "0",
                "--out", str(tmp_path / "noval")]) == 0
    assert "no validation" in capsys.readouterr().out
    assert not (tmp_path / "noval" / "checkpoints" / "best.npz").exists()
    assert cli(["train", "--data", str(data_root), "--epochs", "1", "--val-split", "0", "--early-stopping", "2",
                "--out", str(tmp_path / "x")]) == 2
    assert "--val-split" in capsys.readouterr().err


def test_cli_early_stopping_onecycle_and_clipping(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["train", "--data", str(data_root), "--epochs", "3", "--batch-size", "16", "--scheduler", "onecycle",
                "--early-stopping", "1", "--clip-grad-norm", "1.0", "--val-split", "0.25", "--out", str(out)]) == 0
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and 2 <= len(rows) - 1 <= 3


def test_cli_predict_takes_photos_of_any_size_and_mode(data_root, tmp_path, capsys):
    from PIL import Image
    run = tmp_path / "run"
    assert cli(["train", "--data", str(data_root), "--epochs", "1", "--batch-size", "16", "--out", str(run)]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 40), (250, 250, 250)).save(photos / "wide.png")
    Image.new("L", (20, 90), 255).save(photos / "tall.jpg")
    Image.new("RGBA", (28, 28), (0, 0, 0, 255)).save(photos / "dark.png")
    capsys.readouterr()
    assert cli(["predict", str(run), str(photos / "wide.png")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "id,label" and captured.out.splitlines()[1].startswith("wide,")
    assert "converted" in captured.err and "64x40 RGB" in captured.err and "--invert" in captured.err
    assert cli(["predict", str(run), str(photos / "*.png"), str(photos / "tall.jpg"), "--invert"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["dark", "wide", "tall"]
    assert cli(["predict", str(run), str(photos)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert cli(["predict", str(run), str(photos / "*.gif")]) == 2
    assert "no file matches" in capsys.readouterr().err


def test_cli_lr_find_plots_and_suggests(data_root, tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert cli(["lr-find", "--data", str(data_root), "--batch-size", "16", "--iters", "30", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.exists() and "tried" in printed and ("falls fastest at lr" in printed or "never fell" in printed)


def test_lr_find_puts_everything_back():
    mc.manual_seed(0)
    net = mc.models.LeNet(num_classes=4)
    from test_train import toy_problem
    loader = data.DataLoader(toy_problem(64), 16, shuffle=True, seed=0)
    opt = mc.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    before, rng, loader_state = net.state_dict(), mc.random.get_state(), loader.state_dict()
    result = mc.train.lr_find(net, nn.CrossEntropyLoss(), opt, loader, 1e-5, 1.0, num_iter=20)
    assert len(result.lrs) <= 20 and result.lrs[0] == pytest.approx(1e-5)
    assert result.suggestion is None or 1e-5 <= result.suggestion <= 1.0
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert opt.state == {} and opt.param_groups[0]["lr"] == 0.01
    assert mc.random.get_state() == rng and loader.state_dict() == loader_state


def test_replacing_a_child_keeps_its_place_as_in_torch():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
    setattr(net, "1", nn.SiLU())
    assert [type(m).__name__ for m in net] == ["Conv2d", "SiLU", "Flatten"]
    assert list(net.state_dict()) == ["0.weight", "0.bias"]


@pytest.mark.parametrize("name", ["lenet", "resnet14"])
def test_frozen_parameters_train_as_in_torch(name):
    """Fine-tuning: p.requires_grad = False on one parameter and module.requires_grad_(False) on a
    layer freeze them as in torch (no gradient, so AdamW's step and weight decay pass them by); the
    others train to torch's values; float64, three steps, the numba backend's fused paths included."""
    from minicnn.interop import from_torch, to_torch
    mc.manual_seed(0)
    net = mc.models.get_model(name).double()
    frozen = ["0.weight"] + [k for k, _ in net.named_parameters() if k.startswith("3.")]
    dict(net.named_parameters())["0.weight"].requires_grad = False
    assert net[3].requires_grad_(False) is net[3]
    twin = to_torch(net).double().train()                       # frozen there too
    torch_params = dict(twin.named_parameters())
    assert [k for k, p in torch_params.items() if not p.requires_grad] == frozen
    assert [k for k, p in from_torch(twin).named_parameters() if not p.requires_grad] == frozen
    opt = mc.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
    topt = torch.optim.AdamW(twin.parameters(), lr=0.01, weight_decay=0.1)
    before = net.state_dict()
    loss_fn, tloss = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for step in range(3):
        x, y = _batch(4, seed=step)
        x = x.astype(np.float64)
        loss_fn(net(x), y)
        opt.zero_grad()
        net.backward(loss_fn.backward())
        assert all(p.grad is None for k, p in net.named_parameters() if k in frozen)
        opt.step()
        topt.zero_grad()
        tloss(twin(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()
    after = net.state_dict()
    for k, p in twin.named_parameters():
        if k in frozen:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        else:
            assert not np.array_equal(after[k], before[k]), k
        np.testing.assert_allclose(after[k], p.detach().numpy(), rtol=1e-9, atol=1e-11, err_msg=k)
    frozen_count = sum(p.size for k, p in net.named_parameters() if k in frozen)
    assert net.num_parameters(trainable_only=True) == net.num_parameters() - frozen_count
    assert f"Trainable parameters: {net.num_parameters() - frozen_count:,}" in mc.summary(net, net.input_shape)
    first = dict(net.named_parameters())[frozen[1]]
    assert "requires_grad=False" in repr(first) and first.numel() == torch_params[frozen[1]].numel()
    with pytest.raises(TypeError, match="requires_grad must be True or False"):
        first.requires_grad = "no"
    net.requires_grad_()                                     # unfrozen: gradients again
    loss_fn(net(x), y)
    net.backward(loss_fn.backward())
    assert all(p.grad is not None for p in net.parameters())


INITS = [("kaiming_normal_", dict(mode="fan_out", nonlinearity="relu")), ("kaiming_normal_", dict()),
         ("kaiming_uniform_", dict(a=math.sqrt(5))), ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="tanh")),
         ("xavier_uniform_", dict(gain=2.0)), ("xavier_normal_", dict()), ("uniform_", dict(a=-0.3, b=0.7)),
         ("normal_", dict(mean=0.5, std=0.2)), ("trunc_normal_", dict(std=1.0, a=-1.0, b=0.5))]


@pytest.mark.parametrize("fn,kwargs", INITS, ids=[f"{f}{sorted(k.items())}" for f, k in INITS])
@pytest.mark.parametrize("shape", [(96, 64, 3, 3), (120, 400), (64, 1, 5, 5)])
def test_init_functions_draw_torchs_distributions(fn, kwargs, shape):
    """mc.nn.init's functions against torch.nn.init's on the same shape: the same mean, spread and
    range (the numbers differ: another generator), in place, in the tensor's dtype."""
    mc.manual_seed(0)
    torch.manual_seed(0)                                        # both draws fixed: the test is deterministic
    ours = mc.nn.Parameter(np.zeros(shape, np.float32))
    assert getattr(mc.nn.init, fn)(ours, **kwargs) is ours
    theirs = getattr(torch.nn.init, fn)(torch.empty(shape, dtype=torch.float64), **kwargs).numpy()
    values = ours.data
    assert values.dtype == np.float32 and values.shape == shape
    n = values.size
    assert abs(values.mean() - theirs.mean()) < 6 * theirs.std() / math.sqrt(n) + 1e-12
    assert abs(values.std() / theirs.std() - 1) < 4.5 / math.sqrt(n) + 0.002    # a wrong fan or gain is >= 10 % off
    if "uniform" in fn or "trunc" in fn:                    # bounded: the same bounds
        assert abs(values.max() - theirs.max()) < 0.02 * theirs.std()
        assert abs(values.min() - theirs.min()) < 0.02 * theirs.std()


def test_init_helpers_and_model_apply_as_in_torch():
    from minicnn.interop import to_torch
    init = mc.nn.init
    for name, param in [("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
                        ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None)]:
        assert init.calculate_gain(name, param) == torch.nn.init.calculate_gain(name, param)
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="at least 2"):
        init.kaiming_normal_(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="fan_in' or 'fan_out"):
        init.kaiming_uniform_(np.zeros((3, 3), np.float32), mode="fan")
    a = np.zeros((2, 3))
    np.testing.assert_array_equal(init.constant_(a, 0.25), np.full((2, 3), 0.25))
    assert init.ones_(a).sum() == 6 and init.zeros_(a).sum() == 0
    mc.manual_seed(3)
    first = init.normal_(np.zeros(4)).copy()
    mc.manual_seed(3)
    np.testing.assert_array_equal(init.normal_(np.zeros(4)), first)      # minicnn's seed decides

    net = mc.models.ResNet14()
    seen, seen_torch = [], []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    to_torch(net).apply(lambda m: seen_torch.append(type(m).__name__))
    assert len(seen) == len(seen_torch) and seen[-1] == "ResNet14" and seen[0] == "Conv2d"
    assert [n for n, _ in net.named_children()] == [n for n, _ in to_torch(net).named_children()]

    def init_weights(m):                                      # a tutorial's scheme
        if isinstance(m, nn.Conv2d):
            init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            init.ones_(m.weight)
            init.zeros_(m.bias)
    net.apply(init_weights)
    conv = net.get_submodule("3.body.0")
    assert isinstance(conv, nn.Conv2d) and abs(conv.weight.data.std() / math.sqrt(2 / (16 * 9)) - 1) < 0.15
    assert (net.get_submodule("3.body.1").weight.data == 1).all()
    with pytest.raises(AttributeError, match="no submodule 'nine'"):
        net.get_submodule("3.nine")
    head = mc.nn.Sequential()
    head.add_module("fc", nn.Linear(4, 2))
    assert list(head.state_dict()) == ["fc.weight", "fc.bias"] and head.cpu() is head
    with pytest.raises(KeyError, match="without '.'"):
        head.add_module("a.b", nn.ReLU())


def test_a_frozen_start_is_not_backpropagated_and_training_equals_torch():
    """With the stem and the first residual block frozen, fit's backward (input_grad=False) stops
    where the first learning layer starts, as torch's autograd does: the frozen block's backward never
    runs, the next training forward does not warn, and three SGD steps equal torch's (float64)."""
    from minicnn.interop import to_torch
    mc.manual_seed(1)
    net = mc.models.ResNet14().double()
    for i in (0, 1, 3):
        net[i].requires_grad_(False)
    twin = to_torch(net).double().train()
    calls = []
    original = net[3].backward
    net[3].backward = lambda *a, **k: calls.append(1) or original(*a, **k)      # noqa: E731
    opt = mc.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    topt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    loss_fn, tloss = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no StateReuseWarning: the skipped state counts as used
        for step in range(3):
            x, y = _batch(4, seed=step)
            x = x.astype(np.float64)
            loss_fn(net(x), y)
            opt.zero_grad()
            assert net.backward(loss_fn.backward(), input_grad=False) is None
            opt.step()
            topt.zero_grad()
            tloss(twin(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            topt.step()
    assert calls == []
    for k, p in twin.named_parameters():
        np.testing.assert_allclose(net.state_dict()[k], p.detach().numpy(), rtol=1e-9, atol=1e-11, err_msg=k)
    loss_fn(net(x), y)
    assert net.backward(loss_fn.backward()).shape == x.shape    # the input gradient asked for: all the way
    assert calls == [1]


class _Tower(nn.Module):
    """A custom module holding its blocks in a ModuleList: forward over them, backward in reverse."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.blocks = nn.ModuleList([mc.models.basic_block(4, 4), mc.models.basic_block(4, 8, stride=2)])
        self.blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)))

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def backward(self, dy):
        for block in reversed(self.blocks):
            dy = block.backward(dy)
        return self.stem.backward(dy)


def test_a_module_list_registers_its_modules_as_torch_names_them_and_trains_alike():
    from torch_compare import torch_basic_block

    class TorchTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(2, 4, 3, padding=1)
            self.blocks = torch.nn.ModuleList([torch_basic_block(4, 4), torch_basic_block(4, 8, 2), torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))])

        def forward(self, x):
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
            return x
    mc.manual_seed(2)
    ours, theirs = _Tower().double(), TorchTower().double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    opt, opt_t = mc.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(theirs.parameters(), lr=0.1,
                                                                                         momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, y = rng.standard_normal((4, 2, 6, 6)), rng.integers(0, 3, 4)
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(ours(x), y)
        opt.zero_grad()
        ours.backward(loss_fn.backward())
        opt.step()
        opt_t.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt_t.step()
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    assert len(ours.blocks) == 3 and isinstance(ours.blocks[:2], nn.ModuleList)
    with pytest.raises(NotImplementedError, match="ModuleList has no forward"):
        ours.blocks(np.zeros((1, 4, 6, 6)))
    with pytest.raises(TypeError, match="ModuleList: entry 3 must be a Module, got"):
        ours.blocks.append(np.zeros(3))
    with pytest.raises(TypeError, match="Sequential: entry 1 must be a Module, got str"):     # was kept silently
        nn.Sequential(nn.ReLU()).append("relu")


def test_a_plain_list_of_modules_warns_that_it_is_not_registered():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Linear(3, 3), nn.ReLU()]

    with pytest.warns(UserWarning, match=r"Net.layers is a list holding Modules: they are not registered.*ModuleList"):
        net = Net()
    assert net.num_parameters() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.sizes = [3, 4]                                 # other lists are plain attributes, silently


def test_the_classic_mnist_example_log_softmax_and_nll_loss_trains_as_cross_entropy():
    """pytorch/examples' MNIST ends its net with log_softmax and trains with nll_loss: the same here."""
    x = np.random.default_rng(1).standard_normal((48, 1, 28, 28))
    y = np.random.default_rng(2).integers(0, 10, 48)
    loader = data.DataLoader(data.ArrayDataset(x, y), batch_size=16)
    results = []
    for head, loss_fn in ((nn.LogSoftmax(dim=1), nn.NLLLoss()), (nn.Identity(), nn.CrossEntropyLoss())):
        mc.manual_seed(0)
        net = nn.Sequential(*mc.models.LeNet(), head)
        opt = mc.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        history = mc.train.fit(net, loss_fn, opt, loader, 2, val_loader=loader, log=None, progress=False)
        results.append((history, net.state_dict()))
    (h1, s1), (h2, s2) = results
    np.testing.assert_allclose(h1.train_loss, h2.train_loss, rtol=1e-5)       # float32: two roundings
    assert h1.val_accuracy == h2.val_accuracy
    for k in s1:
        np.testing.assert_allclose(s1[k], s2[k], rtol=1e-4, atol=1e-6, err_msg=k)
