"""Max and average pooling over KH x KW windows moved by a stride, optionally over padding.

    x (N, C, H, W) -> y (N, C, OH, OW),  OH = (H + 2*PH - KH) // SH + 1
Max pooling pads with -inf and remembers which pixel won each window; backward sends each
gradient to that pixel, adding up where windows overlap. Average pooling shares it out.
Adaptive pooling (average or max) chooses its windows from the output size it must give.
"""
import numpy as np

from .. import backend
from ._checks import check_input, pair
from .module import Module


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = f"{type(self).__name__}(kernel_size={kernel_size})"
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name, 1)
        self.padding = pair(padding, "padding", name, 0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel size "
                             f"{self.kernel_size} (as in torch)")

    def _check(self, x):
        check_input(self, x, "(N, C, H, W)", 4)
        (KH, KW), (PH, PW) = self.kernel_size, self.padding
        H, W = x.shape[2:]
        if H + 2 * PH < KH or W + 2 * PW < KW:
            raise ValueError(f"{self!r}: window {KH}x{KW} is larger than the padded input "
                             f"{H + 2 * PH}x{W + 2 * PW} (input {H}x{W}, padding {PH}x{PW})")

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum of each window, as torch.nn.MaxPool2d.

    Args: kernel_size, stride (default: kernel_size), padding: an int or a pair. torch's dilation,
        return_indices and ceil_mode are accepted at their defaults (1, False, False); other values,
        which would change the result, are refused.
    Shape: (N, C, H, W) -> (N, C, OH, OW).
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding)
        if dilation not in (1, (1, 1)) or return_indices or ceil_mode:
            raise ValueError(f"MaxPool2d: dilation={dilation!r}, return_indices={return_indices!r}, "
                             f"ceil_mode={ceil_mode!r} are not supported (only 1, False, False)")

    @property
    def kind(self):
        """('maxpool2d', kernel_size, stride, padding) for a backend's chain plan (None for subclasses)."""
        return ("maxpool2d", self.kernel_size, self.stride, self.padding) if type(self) is MaxPool2d else None

    def forward(self, x):
        self._check(x)
        y, record = backend.ops_for(x).maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).maxpool2d_backward(dy, self.saved(dy).record)


class AvgPool2d(_Pool2d):
    """Mean of each window, as torch.nn.AvgPool2d (ceil_mode=False).

    Args: kernel_size, stride (default: kernel_size), padding, count_include_pad (divide by
    KH*KW even where the window covers padding; torch's default).
    Shape: (N, C, H, W) -> (N, C, OH, OW).
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__(kernel_size, stride, padding)
        if ceil_mode or divisor_override is not None:
            raise ValueError(f"AvgPool2d: ceil_mode={ceil_mode!r}, divisor_override={divisor_override!r} are not "
                             "supported (only False, None)")
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        self._check(x)
        y, record = backend.ops_for(x).avgpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                                         self.count_include_pad)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).avgpool2d_backward(dy, self.saved(dy).record)


class _AdaptivePool2d(Module):
    """OH x OW windows that tile the image, as torch's adaptive pooling chooses them: window (i, j)
    covers rows floor(i*H/OH) to ceil((i+1)*H/OH) - 1 (and columns likewise)."""

    def __init__(self, output_size):
        super().__init__()
        size = (output_size, output_size) if output_size is None or isinstance(output_size, (int, np.integer)) \
            else tuple(output_size) if isinstance(output_size, (tuple, list)) else ()
        if len(size) != 2 or not all(s is None or (isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                                   and s >= 1) for s in size):
            raise ValueError(f"{type(self).__name__}: output_size must be a positive int or a pair of them "
                             f"(None keeps a size), got {output_size!r}")
        self.output_size = tuple(None if s is None else int(s) for s in size)

    def _size_for(self, x):
        """(OH, OW) for input x, after checking it."""
        check_input(self, x, "(N, C, H, W)", 4)
        return tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(self.output_size))

    def extra_repr(self):
        size = self.output_size
        return f"output_size={size[0] if size[0] == size[1] else size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """The mean of each of OH x OW windows that tile the image, as torch.nn.AdaptiveAvgPool2d.
    AdaptiveAvgPool2d(1) is global average pooling.

    Args: output_size: an int, or a pair (OH, OW) where None keeps the input's size.
    Shape: (N, C, H, W) -> (N, C, OH, OW).
    """

    def forward(self, x):
        y, record = backend.ops_for(x).adaptive_avgpool2d_forward(x, self._size_for(x))
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).adaptive_avgpool2d_backward(dy, self.saved(dy).record)


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """The maximum of each of OH x OW windows that tile the image, as torch.nn.AdaptiveMaxPool2d;
    backward sends each gradient to its window's winner (the first of equal maxima, as torch), adding
    up where windows overlap. AdaptiveMaxPool2d(1) is global max pooling.

    Args: output_size: an int, or a pair (OH, OW) where None keeps the input's size. torch's
        return_indices is accepted at its default, False.
    Shape: (N, C, H, W) -> (N, C, OH, OW).
    """

    def __init__(self, output_size, return_indices=False):
        super().__init__(output_size)
        if return_indices:
            raise ValueError("AdaptiveMaxPool2d: return_indices=True is not supported (a layer here returns one "
                             "array); backward routes the gradient to the winners itself")

    def forward(self, x):
        y, record = backend.ops_for(x).adaptive_maxpool2d_forward(x, self._size_for(x))
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy):
        return backend.ops_for(dy).adaptive_maxpool2d_backward(dy, self.saved(dy).record)
