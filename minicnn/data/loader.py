"""DataLoader: batches of float images (N, C, H, W) and int64 labels (N,).

Datasets held as arrays (``dataset.data``, ``dataset.targets``) are sliced with one fancy index
per batch, no Python loop per sample; other datasets (ImageFolder) are read item by item.
uint8 images are scaled to [0, 1] after the transform; shuffling is reproducible with ``seed``.
"""
import math

import numpy as np

from .. import backend


class DataLoader:
    """Args:
        dataset: an array dataset (MNIST, FashionMNIST, Subset, ArrayDataset) or any sequence
            of (image, label).
        batch_size, shuffle, drop_last: as in torch.
        seed: seeds the shuffling generator (None: unpredictable).
        transform: applied to each batch (N, C, H, W) before the float conversion.
        dtype: dtype of the image batches (float32, or float64 for exact comparisons).
        device: 'cpu' (default) or 'cuda' to deliver CuPy arrays.
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, drop_last=False, seed=None, transform=None,
                 dtype=np.float32, device="cpu"):
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("DataLoader: the dataset is empty")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last, self.transform = shuffle, drop_last, transform
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self._to_device = backend.device_converter(device)

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            images, labels = self._fetch(order[start:start + self.batch_size])
            if self.transform is not None:
                images = self.transform(images)
            if images.dtype == np.uint8:
                images = images.astype(self.dtype) / self.dtype.type(255)
            yield self._to_device(np.ascontiguousarray(images, dtype=self.dtype)), self._to_device(labels)

    def _fetch(self, indices):
        if hasattr(self.dataset, "data") and hasattr(self.dataset, "targets"):
            return self.dataset.data[indices], self.dataset.targets[indices]
        items = [self.dataset[int(i)] for i in indices]
        try:
            images = np.stack([np.asarray(image) for image, _ in items])
        except ValueError as err:
            shapes = sorted({np.shape(image) for image, _ in items})
            raise ValueError(f"DataLoader: images of one batch differ in shape {shapes}; give the dataset a "
                             "transform (e.g. Resize and CenterCrop) that makes them equal") from err
        return images, np.array([label for _, label in items], dtype=np.int64)

    def state_dict(self):
        """The shuffling generator's state, so a resumed run draws the same batches."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
