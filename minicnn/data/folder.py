"""ImageFolder: a folder of class sub-folders of photos (the Animals-10 layout).

    root/cat/0001.jpg, root/dog/xyz.png, ...  ->  classes ['cat', 'dog'], labels 0, 1
Images are decoded with Pillow to RGB and returned as (3, H, W) uint8 arrays.
"""
import os

import numpy as np

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolder:
    """Args:
        root: the folder holding one sub-folder per class.
        transform: applied to each (3, H, W) uint8 image (e.g. Resize then CenterCrop) so that
            the images of a batch share one size.
    """

    def __init__(self, root, transform=None):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder: {root!r} is not a folder")
        self.root, self.transform = root, transform
        self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        self.samples = []
        empty = []
        for label, name in enumerate(self.classes):
            found = [(os.path.join(dirpath, f), label) for dirpath, _, files in sorted(os.walk(os.path.join(root, name)))
                     for f in sorted(files) if f.lower().endswith(EXTENSIONS)]
            if not found:
                empty.append(name)
            self.samples += found
        if not self.samples:
            raise FileNotFoundError(f"ImageFolder: no images ({', '.join(EXTENSIONS)}) in class folders under {root!r}")
        if empty:                                      # torch refuses them too: a class nothing can teach
            raise FileNotFoundError(f"ImageFolder: class folder(s) {', '.join(map(repr, empty))} under {root!r} hold no "
                                    f"images ({', '.join(EXTENSIONS)}); remove them or add images")
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)

    def __len__(self):
        return len(self.samples)

    def load(self, path):
        """(3, H, W) uint8; ValueError naming the file for an unreadable or oversized one (Pillow's
        decompression-bomb limit: an image of more pixels than that is refused, not decoded)."""
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()
        except Image.DecompressionBombError as err:
            raise ValueError(f"ImageFolder: image {path!r} is too large to decode safely: {err}") from None
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"ImageFolder: cannot read image {path!r}: {err}") from err

    def __getitem__(self, i):
        path, label = self.samples[i]
        image = self.load(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self):
        return f"ImageFolder({self.root!r}, {len(self)} images, {len(self.classes)} classes)"
