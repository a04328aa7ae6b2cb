"""minicnn: a convolutional-network library written from scratch, proven equal to PyTorch.

    import minicnn as mc
    net = mc.models.LeNet()
    loss_fn = mc.nn.CrossEntropyLoss()
    opt = mc.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    logits = net(x); loss = loss_fn(logits, y)
    opt.zero_grad(); net.backward(loss_fn.backward()); opt.step()
"""
__version__ = "0.1.0"

from . import backend, data, models, nn, optim, train
from .checkpoint import load, save
from .gradcheck import gradcheck
from .models import summary
from .nn import no_grad
from .random import manual_seed

__all__ = ["nn", "optim", "models", "backend", "data", "train", "plot", "save", "load", "gradcheck", "summary", "no_grad",
           "manual_seed", "__version__"]


def __getattr__(name):
    """minicnn.plot is imported on first use: matplotlib alone costs about 0.6 s at start-up."""
    if name == "plot":
        import importlib
        return importlib.import_module(".plot", __name__)
    raise AttributeError(f"module 'minicnn' has no attribute {name!r}")
