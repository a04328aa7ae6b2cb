"""Datasets, a batching DataLoader and image transforms."""
from .datasets import ArrayDataset, FashionMNIST, MNIST, Subset, get_dataset, get_dataset_class, random_split
from .folder import ImageFolder
from .idx import CorruptFileError, read_idx
from .loader import DataLoader
from .synthetic import make_shapes_folder
from .transforms import (CenterCrop, Compose, Normalize, RandomCrop, RandomHorizontalFlip, RandomRotation,
                         Resize, ToFloat)

__all__ = ["MNIST", "FashionMNIST", "ArrayDataset", "Subset", "ImageFolder", "DataLoader", "random_split",
           "get_dataset", "get_dataset_class", "read_idx", "CorruptFileError", "Compose", "ToFloat", "Normalize", "RandomCrop",
           "RandomHorizontalFlip", "RandomRotation", "Resize", "CenterCrop", "make_shapes_folder"]
