"""The CUDA kernels of the top-level kernels/ folder (shipped in the wheel as minicnn/kernels/),
loaded for the CuPy backend.

One RawModule per .cu file, compiled by NVRTC at first use (CuPy caches the binary on disk), with
the float and double instantiations named through ``name_expressions``. Every launch checks dtypes
and C-contiguity itself (CuPy's RawKernel checks nothing), uses grid = ceil(n / 256), and passes
integers as int32/int64 and scalars as the array's dtype.
"""
import os

import cupy as cp
import numpy as np

BLOCK = 256

KERNELS = {            # file -> kernels templated on T (instantiated for float and double)
    "im2col.cu": ["im2col", "col2im", "rows_to_nchw"],
    "pool.cu": ["maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward"],
    "batchnorm.cu": ["bn_forward_train", "bn_backward_train"],
    "softmax_ce.cu": ["softmax_ce_forward", "softmax_ce_backward"],
    "activation.cu": ["relu_forward", "relu_backward"],
    "optim.cu": ["sgd_multi", "adam_multi"],
    "dropout.cu": ["dropout_forward"],
    "gemm.cu": ["gemm"],
}
PLAIN_KERNELS = {"dropout.cu": ["rng_advance"]}       # file -> kernels without a type parameter
TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_modules = {}


def kernel_dir():
    """minicnn/kernels in an installed wheel, or the repository's kernels/ in a checkout."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(here, "kernels"), os.path.join(os.path.dirname(here), "kernels")):
        if os.path.isfile(os.path.join(candidate, "im2col.cu")):
            return candidate
    raise FileNotFoundError(f"minicnn: the CUDA sources (kernels/*.cu) are missing near {here}")


def kernel(file, name, dtype):
    """The compiled kernel ``name`` of ``file`` for dtype (None for an untemplated kernel)."""
    if file not in _modules:
        with open(os.path.join(kernel_dir(), file)) as f:
            source = f.read()
        names = [f"{k}<{t}>" for k in KERNELS[file] for t in TYPES.values()] + PLAIN_KERNELS.get(file, [])
        _modules[file] = cp.RawModule(code=source, options=("-std=c++14",), name_expressions=names)
    if dtype is None:
        return _modules[file].get_function(name)
    return _modules[file].get_function(f"{name}<{TYPES[np.dtype(dtype)]}>")


def launch(file, name, dtype, total, args, threads=BLOCK, blocks=None):
    """Launch ``name`` over ``total`` threads (or ``blocks`` blocks) after checking contiguity."""
    for a in args:
        if isinstance(a, cp.ndarray) and not a.flags.c_contiguous:
            raise ValueError(f"minicnn CUDA kernel {name}: got a non-contiguous array")
    if total == 0:
        return
    blocks = blocks if blocks is not None else (int(total) + threads - 1) // threads
    kernel(file, name, dtype)((blocks,), (threads,), args)


def int32s(*values):
    return [np.int32(v) for v in values]


def check_float(*arrays):
    for a in arrays:
        if a.dtype not in TYPES:
            raise TypeError(f"minicnn CUDA kernels take float32 or float64 arrays, got {a.dtype}")


def capturing():
    """True while the current stream is being captured into a CUDA graph (no host reads allowed)."""
    return cp.cuda.get_current_stream().is_capturing()
