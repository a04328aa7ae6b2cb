"""The first day of a PyTorch user: each habit that would silently go wrong here either works as in
torch or stops with a message that says what to do instead. One test per trap."""
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
