"""Fused steps: runs of layers that a backend's plan runs as one op (backend.contract.plan_chain).

    conv2d_relu_maxpool2d   Conv2d (stride 1) -> ReLU -> MaxPool2d(2), the last two in either order:
                            x (N, C, H, W) -> y (N, OC, OH//2, OW//2)
    batchnorm_relu          BatchNorm1d/2d -> ReLU (with batch statistics; in eval mode the two
                            layers run one after the other): shape unchanged
    conv2d_batchnorm        Conv2d -> BatchNorm2d (-> ReLU): in inference one op that normalizes the
                            convolution's output as it writes it; otherwise the layers (the last
                            two as batchnorm_relu). As a residual block's last step (sum_forward)
                            it adds the skip and applies the block's ReLU as the batch norm writes,
                            in inference and in training (then sum_backward returns the sum's
                            gradient with the batch norm's): x (N, C, H, W) -> y (N, OC, OH, OW)

A fused step holds the layers it stands for (not as children: they belong to the model, which
keeps their parameters and state_dict names) and runs the backend's fused op with their
parameters. The backend decides whether to fuse, and how the fused op computes: on Numba each
output plane of the convolution is pooled and rectified while it is still in the cache, so the
full-size activation is never written to memory nor read back.
"""
from .. import backend
from .batchnorm import BatchNorm2d
from .module import Module, is_grad_enabled


class _FusedStep(Module):
    """A step standing for layers it holds but does not own (self.layers; ConvBatchNorm's `after`)."""

    def learns(self):
        return any(layer.learns() for layer in self.layers)

    def skip_backward(self):
        super().skip_backward()
        for layer in (*self.layers, getattr(self, "after", None)):
            if layer is not None:
                layer.skip_backward()


class ConvReLUPool(_FusedStep):
    """The conv2d_relu_maxpool2d step. Args: the three layers, in any order (they are told apart by
    kind). Shape: (N, C, H, W) -> (N, OC, OH//2, OW//2)."""
    can_skip_input_grad = True

    def __init__(self, *layers):
        super().__init__()
        by_kind = {layer.kind[0]: layer for layer in layers}
        object.__setattr__(self, "layers", (by_kind["conv2d"], by_kind["relu"], by_kind["maxpool2d"]))

    def forward(self, x):
        conv, relu, pool = self.layers
        OH, OW = conv.checked_output_size(x)
        if is_grad_enabled():                        # their own backward must not reuse stale state
            for layer in self.layers:
                object.__setattr__(layer, "_saved", None)
        if OH < 2 or OW < 2:                         # let the pool raise its error
            return pool(relu(conv(x)))
        y, record = backend.ops_for(x).conv2d_relu_maxpool2d_forward(x, conv.weight.data, conv.bias_data(),
                                                                    conv.padding)
        self.save_for_backward(y, record=record)
        return y

    def backward(self, dy, input_grad=True):
        record = self.saved(dy).record
        conv = self.layers[0]
        dx, dw, db = backend.ops_for(dy).conv2d_relu_maxpool2d_backward(dy, record, conv.weight.data, input_grad)
        conv.add_grads(dw, db)
        return dx

    def __repr__(self):
        return "ConvReLUPool(" + ", ".join(repr(layer) for layer in self.layers) + ")"


class BatchNormReLU(_FusedStep):
    """The batchnorm_relu step. Args: a BatchNorm1d/2d and a ReLU. Shape: unchanged."""

    def __init__(self, *layers):
        super().__init__()
        by_kind = {layer.kind[0]: layer for layer in layers}
        object.__setattr__(self, "layers", (by_kind["batchnorm"], by_kind["relu"]))

    def forward(self, x):
        norm, relu = self.layers
        if is_grad_enabled():
            for layer in self.layers:
                object.__setattr__(layer, "_saved", None)
        if not norm.uses_batch_statistics:               # running statistics: nothing to gain, run the two
            self.save_for_backward(x, fused=False)
            return relu(norm(x))
        y, record = norm.normalize(x, relu=True)
        self.save_for_backward(y, record=record, fused=True)
        return y

    def backward(self, dy):
        norm, relu = self.layers
        saved = self.__dict__.get("_saved")
        if saved is not None and not saved.fused:
            return norm.backward(relu.backward(dy))
        return norm.backpropagate(dy, self.saved(dy).record, batch_stats=True, relu=True)

    def __repr__(self):
        return "BatchNormReLU(" + ", ".join(repr(layer) for layer in self.layers) + ")"


class ConvBatchNorm(_FusedStep):
    """The conv2d_batchnorm step. Args: a Conv2d, the batch norm after it and, when the plan adds it,
    the ReLU after that. Inference (no_grad, the batch norm on its running statistics) is one op,
    conv2d_batchnorm_eval; otherwise the convolution runs, then the batch norm (with the ReLU as a
    batchnorm_relu step): the layers as the plan runs them without this step. Shape: the
    convolution's."""
    can_skip_input_grad = True

    def __init__(self, *layers):
        super().__init__()
        after = BatchNormReLU(*layers[1:]) if len(layers) == 3 else layers[1]
        object.__setattr__(self, "layers", tuple(layers))
        object.__setattr__(self, "after", after)            # not a child: the model owns the layers

    def forward(self, x):
        conv, norm = self.layers[:2]
        if is_grad_enabled() or not self._normalizes_as_one_op(norm, x):
            return self.after(conv(x))
        conv.checked_output_size(x)
        return self._one_op(x, relu=len(self.layers) == 3, residual=None)

    def sum_forward(self, x, residual, relu):
        """relu(this step's output + residual) (without relu, the sum) with the sum and ReLU done as
        the batch norm writes its output: in training (batch statistics) by the batch norm's op with
        the sum (sum_backward then returns the sum's gradient too), in inference by the one op; None
        where this step cannot take them (a ReLU of its own, a batch norm that does not run as one op
        with it, a residual of another shape or dtype)."""
        conv, norm = self.layers[:2]
        if len(self.layers) == 3 or residual.dtype != x.dtype \
                or tuple(residual.shape) != (len(x), conv.out_channels, *conv.checked_output_size(x)):
            return None
        if type(norm) is BatchNorm2d and norm.uses_batch_statistics and norm.num_features == conv.out_channels:
            if is_grad_enabled():                   # its own backward must not reuse stale state
                object.__setattr__(norm, "_saved", None)
            y, record = norm.normalize(conv(x), relu=relu, residual=residual)
            self.save_for_backward(y, record=record)
            return y
        if is_grad_enabled() or not self._normalizes_as_one_op(norm, x):
            return None
        return self._one_op(x, relu=relu, residual=residual)

    def sum_backward(self, dy, input_grad=True):
        """(dx, the sum's gradient) for a training sum_forward: the batch norm's backward gives its
        input's gradient and the sum's (dy through the ReLU), which the residual block's skip gets."""
        conv, norm = self.layers[:2]
        dh, dsum = norm.backpropagate(dy, self.saved(dy).record, batch_stats=True, summed=True)
        return conv.backward(dh, input_grad), dsum

    def _one_op(self, x, relu, residual):
        conv, norm = self.layers[:2]
        ops = backend.ops_for(x)
        gamma, beta = norm._params(ops, x.dtype)
        return ops.conv2d_batchnorm_eval(x, conv.weight.data, conv.bias_data(), conv.stride, conv.padding,
                                         conv.dilation, conv.groups, norm.running_mean, norm.running_var, norm.eps,
                                         gamma, beta, relu, residual)

    def _normalizes_as_one_op(self, norm, x):
        """A BatchNorm2d on running statistics that fits the convolution's output (else the layers
        run one by one, and the one that does not fit says why)."""
        return (type(norm) is BatchNorm2d and not norm.uses_batch_statistics
                and norm.num_features == self.layers[0].out_channels
                and norm.running_mean.dtype == x.dtype and (not norm.affine or norm.weight.dtype == x.dtype))

    def backward(self, dy, input_grad=True):
        return self.layers[0].backward(self.after.backward(dy), input_grad)

    def __repr__(self):
        return "ConvBatchNorm(" + ", ".join(repr(layer) for layer in self.layers) + ")"


FUSED_STEPS = {"conv2d_relu_maxpool2d": ConvReLUPool, "batchnorm_relu": BatchNormReLU,
               "conv2d_batchnorm": ConvBatchNorm}
