"""Image transforms on arrays, vectorized over a batch.

Every transform takes a batch (N, C, H, W) or a single image (C, H, W) and returns the same
kind; dtypes are kept (uint8 stays uint8, rounded) except by ToFloat. Random transforms draw
from minicnn's global generator (minicnn.manual_seed) unless given their own ``seed``.
"""

import functools

import numpy as np

from .. import random


class Transform:
    def __call__(self, x):
        x = np.asarray(x)
        if x.ndim == 3:
            out = self.apply(x[None])
            return x if out.base is x else out[0]
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__}: expected images (N, C, H, W) or (C, H, W), got {x.shape}")
        return self.apply(x)

    def apply(self, x):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class _Random(Transform):
    """A transform that draws random numbers: inside a DataLoader from the batch's generator (so the
    batches do not depend on num_workers), else from its own (seed=...) or minicnn's global one."""

    def __init__(self, seed=None):
        self._own_rng = None if seed is None else np.random.default_rng(seed)

    @property
    def rng(self):
        return random.current_batch_generator() or self._own_rng or random.get_rng()


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
    """(x - mean) / std per channel, on float images; inplace=True (torch's flag) writes the result
    into the given array and returns it."""

    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = tuple(np.atleast_1d(mean).tolist()), tuple(np.atleast_1d(std).tolist())
        self.inplace = bool(inplace)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize: std must be positive, got {self.std}")

    def apply(self, x):
        if x.dtype.kind != "f":
            raise TypeError(f"Normalize: expected float images (apply ToFloat first), got {x.dtype}")
        if len(self.mean) not in (1, x.shape[1]):
            raise ValueError(f"Normalize: {len(self.mean)} means for {x.shape[1]} channels")
        mean = np.asarray(self.mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=x.dtype).reshape(1, -1, 1, 1)
        if self.inplace:
            x -= mean
            x /= std
            return x
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
    """Resize as torchvision.transforms.Resize does on tensors: ``size`` an int scales the shorter side
    to it, keeping the aspect ratio (the longer side int(size * long / short), capped at ``max_size``);
    a pair (height, width) is the size itself. Bilinear with antialiasing (torch's
    interpolate(..., antialias=True): a triangle filter stretched over the input when shrinking), or
    without (plain bilinear with half-pixel centres, align_corners=False). uint8 stays uint8, rounded.
    """

    def __init__(self, size, interpolation="bilinear", max_size=None, antialias=True):
        if isinstance(size, (list, tuple)) and len(size) == 1:
            size = size[0]
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            if size < 1:
                raise ValueError(f"Resize: size must be positive, got {size!r}")
            self.size = int(size)
        else:
            self.size = _size_pair(size, "Resize")
        if str(interpolation).lower().rsplit(".", 1)[-1] != "bilinear":
            raise ValueError(f"Resize: only bilinear interpolation is implemented, got {interpolation!r}")
        if max_size is not None and (not isinstance(self.size, int) or max_size <= self.size):
            raise ValueError(f"Resize: max_size {max_size!r} needs an int size smaller than it, got size {size!r}")
        self.max_size, self.antialias = max_size, bool(antialias)

    def output_size(self, H, W):
        """(OH, OW) for an H x W image, by torchvision's rule."""
        if not isinstance(self.size, int):
            return self.size
        short, long = (W, H) if W <= H else (H, W)
        new_short, new_long = self.size, int(self.size * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_long, new_short) if W <= H else (new_short, new_long)

    def apply(self, x):
        H, W = x.shape[2:]
        OH, OW = self.output_size(H, W)
        y = _resample(x.astype(np.float64), *_resize_taps(H, OH, self.antialias), axis=2)
        y = _resample(y, *_resize_taps(W, OW, self.antialias), axis=3)
        return _cast_like(y, x)


def _resample(x, index, weight, axis):
    """Along one axis: output i = sum over k of weight[i, k] * x[index[i, k]] (a few taps each; no
    BLAS call, so loader threads never race minicnn's BLAS thread settings)."""
    picked = np.take(x, index, axis=axis)                    # the axis becomes (out, taps)
    shape = [1] * x.ndim + [1]
    shape[axis], shape[axis + 1] = weight.shape
    return (picked * weight.reshape(shape)).sum(axis=axis + 1)


@functools.lru_cache(maxsize=64)                           # a folder's images share a few sizes
def _resize_taps(size, out, antialias):
    """The nonzero weights of each output position: index (out, K) and weight (out, K), padded
    with weight 0."""
    weights = _resize_weights(size, out, antialias)
    taps = max(int((weights != 0).sum(axis=1).max()), 1)
    index, weight = np.zeros((out, taps), np.int64), np.zeros((out, taps))
    for i, row in enumerate(weights):
        nonzero = np.flatnonzero(row)
        index[i, :len(nonzero)], weight[i, :len(nonzero)] = nonzero, row[nonzero]
    index.flags.writeable = weight.flags.writeable = False
    return index, weight


def _resize_weights(size, out, antialias):
    """(out, size) interpolation weights along one axis: torch's bilinear, antialiased or not."""
    weights = np.zeros((out, size))
    scale = size / out
    if not antialias or scale <= 1:                          # plain bilinear, half-pixel centres, clamped
        src = np.clip((np.arange(out) + 0.5) * scale - 0.5, 0, size - 1)
        low = np.floor(src).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        frac = src - low
        np.add.at(weights, (np.arange(out), low), 1 - frac)
        np.add.at(weights, (np.arange(out), high), frac)
        return weights
    support = scale                                          # the triangle's half-width, stretched by the scale
    for i in range(out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / scale))
        weights[i, lo:hi] = taps / taps.sum()
    return weights


class CenterCrop(Transform):
    """Crop the central ``size`` region as torchvision does: the offset rounded (half to even), and an
    image smaller than the crop padded with zeros first."""

    def __init__(self, size):
        self.size = _size_pair(size, "CenterCrop")

    def apply(self, x):
        (h, w), (H, W) = self.size, x.shape[2:]
        if h > H or w > W:
            top, left = max(h - H, 0) // 2, max(w - W, 0) // 2
            x = np.pad(x, ((0, 0), (0, 0), (top, max(h - H, 0) - top), (left, max(w - W, 0) - left)))
            H, W = x.shape[2:]
        top, left = int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
        return x[:, :, top:top + h, left:left + w].copy()


class RandomCrop(_Random):
    """Pad by ``padding`` (an int for every side, (left/right, top/bottom) or (left, top, right,
    bottom), filled with ``fill``; pad_if_needed pads an image smaller than the crop) and cut a random
    ``size`` window per image, as torchvision.transforms.RandomCrop: a random shift of up to
    ``padding`` pixels when size equals the image size. Only padding_mode 'constant' is implemented."""

    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant", seed=None):
        super().__init__(seed)
        if padding_mode != "constant":
            raise ValueError(f"RandomCrop: only padding_mode='constant' is implemented, got {padding_mode!r}")
        self.size, self.fill, self.pad_if_needed = _size_pair(size, "RandomCrop"), fill, bool(pad_if_needed)
        if padding is None:
            padding = 0
        sides = (padding,) * 4 if isinstance(padding, (int, np.integer)) else tuple(padding)
        if len(sides) == 2:
            sides = sides * 2
        if len(sides) != 4 or any(int(p) != p or p < 0 for p in sides):
            raise ValueError(f"RandomCrop: padding must be an int or 2 or 4 non-negative ints, got {padding!r}")
        self.padding = tuple(int(p) for p in sides)          # left, top, right, bottom

    def apply(self, x):
        (h, w) = self.size
        left, top, right, bottom = self.padding
        H, W = x.shape[2] + top + bottom, x.shape[3] + left + right
        if self.pad_if_needed:                              # torchvision pads both sides by the shortfall
            extra_w, extra_h = max(w - W, 0), max(h - H, 0)
            left, right, top, bottom = left + extra_w, right + extra_w, top + extra_h, bottom + extra_h
        if any((left, top, right, bottom)):
            x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=self.fill)
        N, C, H, W = x.shape
        if h > H or w > W:
            raise ValueError(f"RandomCrop{self.size}: padded image {H}x{W} is smaller than the crop "
                             "(pad_if_needed=True pads it)")
        top = self.rng.integers(0, H - h + 1, N)
        left = self.rng.integers(0, W - w + 1, N)
        rows = (top[:, None] + np.arange(h))[:, :, None]            # (N, h, 1)
        cols = (left[:, None] + np.arange(w))[:, None, :]           # (N, 1, w)
        return np.moveaxis(x[np.arange(N)[:, None, None], :, rows, cols], -1, 1)


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
    """Rotate each image counter-clockwise by an angle drawn uniformly from [-degrees, degrees] (or a
    (min, max) pair) about its centre, as torchvision.transforms.RandomRotation: nearest-neighbour by
    default (interpolation='bilinear' for bilinear), corners filled with ``fill``, the size kept
    (expand=False; expand=True is not implemented)."""

    def __init__(self, degrees, interpolation="nearest", expand=False, center=None, fill=0, seed=None):
        super().__init__(seed)
        self.degrees = (-abs(degrees), abs(degrees)) if np.isscalar(degrees) else tuple(degrees)
        self.interpolation = str(interpolation).lower().rsplit(".", 1)[-1]
        if self.interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"RandomRotation: interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        if expand or center is not None:
            raise ValueError("RandomRotation: expand=True and a custom center are not implemented")
        self.fill = fill

    def apply(self, x):
        N, C, H, W = x.shape
        theta = np.deg2rad(self.rng.uniform(*self.degrees, N))[:, None, None]
        return rotate(x, theta, self.fill, self.interpolation)


def rotate(x, theta, fill=0, interpolation="nearest"):
    """x (N, C, H, W) rotated counter-clockwise by theta (radians, (N, 1, 1) or a number) about the centre."""
    N, C, H, W = x.shape
    cy, cx = (H - 1) / 2, (W - 1) / 2
    gy, gx = np.meshgrid(np.arange(H) - cy, np.arange(W) - cx, indexing="ij")
    cos, sin = np.cos(theta), np.sin(theta)
    # inverse map: the source of each output pixel is the pixel rotated back by -theta
    src_x = cos * gx - sin * gy + cx
    src_y = sin * gx + cos * gy + cy
    src_x, src_y = np.broadcast_to(src_x, (N, H, W)), np.broadcast_to(src_y, (N, H, W))
    if interpolation == "nearest":
        src_y, src_x = np.rint(src_y), np.rint(src_x)
        inside = (src_y >= 0) & (src_y <= H - 1) & (src_x >= 0) & (src_x <= W - 1)
        yy = np.clip(src_y, 0, H - 1).astype(np.int64)
        xx = np.clip(src_x, 0, W - 1).astype(np.int64)
        values = x[np.arange(N)[:, None, None], :, yy, xx]                     # (N, H, W, C)
        values = np.where(inside[..., None], values, np.asarray(fill, dtype=x.dtype))
        return np.ascontiguousarray(np.moveaxis(values, -1, 1))
    return _cast_like(bilinear_sample(x, src_y, src_x, fill), x)
