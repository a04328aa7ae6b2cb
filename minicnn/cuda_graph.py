"""minicnn.cuda_graph.CudaGraphStep: a whole training step captured as one CUDA graph and replayed.

It lives with the CuPy backend (minicnn/backend/cuda_graph.py, which says how it works); this is its
public name. fit(..., cuda_graph=True) uses it through the backend's captured_step."""


def __getattr__(name):
    if name == "CudaGraphStep":
        from .backend.cuda_graph import CudaGraphStep
        return CudaGraphStep
    raise AttributeError(f"module 'minicnn.cuda_graph' has no attribute {name!r}")
