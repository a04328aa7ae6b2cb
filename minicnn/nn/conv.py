"""2-D convolution as im2col plus one matrix product.

    x    (N, C, H, W)     W  (OC, C, KH, KW)     b (OC,)
    col  (N*OH*OW, C*KH*KW) = im2col(x)
    y    (N, OC, OH, OW)  = (col @ W.reshape(OC, -1).T + b), reshaped
Large inputs are processed a few samples at a time so that col stays within MAX_COL_BYTES.
Backends with their own stride-1 kernels (Numba: conv2d_stride1_forward/backward, see
numba_conv) use them for stride 1, the most common case.
"""
import numpy as np

from .. import backend
from ._checks import check_input, count, pair
from .init import default_bound, uniform
from .module import Module, Parameter

# Column matrices larger than this are built a chunk of samples at a time (and rebuilt in
# backward instead of kept): AnimalNet's second layer alone would need 585 MB at batch 16.
MAX_COL_BYTES = 64 * 2**20


class Conv2d(Module):
    """Cross-correlation of a batch with OC filters, as torch.nn.Conv2d.

    Args:
        in_channels, out_channels: C and OC.
        kernel_size, stride, padding: an int or a pair (height, width); padding is zeros.
        bias: add a learned per-channel offset.
    Shape: (N, C, H, W) -> (N, OC, OH, OW), OH = (H + 2*PH - KH) // SH + 1.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32):
        super().__init__()
        name = f"Conv2d({in_channels}, {out_channels}, kernel_size={kernel_size})"
        self.in_channels = count(in_channels, "in_channels", name)
        self.out_channels = count(out_channels, "out_channels", name)
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = pair(stride, "stride", name, 1)
        self.padding = pair(padding, "padding", name, 0)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = default_bound(fan_in)
        self.weight = Parameter(uniform((out_channels, in_channels) + self.kernel_size, bound, dtype))
        self.bias = Parameter(uniform((out_channels,), bound, dtype)) if bias else None

    def checked_output_size(self, x):
        """Raise a clear error unless x is (N, in_channels, H, W), of the weights' dtype, and at least
        as large as the kernel once padded. Returns (OH, OW)."""
        (KH, KW), (SH, SW), (PH, PW) = self.kernel_size, self.stride, self.padding
        check_input(self, x, f"(N, {self.in_channels}, H, W)", 4, self.in_channels,
                    params_dtype=self.weight.dtype)
        H, W = x.shape[2:]
        if H + 2 * PH < KH or W + 2 * PW < KW:
            raise ValueError(f"{self!r}: kernel {KH}x{KW} is larger than the padded input "
                             f"{H + 2 * PH}x{W + 2 * PW} (input {H}x{W}, padding {PH}x{PW})")
        return (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1

    def forward(self, x):
        (KH, KW), (SH, SW), (PH, PW) = self.kernel_size, self.stride, self.padding
        OH, OW = self.checked_output_size(x)
        N = x.shape[0]
        ops, xp = backend.ops_for(x), backend.xp_for(x)
        if self._uses_stride1_kernels(ops):
            y, stride1 = self.stride1_forward(ops, x)
            self.save_for_backward(y, x_shape=x.shape, stride1=stride1)
            return y
        W_col = self.weight.data.reshape(self.out_channels, -1)     # (OC, C*KH*KW)
        chunk = self._samples_per_chunk(x, OH, OW)
        outputs = []
        for start in range(0, N, chunk):
            col = ops.im2col(x[start:start + chunk], KH, KW, SH, SW, PH, PW)   # (n*OH*OW, C*KH*KW)
            y = ops.matmul(col, W_col.T)                            # (n*OH*OW, OC)
            if hasattr(ops, "rows_to_nchw"):                        # bias and layout in one pass (CUDA)
                bias = None if self.bias is None else self.bias.data
                n = y.shape[0] // (OH * OW)
                outputs.append(ops.rows_to_nchw(y, bias, n, self.out_channels, OH * OW).reshape(n, -1, OH, OW))
                continue
            if self.bias is not None:
                y += self.bias.data
            outputs.append(y.reshape(-1, OH, OW, self.out_channels).transpose(0, 3, 1, 2))
        y = xp.ascontiguousarray(outputs[0] if len(outputs) == 1 else xp.concatenate(outputs))
        # one chunk: keep its col for backward; several: keep x and rebuild each col in backward
        self.save_for_backward(y, x=x, col=col if chunk >= N else None, chunk=chunk, stride1=None)
        return y

    can_skip_input_grad = True

    def backward(self, dy, input_grad=True):
        s = self.saved(dy)
        (KH, KW), (SH, SW), (PH, PW) = self.kernel_size, self.stride, self.padding
        ops, xp = backend.ops_for(dy), backend.xp_for(dy)
        if s.stride1 is not None:
            return self.stride1_backward(ops, dy, s.stride1, s.x_shape, input_grad)
        W_col = self.weight.data.reshape(self.out_channels, -1)
        dW, db, dx_parts = None, None, []
        for start in range(0, dy.shape[0], s.chunk):
            x_part = s.x[start:start + s.chunk]
            col = s.col if s.col is not None else ops.im2col(x_part, KH, KW, SH, SW, PH, PW)
            dW_part, db_part, dcol = ops.conv_backward_gemms(dy[start:start + s.chunk], col, W_col,
                                                             self.bias is not None, input_grad)
            dW, db = _add(dW, dW_part), _add(db, db_part)            # (OC, C*KH*KW), (OC,)
            if input_grad:
                dx_parts.append(ops.col2im(dcol, x_part.shape, KH, KW, SH, SW, PH, PW))
        self.weight.accumulate_grad(dW.reshape(self.weight.shape), owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(db, owned=True)
        if not input_grad:
            return None
        return dx_parts[0] if len(dx_parts) == 1 else xp.concatenate(dx_parts)

    def stride1_forward(self, ops, x, relu_pool=False):
        """The backend's own stride-1 kernels (see numba_conv.conv2d_stride1_forward; relu_pool fuses
        the ReLU and 2x2 max pool that follow, for nn.fused). Returns (y, what backward needs)."""
        bias = None if self.bias is None else self.bias.data
        PH, PW = self.padding
        return ops.conv2d_stride1_forward(x, self.weight.data, bias, PH, PW, MAX_COL_BYTES, relu_pool=relu_pool)

    def stride1_backward(self, ops, dy, stride1, x_shape, input_grad):
        """Gradients through stride1_forward: adds dW and db into the parameters, returns dx or None."""
        PH, PW = self.padding
        dx, dW, db = ops.conv2d_stride1_backward(dy, stride1, self.weight.data, x_shape, PH, PW,
                                                 MAX_COL_BYTES, input_grad)
        self.weight.accumulate_grad(dW, owned=True)
        if self.bias is not None:
            self.bias.accumulate_grad(db, owned=True)
        return dx

    def _uses_stride1_kernels(self, ops):
        return self.stride == (1, 1) and hasattr(ops, "conv2d_stride1_forward")

    def _samples_per_chunk(self, x, OH, OW):
        """How many samples' column matrices fit in MAX_COL_BYTES (at least one)."""
        KH, KW = self.kernel_size
        per_sample = OH * OW * self.in_channels * KH * KW * x.dtype.itemsize
        return max(1, min(x.shape[0], MAX_COL_BYTES // max(per_sample, 1)))

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.bias is None:
            text += ", bias=False"
        return text


def _add(total, part):
    """total + part, where total None means nothing yet (no extra pass over part)."""
    return part if total is None else total + part
