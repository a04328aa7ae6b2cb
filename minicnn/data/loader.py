"""DataLoader: batches of float images (N, C, H, W) and int64 labels (N,).

Datasets held as arrays (``dataset.data``, ``dataset.targets``) are sliced with one fancy index
per batch, no Python loop per sample; other datasets (ImageFolder) are read item by item.
uint8 images are scaled to [0, 1] after the transform; shuffling is reproducible with ``seed``.

Each batch's random transforms draw from a generator of its own, made from the loader's seed, the
epoch and the batch's number; so num_workers threads preparing batches ahead (decoding and
augmenting; NumPy and Pillow let go of Python's lock meanwhile) deliver exactly the batches that
num_workers=0 delivers, in the same order.
"""
import collections
import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import backend, random


class DataLoader:
    """Args:
        dataset: an array dataset (MNIST, FashionMNIST, Subset, ArrayDataset) or any sequence
            of (image, label).
        batch_size, shuffle, drop_last: as in torch.
        seed: seeds the shuffling generator (None: unpredictable).
        transform: applied to each batch (N, C, H, W) before the float conversion.
        dtype: dtype of the image batches (float32, or float64 for exact comparisons).
        device: 'cpu' (default) or 'cuda' to deliver CuPy arrays.
        num_workers: threads preparing batches ahead of training (0: prepared when asked for);
            the batches are the same for any number.
        prefetch_factor: batches each worker prepares ahead (torch's name; default 2).
        pin_memory, persistent_workers, timeout: accepted for torch's code; no effect (host arrays go
            to the GPU as they are; the workers are threads, started each epoch; a worker's error
            is raised at once). collate_fn, worker_init_fn and generator would change what the
            batches hold or how they are drawn here: refused with what to use instead.
        sampler: which items each epoch, in order, instead of shuffle (an object with next_epoch(),
            len(), state_dict(), load_state_dict(): minicnn.distributed.DistributedSampler gives
            each rank its shard).
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, drop_last=False, seed=None, transform=None,
                 dtype=np.float32, device="cpu", num_workers=0, prefetch_factor=2, pin_memory=False, sampler=None,
                 persistent_workers=False, timeout=0, collate_fn=None, worker_init_fn=None, generator=None):
        refused = {"collate_fn": "batches are stacked arrays; give a transform (applied to each batch) instead",
                   "worker_init_fn": "workers are threads drawing from each batch's own generator; nothing to seed",
                   "generator": "give seed= (an int) for reproducible shuffling"}
        for name, value in (("collate_fn", collate_fn), ("worker_init_fn", worker_init_fn), ("generator", generator)):
            if value is not None:
                raise ValueError(f"DataLoader: {name} is not supported: {refused[name]}")
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if isinstance(num_workers, bool) or int(num_workers) != num_workers or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be a whole number >= 0, got {num_workers!r}")
        if int(prefetch_factor) < 1:
            raise ValueError(f"DataLoader: prefetch_factor must be >= 1, got {prefetch_factor!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: give shuffle=True or a sampler, not both (the sampler decides the order)")
        self.num_workers, self.prefetch_factor, self.sampler = int(num_workers), int(prefetch_factor), sampler
        if len(dataset) == 0:
            raise ValueError("DataLoader: the dataset is empty")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last, self.transform = shuffle, drop_last, transform
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self._to_device = backend.device_converter(device)

    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        batches = self._epoch_plan()
        if self.num_workers == 0:
            for indices, seed in batches:
                yield self._deliver(*self._prepare(indices, seed))
            return
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="minicnn-loader") as pool:
            pending = collections.deque(pool.submit(self._prepare, *item)
                                        for item in itertools.islice(batches, self.num_workers * self.prefetch_factor))
            try:
                while pending:
                    images, labels = pending.popleft().result()        # a worker's error is raised here
                    following = next(batches, None)
                    if following is not None:
                        pending.append(pool.submit(self._prepare, *following))
                    yield self._deliver(images, labels)
            finally:                                                   # stopped early: drop what is queued
                for future in pending:
                    future.cancel()

    def _epoch_plan(self):
        """(indices, seed) of each batch of one epoch, drawn from the loader's generator now (a
        sampler's rank is part of the seed: ranks augment their shards independently)."""
        if self.sampler is not None:
            order, rank = self.sampler.next_epoch(), getattr(self.sampler, "rank", 0)
        else:
            n, rank = len(self.dataset), 0
            order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        epoch_seed = int(self.rng.integers(2 ** 63))
        return ((order[start:start + self.batch_size], (epoch_seed, rank, b) if rank else (epoch_seed, b))
                for b, start in enumerate(range(0, len(self) * self.batch_size, self.batch_size)))

    def _prepare(self, indices, seed):
        """One batch on the host: fetch (decode), transform with the batch's generator, scale."""
        with random.batch_generator(np.random.default_rng(seed)):
            images, labels = self._fetch(indices)
            if self.transform is not None:
                images = self.transform(images)
        if images.dtype == np.uint8:
            images = images.astype(self.dtype) / self.dtype.type(255)
        return np.ascontiguousarray(images, dtype=self.dtype), labels

    def _deliver(self, images, labels):
        return self._to_device(images), self._to_device(labels)

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
        """The shuffling generator's state (and the sampler's), so a resumed run draws the same batches."""
        state = {"rng": self.rng.bit_generator.state}
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        if self.sampler is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
