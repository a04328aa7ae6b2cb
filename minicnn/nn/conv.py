"""2-D convolution, as torch.nn.Conv2d.

    x (N, C, H, W)   W (OC, C/G, KH, KW)   b (OC,)   ->   y (N, OC, OH, OW)
    OH = (H + 2*PH - DH*(KH - 1) - 1) // SH + 1
    y[n, o, i, j] = b[o] + sum over c, kh, kw of W[o, c, kh, kw] * xpad[n, g*C/G + c, i*SH + kh*DH, j*SW + kw*DW]
with g = o // (OC/G) the group of output channel o (G = groups: 1, or in_channels for a depthwise
convolution) and D the dilation. The backend computes it (ops.conv2d_forward / conv2d_backward):
the reference by im2col and one matrix product per group (backend/im2col_conv.py), Numba by
whichever algorithm suits the shapes.
"""
import numpy as np

from .. import backend
from ._checks import check_input, count, pair
from .init import default_bound, uniform
from .module import Module, Parameter, place_on


class Conv2d(Module):
    """Cross-correlation of a batch with OC filters, as torch.nn.Conv2d.

    Args:
        in_channels, out_channels: C and OC.
        kernel_size, stride, dilation: an int or a pair (height, width).
        padding: an int or a pair of zero borders, or 'valid' (none) or 'same' (the output as large
            as the input; stride 1, and an odd dilated kernel, so that the borders are equal).
        groups: split the channels into this many groups, each convolved with its own filters
            (in_channels for a depthwise convolution); it must divide both channel counts.
        bias: add a learned per-channel offset.
        padding_mode: 'zeros' (torch's other modes are not supported).
        device: None or 'cpu' (the default), or 'cuda' to create the layer on the GPU.
        dtype: np.float32 (default) or np.float64.
    Shape: (N, C, H, W) -> (N, OC, OH, OW), OH = (H + 2*PH - DH*(KH - 1) - 1) // SH + 1.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=np.float32):
        super().__init__()
        name = f"Conv2d({in_channels}, {out_channels}, kernel_size={kernel_size})"
        self.in_channels = count(in_channels, "in_channels", name)
        self.out_channels = count(out_channels, "out_channels", name)
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = pair(stride, "stride", name, 1)
        self.dilation = pair(dilation, "dilation", name, 1)
        self.groups = count(groups, "groups", name)
        if in_channels % self.groups or out_channels % self.groups:
            raise ValueError(f"{name}: groups={groups} must divide in_channels ({in_channels}) and "
                             f"out_channels ({out_channels})")
        if padding_mode != "zeros":
            raise ValueError(f"{name}: padding_mode={padding_mode!r} is not supported, only 'zeros'")
        self.padding = self._padding(padding, name)
        fan_in = in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        bound = default_bound(fan_in)
        shape = (out_channels, in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(uniform(shape, bound, dtype))
        self.bias = Parameter(uniform((out_channels,), bound, dtype)) if bias else None
        place_on(self, device)

    def _padding(self, padding, name):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            spans = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
            if self.stride != (1, 1) or any(span % 2 for span in spans):
                raise ValueError(f"{name}: padding='same' needs stride 1 and an odd (dilated) kernel here "
                                 f"(equal borders on both sides); give the padding as numbers")
            return tuple(span // 2 for span in spans)
        if isinstance(padding, str):
            raise ValueError(f"{name}: padding must be a number, a pair, 'valid' or 'same', got {padding!r}")
        return pair(padding, "padding", name, 0)

    def checked_output_size(self, x):
        """Raise a clear error unless x is (N, in_channels, H, W), of the weights' dtype, and at least
        as large as the (dilated) kernel once padded. Returns (OH, OW)."""
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = self.kernel_size, self.stride, self.padding, self.dilation
        check_input(self, x, f"(N, {self.in_channels}, H, W)", 4, self.in_channels,
                    params_dtype=self.weight.dtype)
        H, W = x.shape[2:]
        span_h, span_w = DH * (KH - 1) + 1, DW * (KW - 1) + 1
        if H + 2 * PH < span_h or W + 2 * PW < span_w:
            dilated = f" (dilated to {span_h}x{span_w})" if (DH, DW) != (1, 1) else ""
            raise ValueError(f"{self!r}: kernel {KH}x{KW}{dilated} is larger than the padded input "
                             f"{H + 2 * PH}x{W + 2 * PW} (input {H}x{W}, padding {PH}x{PW})")
        return (H + 2 * PH - span_h) // SH + 1, (W + 2 * PW - span_w) // SW + 1

    @property
    def kind(self):
        """('conv2d', stride, dilation, groups) for a backend's chain plan; None for subclasses (their
        forward stays)."""
        return ("conv2d", self.stride, self.dilation, self.groups) if type(self) is Conv2d else None

    def forward(self, x):
        self.checked_output_size(x)
        y, record = backend.ops_for(x).conv2d_forward(x, self.weight.data, self.bias_data(), self.stride, self.padding,
                                                      self.dilation, self.groups)
        self.save_for_backward(y, record=record)
        return y

    can_skip_input_grad = True

    def backward(self, dy, input_grad=True):
        """Adds dW and db into the parameters' .grad; returns dx (None when not input_grad)."""
        record = self.saved(dy).record
        # dw goes straight to accumulate_grad, which keeps it unread: the backend may finish it later
        dx, dw, db = backend.ops_for(dy).conv2d_backward(dy, record, self.weight.data, input_grad, True)
        self.add_grads(dw, db)
        return dx

    def bias_data(self):
        return None if self.bias is None else self.bias.data

    def add_grads(self, dw, db):
        """Add the backend's fresh gradients into .grad (for this layer's backward and fused steps)."""
        self.weight.accumulate_grad(dw, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(db, owned=True)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text
