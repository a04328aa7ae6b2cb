"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or raw).

Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions D, then D
big-endian uint32 sizes, then the values. Images are D = 3 (N, 28, 28), labels D = 1 (N,).
Every fault names the file: a wrong magic number, a dimension count or size that is not
expected, a truncated or over-long body, a broken gzip stream.
"""
import gzip
import os
import zlib

import numpy as np

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class CorruptFileError(ValueError):
    """A data file that exists but cannot be what it claims to be."""


def read_idx_bytes(path):
    """The decompressed bytes of an IDX file (gzip recognized by its magic bytes)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise CorruptFileError(f"{path}: broken or truncated gzip data ({err})") from err
    return raw


def read_idx(path, expected_ndim=None, expected_shape_tail=None):
    """Read an IDX file into a numpy array, checking its header and length.

    Args:
        expected_ndim: 1 for labels, 3 for images (None: any).
        expected_shape_tail: e.g. (28, 28) for the image size.
    """
    path = os.fspath(path)
    data = read_idx_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise CorruptFileError(f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}, "
                               "expected 0000 followed by a type and a dimension byte)")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise CorruptFileError(f"{path}: unknown IDX value type 0x{type_code:02x}")
    if expected_ndim is not None and ndim != expected_ndim:
        raise CorruptFileError(f"{path}: expected {expected_ndim} dimensions, the header says {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptFileError(f"{path}: truncated header ({len(data)} bytes)")
    shape = tuple(int(v) for v in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if expected_shape_tail is not None and shape[1:] != tuple(expected_shape_tail):
        raise CorruptFileError(f"{path}: expected items of shape {tuple(expected_shape_tail)}, got {shape[1:]}")
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "too long"
        raise CorruptFileError(f"{path}: {kind}: {len(data)} bytes, the header {shape} needs {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
