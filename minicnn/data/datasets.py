"""MNIST and Fashion-MNIST as arrays: images (N, 1, 28, 28) uint8, targets (N,) int64.

Files are looked for, in order, in:
  1. ``root``/mnist or ``root``/fashion-mnist, then ``root`` itself;
  2. $MINICNN_DATA/mnist or $MINICNN_DATA/fashion-mnist;
  3. the user cache, $MINICNN_CACHE or ~/.cache/minicnn, under the same folder names;
  4. /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), for Fashion-MNIST;
then downloaded into the cache from the mirrors torchvision uses, checking published MD5s (unless
download=False or the environment sets MINICNN_OFFLINE=1, as the test suite does).
Each file may be gzipped (the standard names) or raw (the same names without .gz).
"""
import os

import numpy as np

from .download import DownloadError, download
from .idx import read_idx


class ArrayDataset:
    """A dataset held in memory: ``data`` (N, C, H, W) and ``targets`` (N,) int64.

    Indexing gives (image, label); the DataLoader slices ``data`` directly for speed.
    """

    def __init__(self, data, targets, classes=None):
        if len(data) != len(targets):
            raise ValueError(f"ArrayDataset: {len(data)} images but {len(targets)} labels")
        self.data, self.targets = data, np.asarray(targets, dtype=np.int64)
        self.classes = list(classes) if classes is not None else [str(c) for c in range(int(self.targets.max()) + 1)]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i], self.targets[i]

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} images of shape {tuple(self.data.shape[1:])}, {len(self.classes)} classes)"


class _IdxDataset(ArrayDataset):
    folder = ""
    classes_ = []
    mirrors = []
    # (name, md5 of the published .gz)
    train_files = []
    test_files = []
    system_dirs = []

    def __init__(self, root=None, train=True, download=True, progress=None):
        files = self.train_files if train else self.test_files
        directory = self._find(root, [name for name, _ in files])
        if directory is None:
            if not download:
                raise FileNotFoundError(self._missing_message(root, "downloads are disabled (download=False)"))
            if os.environ.get("MINICNN_OFFLINE", "") not in ("", "0"):
                raise FileNotFoundError(self._missing_message(root, "downloads are disabled (MINICNN_OFFLINE is set)"))
            directory = self._download(files, progress, root)
        (images_name, _), (labels_name, _) = files
        images = read_idx(self._path(directory, images_name), expected_ndim=3, expected_shape_tail=(28, 28),
                          expected_type=0x08)                  # pixels and labels are unsigned bytes
        labels = read_idx(self._path(directory, labels_name), expected_ndim=1, expected_type=0x08)
        if len(images) != len(labels):
            raise ValueError(f"{directory}: {len(images)} images but {len(labels)} labels")
        if labels.max(initial=0) >= len(self.classes_):
            raise ValueError(f"{directory}: label {int(labels.max())} out of range for {len(self.classes_)} classes")
        super().__init__(images[:, None], labels.astype(np.int64), self.classes_)
        self.train, self.root = train, directory

    # -------------------------------------------------------- locating files

    @classmethod
    def search_dirs(cls, root=None):
        """Every folder tried, in order. ``root`` means what MINICNN_DATA means, the folder holding
        mnist/ and fashion-mnist/ (torchvision's root too is the parent); the dataset's own folder
        works as well."""
        dirs = [os.path.join(os.fspath(root), cls.folder), os.fspath(root)] if root is not None else []
        if os.environ.get("MINICNN_DATA"):
            dirs.append(os.path.join(os.environ["MINICNN_DATA"], cls.folder))
        dirs.append(cls.cache_dir())
        return dirs + list(cls.system_dirs)

    @classmethod
    def cache_dir(cls):
        base = os.environ.get("MINICNN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minicnn")
        return os.path.join(base, cls.folder)

    @staticmethod
    def _path(directory, name):
        gz = os.path.join(directory, name)
        return gz if os.path.exists(gz) else gz[:-3]

    def _find(self, root, names):
        for directory in self.search_dirs(root):
            if all(os.path.exists(self._path(directory, n)) for n in names):
                return directory
        return None

    def _download(self, files, progress, root=None):
        target, errors = self.cache_dir(), []
        for name, md5 in files:
            for mirror in self.mirrors:
                try:
                    download(mirror + name, os.path.join(target, name), md5, progress=progress)
                    break
                except DownloadError as err:
                    errors.append(str(err))
            else:
                raise FileNotFoundError(self._missing_message(root, "downloading failed:\n    " + "\n    ".join(errors)))
        return target

    def _missing_message(self, root, why):
        places = "\n    ".join(self.search_dirs(root))
        return (f"{type(self).__name__}: the {self.folder} files were not found; looked in\n    {places}\n"
                f"  and {why}. Put the four IDX files ({', '.join(n for n, _ in self.train_files + self.test_files)}) "
                f"in one of those folders, or point MINICNN_DATA (or --data) at a folder containing '{self.folder}/'.")


class MNIST(_IdxDataset):
    """Handwritten digits: 60,000 training and 10,000 test images of 28x28 pixels."""
    folder = "mnist"
    mean, std = 0.1307, 0.3081           # of the training pixels after /255
    classes_ = [str(d) for d in range(10)]
    mirrors = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"]
    train_files = [("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                   ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432")]
    test_files = [("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                  ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")]


class FashionMNIST(_IdxDataset):
    """Zalando's clothing images: same sizes and format as MNIST, ten garment classes."""
    folder = "fashion-mnist"
    mean, std = 0.2860, 0.3530
    classes_ = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    mirrors = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
    train_files = [("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                   ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe")]
    test_files = [("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                  ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")]
    system_dirs = ["/usr/share/datasets/fashion-mnist"]


DATASETS = {"mnist": MNIST, "fashion-mnist": FashionMNIST, "fashion_mnist": FashionMNIST, "fashionmnist": FashionMNIST}


def get_dataset_class(name):
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose mnist or fashion-mnist") from None


def get_dataset(name, **kwargs):
    return get_dataset_class(name)(**kwargs)


class Subset(ArrayDataset):
    """The items of ``dataset`` at ``indices`` (arrays are copied once, so slicing stays fast)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, np.asarray(indices)
        if hasattr(dataset, "data"):
            super().__init__(dataset.data[self.indices], dataset.targets[self.indices], dataset.classes)
        else:
            self.classes = getattr(dataset, "classes", None)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]


def random_split(dataset, lengths, seed=None):
    """Split into non-overlapping Subsets of the given lengths (ints summing to len(dataset),
    or fractions summing to 1), shuffled reproducibly with ``seed``."""
    n = len(dataset)
    if all(isinstance(v, float) for v in lengths) and abs(sum(lengths) - 1) < 1e-9:
        counts = [int(np.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
    else:
        counts = [int(v) for v in lengths]
    if sum(counts) != n or any(c < 0 for c in counts):
        raise ValueError(f"random_split: lengths {list(lengths)} do not add up to the dataset's {n} items")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0] + counts)
    return [Subset(dataset, order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
