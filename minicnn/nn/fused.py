"""Conv2d -> ReLU -> MaxPool2d(2) run as one step, where the backend offers it (Numba).

    x (N, C, H, W) -> conv (N, OC, OH, OW) -> ReLU, 2x2 max pool -> y (N, OC, OH//2, OW//2)

Sequential hands every such run of three layers (stride-1 convolution, ReLU, 2x2 max pool at
stride 2 without padding) to a ConvReLUPool. Each output plane of the convolution is pooled and
rectified right after it is computed, while it is still in the cache: the full-size activation is
never written to memory nor read back, and backward writes the pooled gradient straight into the
layout the convolution's backward reads. The arithmetic is that of the three layers run one by
one (the same sums in the same order, the same tournament, the same ReLU), so results are equal
bit for bit; tests check it. Two exceptions: a 3x3 convolution with more than 3 input channels goes
by Winograd's F(2x2, 3x3) on Numba (see numba_winograd), the pool's windows being its output tiles:
the same values up to rounding, tested against the layers and torch. And kernels 5 to 8 wide
(LeNet's and ConvNet's second layers) with more than 3 input channels take their backward from the
pool's winners alone (numba_sparse: the same gradients up to rounding, in another
order of additions). The three modules keep their parameters and state_dict names: the fused step
is only how Sequential runs them.
"""
from .. import backend
from .activation import ReLU
from .conv import Conv2d
from .module import Module
from .pool import MaxPool2d


class ConvReLUPool(Module):
    """The step that runs conv, then relu and pool (in either order: they commute) as one.

    Args: conv (Conv2d, stride 1), relu (ReLU), pool (MaxPool2d, 2x2, stride 2, no padding).
    Shape: (N, C, H, W) -> (N, OC, OH//2, OW//2).
    """
    can_skip_input_grad = True

    def __init__(self, conv, relu, pool):
        super().__init__()
        object.__setattr__(self, "layers", (conv, relu, pool))     # not children: they belong to the model

    @staticmethod
    def fits(conv, relu, pool, ops):
        """Whether ops can run these three layers as one step."""
        return (type(conv) is Conv2d and conv.stride == (1, 1) and type(relu) is ReLU
                and type(pool) is MaxPool2d and pool.window == (2, 2, 2, 2, 0, 0)
                and getattr(ops, "FUSES_CONV_RELU_POOL", False))

    def forward(self, x):
        conv, relu, pool = self.layers
        OH, OW = conv.checked_output_size(x)
        for layer in self.layers:                    # their own backward must not reuse stale state
            object.__setattr__(layer, "_saved", None)
        if OH < 2 or OW < 2:                         # let the pool raise its error
            return pool(relu(conv(x)))
        y, saved = conv.stride1_forward(backend.ops_for(x), x, relu_pool=True)
        self.save_for_backward(y, x_shape=x.shape, stride1=saved)
        return y

    def backward(self, dy, input_grad=True):
        s = self.saved(dy)
        return self.layers[0].stride1_backward(backend.ops_for(dy), dy, s.stride1, s.x_shape, input_grad)

    def __repr__(self):
        return "ConvReLUPool(" + ", ".join(repr(layer) for layer in self.layers) + ")"


def fuse(layers, ops):
    """layers with every fitting (Conv2d, ReLU, MaxPool2d) run, in either order of the last two,
    replaced by one ConvReLUPool step."""
    steps, i = [], 0
    while i < len(layers):
        run = layers[i:i + 3]
        if len(run) == 3:
            conv, a, b = run
            relu, pool = (a, b) if isinstance(a, ReLU) else (b, a)
            if ConvReLUPool.fits(conv, relu, pool, ops):
                steps.append(ConvReLUPool(conv, relu, pool))
                i += 3
                continue
        steps.append(layers[i])
        i += 1
    return steps
