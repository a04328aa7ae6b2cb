"""Model definitions. Each class is a flat Sequential, so its parameters are named '0.weight',
'3.bias', ... exactly as torch.nn.Sequential names the same layers."""
from ..nn import (BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential)


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


MODELS = {cls.__name__.lower(): cls for cls in (LeNet, ConvNet, MnistCNN, TinyBNNet, FashionCNN, AlexNetMNIST, AnimalNet)}


def get_model_class(name):
    """The model class for a case-insensitive name ('lenet', 'mnistcnn', ...)."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def get_model(name, **kwargs):
    """Build a model by case-insensitive name."""
    return get_model_class(name)(**kwargs)
