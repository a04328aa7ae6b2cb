"""Datasets, a batching DataLoader and image transforms."""
from .datasets import ArrayDataset, FashionMNIST, MNIST, Subset, get_dataset, random_split
from .folder import ImageFolder
from .idx import CorruptFileError, read_idx
from .loader import DataLoader
from .transforms import (CenterCrop, Compose, Normalize, RandomCrop, RandomHorizontalFlip, RandomRotation,
                         Resize, ToFloat)

__all__ = ["MNIST", "FashionMNIST", "ArrayDataset", "Subset", "ImageFolder", "DataLoader", "random_split",
           "get_dataset", "read_idx", "CorruptFileError", "Compose", "ToFloat", "Normalize", "RandomCrop",
           "RandomHorizontalFlip", "RandomRotation", "Resize", "CenterCrop"]
