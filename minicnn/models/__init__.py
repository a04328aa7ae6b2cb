"""The networks of the tutorials that inspired minicnn, each a Sequential whose state_dict names
and shapes equal those of the same network written with torch.nn.Sequential."""
from .networks import (MODELS, AlexNetMNIST, AnimalNet, ConvNet, FashionCNN, LeNet, MnistCNN, MobileNetMNIST,
                       MobileNetV3MNIST, ResNet14, TinyBNNet, basic_block, get_model, get_model_class,
                       inverted_residual, separable_block)
from .summary import summary

__all__ = ["LeNet", "ConvNet", "MnistCNN", "TinyBNNet", "FashionCNN", "AlexNetMNIST", "AnimalNet", "ResNet14",
           "MobileNetMNIST", "MobileNetV3MNIST", "basic_block", "separable_block", "inverted_residual", "MODELS",
           "get_model", "get_model_class", "summary"]
