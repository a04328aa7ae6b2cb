"""Checkpoints that never unpickle code: nested dicts/lists of arrays and plain values stored in
one .npz file with allow_pickle=False.

Layout of the file: every array leaf is an npz entry named 'a0', 'a1', ...; the entry
'__structure__' holds UTF-8 JSON describing the tree, where an array leaf is {"array": "a3"},
a dict is {"dict": [[key, value], ...]} (keys may be str, int or float), a list {"list": [...]},
a tuple {"tuple": [...]}, and str/int/float/bool/None stand for themselves.

Files are written to a temporary file beside the target, flushed to disk, then renamed over
it, so a crash never leaves a half-written checkpoint.
"""
import io
import json
import os
import tempfile
import zipfile

import numpy as np

from . import backend

FORMAT = "minicnn-checkpoint-1"


def save(obj, path):
    """Save a state dict (or any nesting of dicts, lists, arrays and plain values) to ``path``."""
    arrays = {}
    structure = {"format": FORMAT, "tree": _encode(obj, arrays)}
    arrays["__structure__"] = np.frombuffer(json.dumps(structure).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load(path):
    """Load what :func:`save` wrote. Raises ValueError for a truncated, corrupt or foreign file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "__structure__" not in archive.files:
                raise ValueError("it has no '__structure__' entry; it was not written by minicnn.save")
            structure = json.loads(archive["__structure__"].tobytes().decode())
            if structure.get("format") != FORMAT:
                raise ValueError(f"unknown format {structure.get('format')!r}, expected {FORMAT!r}")
            return _decode(structure["tree"], archive)
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError,
            ValueError, zipfile.LargeZipFile) as err:
        raise ValueError(f"checkpoint {path!r} is truncated or corrupt: {err}") from err


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _encode(value, arrays):
    if backend.is_array(value):
        value = backend.to_numpy(value)            # GPU arrays are copied to the host
    if isinstance(value, (np.ndarray, np.generic)):
        value = np.asarray(value)
        if value.dtype.kind not in "biufc":
            raise TypeError(f"minicnn.save: cannot store arrays of dtype {value.dtype} without pickling")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"array": key}
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, (str, int, float)) or isinstance(k, bool):
                raise TypeError(f"minicnn.save: dict keys must be str, int or float, got {type(k).__name__}")
        return {"dict": [[k, _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__ if type(value) in (list, tuple) else "list": [_encode(v, arrays) for v in value]}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"minicnn.save: cannot store a {type(value).__name__} (only arrays, dicts, lists, "
                    "tuples, str, int, float, bool and None)")


def _decode(node, archive):
    if isinstance(node, dict):
        if "array" in node:
            return archive[node["array"]]
        if "dict" in node:
            return {k: _decode(v, archive) for k, v in node["dict"]}
        if "list" in node:
            return [_decode(v, archive) for v in node["list"]]
        if "tuple" in node:
            return tuple(_decode(v, archive) for v in node["tuple"])
        raise ValueError(f"unknown node {sorted(node)}")
    return node
