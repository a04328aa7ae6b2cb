"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or raw).

Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions D, then D
big-endian uint32 sizes, then the values. Images are D = 3 (N, 28, 28), labels D = 1 (N,).
The file is read as a stream: the header first, checked (the value type, the dimensions, the size
they declare, computed without overflow and capped), then exactly the declared number of bytes,
then one more to prove the file ends there. So a small file declaring a huge array, or a small
gzip inflating to gigabytes behind a header of ten items, is refused after reading a few bytes.
Every fault names the file: a wrong magic number, a type or dimension count or size that is not
expected, a truncated or over-long body, a broken gzip stream.
"""
import gzip
import math
import os
import zlib

import numpy as np

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}
MAX_BYTES = 2**32            # 4 GiB: ten times the largest dataset this reader is for


class CorruptFileError(ValueError):
    """A data file that exists but cannot be what it claims to be."""


def _open(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _read_exactly(stream, n, path, what):
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(min(n - got, 2**24))
        if not chunk:
            raise CorruptFileError(f"{path}: truncated: {what} needs {n:,} bytes, the file ends after {got:,}")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_idx(path, expected_ndim=None, expected_shape_tail=None, expected_type=None):
    """Read an IDX file into a numpy array, checking its header and length.

    Args:
        expected_ndim: 1 for labels, 3 for images (None: any).
        expected_shape_tail: e.g. (28, 28) for the image size.
        expected_type: the IDX type code the values must have (0x08, unsigned bytes, for MNIST).
    """
    path = os.fspath(path)
    try:
        with _open(path) as stream:
            head = stream.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise CorruptFileError(f"{path}: not an IDX file (magic number {head.hex() or 'missing'}, "
                                       "expected 0000 followed by a type and a dimension byte)")
            type_code, ndim = head[2], head[3]
            if type_code not in IDX_TYPES:
                raise CorruptFileError(f"{path}: unknown IDX value type 0x{type_code:02x}")
            if expected_type is not None and type_code != expected_type:
                raise CorruptFileError(f"{path}: holds {TYPE_NAMES[type_code]} values (type 0x{type_code:02x}), "
                                       f"expected {TYPE_NAMES[expected_type]} (0x{expected_type:02x})")
            if expected_ndim is not None and ndim != expected_ndim:
                raise CorruptFileError(f"{path}: expected {expected_ndim} dimensions, the header says {ndim}")
            dims = _read_exactly(stream, 4 * ndim, path, "the header")
            shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
            if expected_shape_tail is not None and shape[1:] != tuple(expected_shape_tail):
                raise CorruptFileError(f"{path}: expected items of shape {tuple(expected_shape_tail)}, got {shape[1:]}")
            dtype = np.dtype(IDX_TYPES[type_code])
            size = math.prod(shape) * dtype.itemsize           # Python integers: no overflow
            if size > MAX_BYTES:
                raise CorruptFileError(f"{path}: the header declares {shape}, {size:,} bytes, more than the "
                                       f"{MAX_BYTES:,} this reader accepts")
            body = _read_exactly(stream, size, path, f"the header's {shape}")
            if stream.read(1):
                raise CorruptFileError(f"{path}: too long: more data after the {size:,} bytes its header {shape} "
                                       "declares")
    except (OSError, EOFError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CorruptFileError(f"{path}: broken or truncated gzip data ({err})") from err
    return np.frombuffer(body, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_bytes(path):
    """The decompressed bytes of an IDX file (gzip recognized by its magic bytes)."""
    path = os.fspath(path)
    try:
        with _open(path) as stream:
            return stream.read()
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptFileError(f"{path}: broken or truncated gzip data ({err})") from err
