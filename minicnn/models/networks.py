"""Model definitions. Each class is a Sequential, so its parameters are named '0.weight', '3.bias',
... exactly as torch.nn.Sequential names the same layers (a residual block's are '4.body.0.weight',
..., as a torch module with attributes body and shortcut names them)."""
from ..nn import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Hardsigmoid, Hardswish, Linear, MaxPool2d,
                  ReLU, Residual, Sequential, SqueezeExcitation)


class LeNet(Sequential):
    """LeNet-5 for 1x28x28 images (61,706 parameters). Shape: (N, 1, 28, 28) -> (N, num_classes)."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__(
            Conv2d(1, 6, 5, padding=2), ReLU(), MaxPool2d(2),        # 6x28x28 -> 6x14x14
            Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),                  # 16x10x10 -> 16x5x5
            Flatten(),
            Linear(400, 120), ReLU(),
            Linear(120, 84), ReLU(),
            Linear(84, num_classes))


class ConvNet(Sequential):
    """Two conv blocks with batch norm and a dropout MLP. Shape: (N, 1, 28, 28) -> (N, num_classes)."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__(
            Conv2d(1, 10, 5, stride=1, padding=1), MaxPool2d(2), ReLU(), BatchNorm2d(10),   # 10x13x13
            Conv2d(10, 20, 5, stride=1, padding=1), MaxPool2d(2), ReLU(), BatchNorm2d(20),  # 20x5x5
            Flatten(),
            Linear(500, 60), Dropout(0.5), ReLU(),
            Linear(60, 20), Dropout(0.5), ReLU(),
            Linear(20, num_classes))


class MnistCNN(Sequential):
    """The Keras MNIST example network. Shape: (N, 1, 28, 28) -> (N, num_classes)."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__(
            Conv2d(1, 32, 3), ReLU(), MaxPool2d(2),                  # 32x13x13
            Conv2d(32, 64, 3), ReLU(), MaxPool2d(2),                 # 64x5x5
            Flatten(),
            Linear(1600, 512), ReLU(), Dropout(0.5),
            Linear(512, num_classes))


class TinyBNNet(Sequential):
    """A 4-channel network with batch norm. Shape: (N, 1, 28, 28) -> (N, num_classes)."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__(
            Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2d(2),     # 4x14x14
            Conv2d(4, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2d(2),     # 4x7x7
            Flatten(),
            Linear(196, num_classes))


class FashionCNN(Sequential):
    """Three [conv, batch norm, ReLU, max-pool] blocks of 32, 64 and 128 channels and a dropout
    classifier (390,634 parameters): the Fashion-MNIST model. Shape: (N, 1, 28, 28) -> (N, num_classes).
    The convolutions have no bias: the batch norm after each one would cancel it."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__(
            Conv2d(1, 32, 3, padding=1, bias=False), BatchNorm2d(32), ReLU(), MaxPool2d(2),     # 32x14x14
            Conv2d(32, 64, 3, padding=1, bias=False), BatchNorm2d(64), ReLU(), MaxPool2d(2),    # 64x7x7
            Conv2d(64, 128, 3, padding=1, bias=False), BatchNorm2d(128), ReLU(), MaxPool2d(2),  # 128x3x3
            Flatten(),
            Dropout(0.3), Linear(1152, 256), ReLU(),
            Dropout(0.3), Linear(256, num_classes))


class AlexNetMNIST(Sequential):
    """AlexNet adapted to 1x28x28 inputs. Shape: (N, 1, 28, 28) -> (N, num_classes)."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__(
            Conv2d(1, 64, 5, padding=2), ReLU(), MaxPool2d(3, stride=1),          # 64x26x26
            Conv2d(64, 192, 3, padding=2), ReLU(), MaxPool2d(3, stride=2),        # 192x13x13
            Conv2d(192, 384, 3, padding=1), ReLU(),
            Conv2d(384, 256, 3, padding=1), ReLU(),
            Conv2d(256, 256, 3, padding=1), ReLU(), MaxPool2d(3, stride=2),       # 256x6x6
            Flatten(),
            Dropout(), Linear(9216, 4096), ReLU(),
            Dropout(), Linear(4096, 4096), ReLU(),
            Linear(4096, num_classes))


class AnimalNet(Sequential):
    """Five [conv, ReLU, conv, ReLU, maxpool] stages for 3x256x256 photos (2.23 M parameters).
    Shape: (N, 3, 256, 256) -> (N, num_classes)."""
    input_shape = (3, 256, 256)

    def __init__(self, num_classes=10):
        layers, c_in = [], 3
        for c_out in (16, 32, 64, 128, 256):          # 256 -> 126 -> 61 -> 28 -> 12 -> 4
            layers += [Conv2d(c_in, c_out, 3), ReLU(), Conv2d(c_out, c_out, 3), ReLU(), MaxPool2d(2)]
            c_in = c_out
        layers += [Flatten(), Dropout(0.25), Linear(4096, 256), ReLU(), Dropout(0.5), Linear(256, num_classes)]
        super().__init__(*layers)


def basic_block(in_channels, out_channels, stride=1):
    """ResNet's basic block: relu(conv3x3-BN-ReLU-conv3x3-BN (x) + shortcut(x)), the shortcut the
    identity, or a 1x1 convolution with batch norm where the channels or the stride change.
    Shape: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))."""
    body = Sequential(Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                      BatchNorm2d(out_channels), ReLU(),
                      Conv2d(out_channels, out_channels, 3, padding=1, bias=False), BatchNorm2d(out_channels))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = Sequential(Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), BatchNorm2d(out_channels))
    return Residual(body, shortcut, activation=ReLU())


class ResNet14(Sequential):
    """A small ResNet for 1x28x28 images (174,970 parameters): a 3x3 stem of 16 channels, three stages
    of two basic blocks (16, 32 and 64 channels at 28x28, 14x14 and 7x7; each stage after the first
    halves the size in its first block, whose shortcut is a 1x1 convolution), global average pooling
    and one Linear. 14 layers with weights: the CIFAR ResNets' 6n+2 with n = 2.
    Shape: (N, 1, 28, 28) -> (N, num_classes)."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10, widths=(16, 32, 64), blocks=2):
        layers = [Conv2d(1, widths[0], 3, padding=1, bias=False), BatchNorm2d(widths[0]), ReLU()]
        c_in = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                layers.append(basic_block(c_in, width, stride=2 if stage > 0 and block == 0 else 1))
                c_in = width
        layers += [AdaptiveAvgPool2d(1), Flatten(), Linear(c_in, num_classes)]
        super().__init__(*layers)


def separable_block(in_channels, out_channels, stride=1):
    """MobileNet's depthwise-separable block as a list of layers: a 3x3 depthwise convolution (one
    filter per channel, groups = in_channels) with batch norm and ReLU, then a 1x1 (pointwise)
    convolution mixing the channels, with batch norm and ReLU: 9*C + C*OC weights instead of 9*C*OC."""
    return [Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
            BatchNorm2d(in_channels), ReLU(),
            Conv2d(in_channels, out_channels, 1, bias=False), BatchNorm2d(out_channels), ReLU()]


class MobileNetMNIST(Sequential):
    """A small MobileNet-style network of depthwise-separable blocks for 1x28x28 images (67,338
    parameters): a 3x3 stem of 32 channels, four separable blocks (64, 128, 128, 256 channels, the
    second and fourth at stride 2: 28x28 -> 14x14 -> 7x7), global average pooling, dropout and one
    Linear. Shape: (N, 1, 28, 28) -> (N, num_classes)."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__(
            Conv2d(1, 32, 3, padding=1, bias=False), BatchNorm2d(32), ReLU(),      # 32x28x28
            *separable_block(32, 64),                                               # 64x28x28
            *separable_block(64, 128, stride=2),                                    # 128x14x14
            *separable_block(128, 128),
            *separable_block(128, 256, stride=2),                                   # 256x7x7
            AdaptiveAvgPool2d(1), Flatten(), Dropout(0.2), Linear(256, num_classes))


def _multiple_of_8(v):
    """torchvision's _make_divisible(v, 8): the nearest multiple of 8, at least 8 and not below 90 % of v."""
    rounded = max(8, (v + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * v else rounded


def inverted_residual(in_channels, expanded, out_channels, kernel_size=3, stride=1, squeeze_excite=False,
                      activation=ReLU):
    """MobileNetV2/V3's inverted residual block as a list of layers (as separable_block): a 1x1
    convolution widening to `expanded` channels (left out when expanded == in_channels), a k x k
    depthwise convolution at the stride, squeeze and excitation if asked (to expanded // 4 channels
    rounded to a multiple of 8, torchvision's rule; Hardsigmoid gate), then a 1x1 convolution back to
    out_channels with batch norm and no activation (the linear bottleneck). When stride 1 keeps the
    shape the list is one Residual holding them (the input added back, no activation after the sum).
    Shape: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))."""
    layers = []
    if expanded != in_channels:
        layers += [Conv2d(in_channels, expanded, 1, bias=False), BatchNorm2d(expanded), activation()]
    layers += [Conv2d(expanded, expanded, kernel_size, stride, (kernel_size - 1) // 2, groups=expanded, bias=False),
               BatchNorm2d(expanded), activation()]
    if squeeze_excite:
        layers.append(SqueezeExcitation(expanded, _multiple_of_8(expanded // 4), scale_activation=Hardsigmoid))
    layers += [Conv2d(expanded, out_channels, 1, bias=False), BatchNorm2d(out_channels)]
    return [Residual(Sequential(*layers))] if stride == 1 and in_channels == out_channels else layers


class MobileNetV3MNIST(Sequential):
    """A small MobileNetV3-style network for 1x28x28 images (92,314 parameters): a 3x3 stem of 16
    channels with Hardswish, six inverted residual blocks (MobileNetV3-Small's first six, widths 16,
    24, 24, 40, 40, 48; 3x3 depthwise with ReLU, then 5x5 with Hardswish; squeeze and excitation in
    four; 28x28 -> 14x14 -> 7x7), a 1x1 convolution to 288 channels, global average pooling, dropout
    and one Linear. Shape: (N, 1, 28, 28) -> (N, num_classes)."""
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__(
            Conv2d(1, 16, 3, padding=1, bias=False), BatchNorm2d(16), Hardswish(),       # 16x28x28
            *inverted_residual(16, 16, 16, 3, 2, True, ReLU),                            # 16x14x14
            *inverted_residual(16, 64, 24, 3, 1, False, ReLU),                           # 24x14x14
            *inverted_residual(24, 72, 24, 3, 1, False, ReLU),
            *inverted_residual(24, 96, 40, 5, 2, True, Hardswish),                       # 40x7x7
            *inverted_residual(40, 160, 40, 5, 1, True, Hardswish),
            *inverted_residual(40, 120, 48, 5, 1, True, Hardswish),                      # 48x7x7
            Conv2d(48, 288, 1, bias=False), BatchNorm2d(288), Hardswish(),
            AdaptiveAvgPool2d(1), Flatten(), Dropout(0.2), Linear(288, num_classes))


MODELS = {cls.__name__.lower(): cls for cls in (LeNet, ConvNet, MnistCNN, TinyBNNet, FashionCNN, AlexNetMNIST, AnimalNet,
                                                ResNet14, MobileNetMNIST, MobileNetV3MNIST)}


def get_model_class(name):
    """The model class for a case-insensitive name ('lenet', 'mnistcnn', ...)."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def get_model(name, **kwargs):
    """Build a model by case-insensitive name."""
    return get_model_class(name)(**kwargs)
