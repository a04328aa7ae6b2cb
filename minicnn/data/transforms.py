"""Image transforms on arrays, vectorized over a batch.

Every transform takes a batch (N, C, H, W) or a single image (C, H, W) and returns the same
kind; dtypes are kept (uint8 stays uint8, rounded) except by ToFloat. Random transforms draw
from minicnn's global generator (minicnn.manual_seed) unless given their own ``seed``.
"""

import numpy as np

from .. import random


class Transform:
    def __call__(self, x):
        x = np.asarray(x)
        if x.ndim == 3:
            return self.apply(x[None])[0]
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__}: expected images (N, C, H, W) or (C, H, W), got {x.shape}")
        return self.apply(x)

    def apply(self, x):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class _Random(Transform):
    def __init__(self, seed=None):
        self._own_rng = None if seed is None else np.random.default_rng(seed)

    @property
    def rng(self):
        return self._own_rng or random.get_rng()


class Compose(Transform):
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class ToFloat(Transform):
    """uint8 [0, 255] -> float32 [0, 1]; float input is only cast."""

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)

    def apply(self, x):
        if x.dtype == np.uint8:
            return x.astype(self.dtype) / self.dtype.type(255)
        return x.astype(self.dtype, copy=False)


class Normalize(Transform):
    """(x - mean) / std per channel, on float images."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(np.atleast_1d(mean).tolist()), tuple(np.atleast_1d(std).tolist())
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize: std must be positive, got {self.std}")

    def apply(self, x):
        if x.dtype.kind != "f":
            raise TypeError(f"Normalize: expected float images (apply ToFloat first), got {x.dtype}")
        if len(self.mean) not in (1, x.shape[1]):
            raise ValueError(f"Normalize: {len(self.mean)} means for {x.shape[1]} channels")
        mean = np.asarray(self.mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=x.dtype).reshape(1, -1, 1, 1)
        return (x - mean) / std


def _size_pair(size, name):
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name}: size must be a positive int or (height, width), got {size!r}")
    return pair


def _cast_like(y, x):
    if x.dtype == np.uint8:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y.astype(x.dtype, copy=False)


def bilinear_sample(x, ys, xs, fill=0.0):
    """Sample x (N, C, H, W) at fractional source rows ys and columns xs, each (N or 1, OH, OW);
    points outside the image read ``fill``. Returns float64 (N, C, OH, OW)."""
    N, C, H, W = x.shape
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    wy, wx = ys - y0, xs - x0
    n = np.arange(N)[:, None, None]
    out = 0.0
    for dy, wgt_y in ((0, 1 - wy), (1, wy)):
        for dx, wgt_x in ((0, 1 - wx), (1, wx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            values = x[n, :, np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]        # (N, OH, OW, C)
            values = np.where(inside[..., None], values, fill)
            out = out + values * (wgt_y * wgt_x)[..., None]
    return np.moveaxis(out, -1, 1)


class Resize(Transform):
    """Bilinear resize to ``size`` (int: both sides), with half-pixel centres (torch's
    align_corners=False, without antialiasing)."""

    def __init__(self, size):
        self.size = _size_pair(size, "Resize")

    def apply(self, x):
        (OH, OW), (H, W) = self.size, x.shape[2:]
        ys = np.clip((np.arange(OH) + 0.5) * H / OH - 0.5, 0, H - 1)
        xs = np.clip((np.arange(OW) + 0.5) * W / OW - 0.5, 0, W - 1)
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        return _cast_like(bilinear_sample(x, grid_y[None], grid_x[None]), x)


class CenterCrop(Transform):
    """Crop the central ``size`` region (the image must be at least that large)."""

    def __init__(self, size):
        self.size = _size_pair(size, "CenterCrop")

    def apply(self, x):
        (h, w), (H, W) = self.size, x.shape[2:]
        if h > H or w > W:
            raise ValueError(f"CenterCrop{self.size}: image {H}x{W} is smaller than the crop")
        top, left = (H - h) // 2, (W - w) // 2
        return x[:, :, top:top + h, left:left + w].copy()


class RandomCrop(_Random):
    """Pad by ``padding`` (fill value ``fill``) and cut a random ``size`` window per image: a
    random shift of up to ``padding`` pixels when size equals the image size."""

    def __init__(self, size, padding=0, fill=0, seed=None):
        super().__init__(seed)
        self.size, self.padding, self.fill = _size_pair(size, "RandomCrop"), int(padding), fill

    def apply(self, x):
        p, (h, w) = self.padding, self.size
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=self.fill) if p else x
        N, C, H, W = xp.shape
        if h > H or w > W:
            raise ValueError(f"RandomCrop{self.size}: padded image {H}x{W} is smaller than the crop")
        top = self.rng.integers(0, H - h + 1, N)
        left = self.rng.integers(0, W - w + 1, N)
        rows = (top[:, None] + np.arange(h))[:, :, None]            # (N, h, 1)
        cols = (left[:, None] + np.arange(w))[:, None, :]           # (N, 1, w)
        return np.moveaxis(xp[np.arange(N)[:, None, None], :, rows, cols], -1, 1)


class RandomHorizontalFlip(_Random):
    """Mirror each image left-right with probability p."""

    def __init__(self, p=0.5, seed=None):
        super().__init__(seed)
        self.p = float(p)

    def apply(self, x):
        flip = self.rng.random(len(x)) < self.p
        out = x.copy()
        out[flip] = x[flip][..., ::-1]
        return out


class RandomRotation(_Random):
    """Rotate each image by an angle drawn uniformly from [-degrees, degrees] (or a (min, max)
    pair) about its centre, bilinear, corners filled with ``fill``."""

    def __init__(self, degrees, fill=0, seed=None):
        super().__init__(seed)
        self.degrees = (-abs(degrees), abs(degrees)) if np.isscalar(degrees) else tuple(degrees)
        self.fill = fill

    def apply(self, x):
        N, C, H, W = x.shape
        theta = np.deg2rad(self.rng.uniform(*self.degrees, N))[:, None, None]
        cy, cx = (H - 1) / 2, (W - 1) / 2
        gy, gx = np.meshgrid(np.arange(H) - cy, np.arange(W) - cx, indexing="ij")
        cos, sin = np.cos(theta), np.sin(theta)
        # inverse map: the source of each output pixel is the pixel rotated back by -theta
        src_x = cos * gx - sin * gy + cx
        src_y = sin * gx + cos * gy + cy
        return _cast_like(bilinear_sample(x, src_y, src_x, self.fill), x)
