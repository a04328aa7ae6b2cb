"""Saving and loading states without ever unpickling code, chosen by the file's extension:

    .safetensors   a flat {name: array} mapping (a state_dict), the safetensors format: torch users read
                   it with safetensors.torch.load_file (pip install 'minicnn[export]')
    anything else  an .npz archive holding nested dicts, lists and tuples of arrays and plain values
                   (whole checkpoints: model, optimizer, epoch, history, ...), read with allow_pickle=False

The .npz layout: each array leaf is a member named by its place in the tree ('model/0.weight',
'optimizer/state/0/exp_avg', ...: np.load shows readable keys); the member '__structure__' holds
UTF-8 JSON describing the tree, where an array leaf is {"array": member}, a dict {"dict": [[key,
value], ...]} (keys str, int or float), a list {"list": [...]}, a tuple {"tuple": [...]}, and
str/int/float/bool/None stand for themselves.

Files are written to a temporary file beside the target, flushed to disk, then renamed over it, so
a crash never leaves a half-written file (and the next write removes a killed writer's temporary). Loading checks what a file declares before it allocates:
each member's array header against the member's size, the total against the file's size, the
nesting depth; a file that breaks a rule, is truncated or is not minicnn's raises ValueError saying so.
"""
import io
import json
import os
import re
import tempfile
import time
import zipfile

import numpy as np

from . import backend

FORMAT = "minicnn-checkpoint-1"
MAX_DEPTH = 64               # nesting of dicts and lists in a checkpoint's tree
MAX_INFLATION = 8            # a member may inflate to 8x its share of the file (minicnn writes them stored)
SLACK_BYTES = 2**20


def save(obj, path):
    """Save a state dict (or any nesting of dicts, lists, arrays and plain values) to ``path``;
    a '.safetensors' path takes a flat {str: array} mapping only."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        atomic_write_bytes(path, _safetensors_bytes(obj, path))
        return
    arrays = {}
    structure = {"format": FORMAT, "tree": _encode(obj, arrays, "")}
    arrays["__structure__"] = np.frombuffer(json.dumps(structure).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load(path, keys=None):
    """Load what :func:`save` wrote. Raises FileNotFoundError for a missing file, ValueError for a
    truncated, corrupt, oversized or foreign one (a PyTorch file gets a hint how to convert it).
    keys: of a saved dict, only these entries (the others' arrays are not read from the file; of
    anything else, an empty dict)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        state = _load_safetensors(path)
        return state if keys is None else {k: v for k, v in state.items() if k in keys}
    _refuse_torch_files(path)
    try:
        with zipfile.ZipFile(path) as archive:
            _check_sizes(archive, os.path.getsize(path))
            names = set(archive.namelist())
            if "__structure__.npy" not in names:
                raise ValueError("it has no '__structure__' entry; it was not written by minicnn.save")
            structure = json.loads(_read_member(archive, "__structure__").tobytes().decode())
            if not isinstance(structure, dict) or structure.get("format") != FORMAT:
                found = structure.get("format") if isinstance(structure, dict) else type(structure).__name__
                raise ValueError(f"unknown format {found!r}, expected {FORMAT!r}")
            tree = structure.get("tree")
            if keys is not None:
                tree = _entries(tree, keys)
            return _decode(tree, archive, 0)
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError,
            ValueError, zipfile.LargeZipFile, RecursionError, TypeError, AttributeError) as err:
        raise ValueError(f"checkpoint {path!r} is truncated or corrupt: {err}") from None


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a temporary file and a rename. The temporary's name holds
    the writer's process id (.tmp-PID-XXXX<name>); each write also removes the temporaries that
    writers killed mid-write (kill -9, a power cut) left beside the target."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(directory, ".tmp-")
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=os.path.basename(path), dir=directory)
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


_STALE_SECONDS = 3600        # a temporary without a process id (older versions) is stale after an hour


def remove_stale_temporaries(directory, prefix):
    """Delete files named prefix + PID + '-' ... in directory whose process is gone (or, with no process id
    in the name, that are older than an hour): what a writer killed before its rename left behind."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        match = re.match(re.escape(prefix) + r"(\d+)-", name)
        path = os.path.join(directory, name)
        try:
            if match:
                if _process_alive(int(match.group(1))):
                    continue
            elif time.time() - os.path.getmtime(path) < _STALE_SECONDS:
                continue
            os.unlink(path)
        except OSError:                        # removed meanwhile, or not ours to remove
            continue


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                    # alive, another user's
        return True
    return True


# ------------------------------------------------------------------ .npz

def _member_name(where, arrays):
    """A readable, unique member name for the array at tree path ``where``."""
    name = re.sub(r"[^A-Za-z0-9_.\-/]", "_", where.strip("/")) or "array"
    candidate, i = name, 1
    while candidate in arrays or candidate == "__structure__":
        i += 1
        candidate = f"{name}~{i}"
    return candidate


def _encode(value, arrays, where):
    if backend.is_array(value):
        value = backend.to_numpy(value)            # GPU arrays are copied to the host
    if isinstance(value, (np.ndarray, np.generic)):
        value = np.asarray(value)
        if value.dtype.kind not in "biufc":
            raise TypeError(f"minicnn.save: cannot store arrays of dtype {value.dtype} without pickling")
        key = _member_name(where, arrays)
        arrays[key] = value
        return {"array": key}
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, (str, int, float)) or isinstance(k, bool):
                raise TypeError(f"minicnn.save: dict keys must be str, int or float, got {type(k).__name__}")
        return {"dict": [[k, _encode(v, arrays, f"{where}/{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__ if type(value) in (list, tuple) else "list":
                [_encode(v, arrays, f"{where}/{i}") for i, v in enumerate(value)]}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"minicnn.save: cannot store a {type(value).__name__} (only arrays, dicts, lists, "
                    "tuples, str, int, float, bool and None)")


def _decode(node, archive, depth):
    if depth > MAX_DEPTH:
        raise ValueError(f"its structure is nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        if len(node) != 1:
            raise ValueError(f"unknown node with keys {sorted(node)[:5]}")
        (kind, value), = node.items()
        if kind == "array" and isinstance(value, str):
            return _read_member(archive, value)
        if kind == "dict" and isinstance(value, list):
            if not all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int, float))
                       for item in value):
                raise ValueError("a dict node must list [key, value] pairs")
            return {k: _decode(v, archive, depth + 1) for k, v in value}
        if kind in ("list", "tuple") and isinstance(value, list):
            items = [_decode(v, archive, depth + 1) for v in value]
            return items if kind == "list" else tuple(items)
        raise ValueError(f"unknown node {kind!r}")
    if node is None or isinstance(node, (str, bool, int, float)):
        return node
    raise ValueError(f"unknown node of type {type(node).__name__}")


def _entries(tree, keys):
    """A saved dict's node with only the entries named in keys (none when what was saved is no dict)."""
    pairs = tree.get("dict") if isinstance(tree, dict) and len(tree) == 1 else None
    return {"dict": [item for item in pairs if isinstance(item, list) and len(item) == 2 and item[0] in keys]
                     if isinstance(pairs, list) else []}


def _check_sizes(archive, file_size):
    """Refuse members that declare more bytes than the file could honestly hold (a zip bomb)."""
    budget = MAX_INFLATION * file_size + SLACK_BYTES
    total = 0
    for info in archive.infolist():
        total += info.file_size
        if total > budget:
            raise ValueError(f"its members declare {total:,} bytes, more than a {file_size:,}-byte file holds "
                             f"(at most {budget:,})")


def _read_member(archive, key):
    """The array in member key.npy, its header checked against the member's size before allocating."""
    name = key + ".npy"
    if name not in archive.namelist():
        raise ValueError(f"its structure names a missing array {key!r}")
    info = archive.getinfo(name)
    with archive.open(name) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"array {key!r} has an .npy header of version {version}, which minicnn does not write")
        if dtype.hasobject:
            raise ValueError(f"array {key!r} holds Python objects, which minicnn never unpickles")
        header = f.tell()
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * dtype.itemsize
        if nbytes != info.file_size - header:
            raise ValueError(f"array {key!r} declares shape {shape} of {dtype} ({nbytes:,} bytes) "
                             f"but holds {info.file_size - header:,}")
        array = np.empty(count, dtype=dtype)               # read straight into it: no second copy
        view, done = memoryview(array).cast("B"), 0
        while done < nbytes:
            n = f.readinto(view[done:])
            if not n:
                raise ValueError(f"array {key!r} is truncated ({done:,} of {nbytes:,} bytes)")
            done += n
    return array.reshape(shape, order="F" if fortran else "C")


def _refuse_torch_files(path):
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
            raise ValueError(f"{path!r} is a pickle (PyTorch's torch.save?), which minicnn never loads: in "
                             "torch, save weights with safetensors.torch.save_file(model.state_dict(), "
                             "'x.safetensors') and load that, or convert with minicnn.interop.from_torch")
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            return                                     # load() says it is truncated or corrupt
        if any(name.endswith("data.pkl") for name in names):
            raise ValueError(f"{path!r} is a PyTorch file (torch.save): minicnn never unpickles. In torch, save "
                             "weights with safetensors.torch.save_file(model.state_dict(), 'x.safetensors') "
                             "and load that, or convert a module with minicnn.interop.from_torch")


# ------------------------------------------------------------------ .safetensors

def _safetensors():
    try:
        import safetensors.numpy
    except ImportError as err:
        raise ImportError("reading and writing .safetensors needs the safetensors package: "
                          "pip install 'minicnn[export]'") from err
    return safetensors.numpy


def _safetensors_bytes(obj, path):
    if not isinstance(obj, dict) or not all(isinstance(k, str) and backend.is_array(v) for k, v in obj.items()):
        raise TypeError(f"minicnn.save: {path} (.safetensors) holds a flat {{name: array}} mapping such as "
                        "model.state_dict(); save whole checkpoints (optimizer, history) as .npz")
    # np.asarray, not np.ascontiguousarray: that returns a 0-d array (num_batches_tracked) as shape (1,)
    arrays = {k: np.asarray(backend.to_numpy(v), order="C") for k, v in obj.items()}
    return _safetensors().save(arrays, metadata={"format": "pt", "producer": "minicnn"})


def _load_safetensors(path):
    module = _safetensors()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        header_length = int.from_bytes(data[:8], "little")
        if len(data) < 8 or header_length > size - 8:
            raise ValueError(f"its header declares {header_length:,} bytes, the file holds {size - 8:,} after it")
        state = module.load(data)
    except Exception as err:                      # SafetensorError: a header that lies, truncated data
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"safetensors file {path!r} is truncated or corrupt: {message}") from None
    return {k: np.array(v) for k, v in state.items()}
