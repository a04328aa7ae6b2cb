"""The backend contract: every op that layers, optimizers and fit may call, declared once.

A backend is a module (numpy_ops, the readable reference; numba_ops; cupy_ops) that defines every
op below with exactly these parameters, plus the ATTRIBUTES, and no other public name: it is
checked when the backend loads (backend.check_backend) and by tests/test_contract.py. A backend
with nothing faster for an op names the reference's function for it (``relu_forward =
numpy_ops.relu_forward``); that line is the whole cost of the op there.

Conventions, for every op:
- ``*_forward`` returns ``(output, record)``. The record is what the matching ``*_backward``
  needs; it is opaque: only the backend that made it reads it, a layer only hands it back.
- Shapes use the letters N batch, C channels, H/W height/width, OC output channels, KH/KW kernel,
  SH/SW stride, PH/PW padding, OH/OW output size, K classes, L values per channel. A geometry
  argument is a pair: ``kernel_size=(KH, KW)``, ``stride=(SH, SW)``, ``padding=(PH, PW)``.
- Floating arrays are float32 or float64 and every result keeps their dtype. Inputs are never
  written to. Gradients come back as fresh arrays the caller may keep.
- How a backend computes (which algorithm, how many threads, which kernels) is its own business:
  the choice is made inside the op, in one place per backend.
- A backend may finish a parameter gradient in the background, on threads that would otherwise
  wait, where the caller allows it (conv2d_backward's dw_may_wait=True: Conv2d hands dw straight to
  Parameter.accumulate_grad, which does not read it): it is final once settle() has returned (every
  read of a Parameter's .grad settles first), and until then the op's inputs and record must stay
  unchanged. Without the caller's leave every gradient comes back final.

The stubs below document the ops; their bodies are never run.
"""
import inspect

ATTRIBUTES = {
    "name": "the backend's name: 'numpy', 'numba' or 'cupy'",
    "xp": "the array module of its arrays (numpy or cupy), for allocations and plain array arithmetic",
    "host_read_interval": "how many training steps fit may run before it reads the running loss on the "
                          "host (each read waits for the device; 1 on the CPU)",
}


# ---------------------------------------------------------------- matrix products and convolution

def matmul(a, b):
    """a (M, K) @ b (K, N) -> (M, N) in their dtype; either may be a transposed view."""


def im2col(x, kernel_size, stride, padding, dilation):
    """x (N, C, H, W) -> col (N*OH*OW, C*KH*KW): one row per output pixel holding the window it
    sees (zeros in the padding), rows in (n, oh, ow) order, columns in (c, kh, kw) order; tap
    (kh, kw) of output (oh, ow) reads input (oh*SH - PH + kh*DH, ow*SW - PW + kw*DW)."""


def col2im(col, x_shape, kernel_size, stride, padding, dilation):
    """The adjoint of im2col: col (N*OH*OW, C*KH*KW) -> (N, C, H, W), overlapping windows summed."""


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """Cross-correlation, as torch.nn.functional.conv2d: x (N, C, H, W), w (OC, C // groups, KH, KW),
    b (OC,) or None -> y (N, OC, OH, OW), OH = (H + 2*PH - DH*(KH - 1) - 1) // SH + 1. With groups G
    the channels split into G groups: output channels [g*OC/G, (g+1)*OC/G) see input channels
    [g*C/G, (g+1)*C/G) only (depthwise when G = C). Returns (y, record)."""


def conv2d_backward(dy, record, w, input_grad, dw_may_wait):
    """Gradients of conv2d_forward for dy (N, OC, OH, OW) and the same w: (dx (N, C, H, W) or None
    when not input_grad, dw (OC, C, KH, KW), db (OC,) or None when forward had no bias). With
    dw_may_wait, dw may still be being summed when the op returns: final after settle()."""


def conv2d_relu_maxpool2d_forward(x, w, b, padding):
    """maxpool2d(relu(conv2d(x, w, b, stride 1, padding)), 2x2 windows, stride 2): the three
    layers as one step, with their results. x (N, C, H, W) -> y (N, OC, OH//2, OW//2), where the
    convolution's output OH, OW is at least 2x2. Returns (y, record)."""


def conv2d_relu_maxpool2d_backward(dy, record, w, input_grad):
    """Gradients of conv2d_relu_maxpool2d_forward: (dx or None, dw, db or None), as conv2d_backward."""


# ---------------------------------------------------------------- pooling

def conv2d_batchnorm_eval(x, w, b, stride, padding, dilation, groups, mean, var, eps, gamma, beta, relu, residual):
    """Inference through a convolution, the batch norm after it on its running statistics (mean,
    var (OC,)), when residual is an array (of y's shape) its sum with it, and when relu a ReLU:
    y (N, OC, OH, OW), the bits of conv2d_forward, batchnorm_forward_eval, add and relu_forward
    one after the other (a residual block's last convolution, its sum and ReLU); where x holds inf
    or NaN, NaN and inf where those give them (and torch), the finite values up to rounding (a
    backend may sum them in another order). No record: nothing backpropagates."""


def maxpool2d_forward(x, kernel_size, stride, padding):
    """The maximum of each window, padding counted as -inf, as torch: x (N, C, H, W) -> y (N, C,
    OH, OW). The winner of a window is its first maximum, or its last NaN. Returns (y, record)."""


def maxpool2d_backward(dy, record):
    """dy (N, C, OH, OW) -> dx (N, C, H, W): each gradient goes to its window's winner; pixels that
    win several windows add them."""


def avgpool2d_forward(x, kernel_size, stride, padding, count_include_pad):
    """The mean of each window, as torch.nn.AvgPool2d: divided by KH*KW, or without
    count_include_pad by the number of the window's pixels inside the image. Returns (y, record)."""


def avgpool2d_backward(dy, record):
    """dy (N, C, OH, OW) -> dx (N, C, H, W): each gradient shared out over its window."""


def adaptive_avgpool2d_forward(x, output_size):
    """The mean of each of OH x OW windows tiling the image as torch.nn.AdaptiveAvgPool2d does:
    window (i, j) covers rows floor(i*H/OH) to ceil((i+1)*H/OH) - 1 (columns likewise), so windows
    may overlap or differ in size; output_size (1, 1) is global average pooling. x (N, C, H, W) ->
    y (N, C, OH, OW). Returns (y, record)."""


def adaptive_avgpool2d_backward(dy, record):
    """dy (N, C, OH, OW) -> dx (N, C, H, W): each gradient shared out evenly over its window."""


def adaptive_maxpool2d_forward(x, output_size):
    """The maximum of each of adaptive_avgpool2d_forward's windows (torch.nn.AdaptiveMaxPool2d), the
    first of equal maxima winning. x (N, C, H, W) -> y (N, C, OH, OW). Returns (y, record)."""


def adaptive_maxpool2d_backward(dy, record):
    """dy (N, C, OH, OW) -> dx (N, C, H, W): each gradient to its window's winner, summed where
    windows overlap."""


def scale_channels(x, scale):
    """x (N, C, H, W) times scale (N, C, 1, 1): each plane multiplied by its own factor (the gate of a
    squeeze-and-excitation block). Returns y, a fresh array of x's shape."""


def scale_channels_backward(dy, x, scale):
    """Gradients of scale_channels: (dx = dy * scale, dscale = the sum over each plane of dy * x,
    shape (N, C, 1, 1))."""


# ---------------------------------------------------------------- batch normalization

def batchnorm_forward_train(x3, gamma, beta, eps):
    """Normalize x3 (N, C, L) by its own per-channel mean and biased variance, then scale by gamma
    (C,) and shift by beta (C,). Returns (y3 (N, C, L), mean (C,), var (C,) biased, record)."""


def batchnorm_backward_train(dy3, record, gamma):
    """Gradients of batchnorm_forward_train, the batch statistics depending on x too:
    (dx3 (N, C, L), dgamma (C,), dbeta (C,))."""


def batchnorm_relu_forward_train(x3, gamma, beta, eps):
    """relu(batchnorm_forward_train(x3, ...)): the batch norm and the ReLU after it as one step, with
    their results (a backend computes the ReLU as it writes the output). Returns (y3, mean, var,
    record) as batchnorm_forward_train, y3 rectified."""


def batchnorm_relu_backward_train(dy3, record, gamma):
    """Gradients of batchnorm_relu_forward_train: (dx3, dgamma, dbeta)."""


def batchnorm_add_relu_forward_train(x3, gamma, beta, eps, residual3, relu):
    """batchnorm_forward_train(x3, ...) + residual3 (N, C, L), then, when relu, a ReLU: a residual
    block's last batch norm with the block's sum (and ReLU) as one step, the bits of
    batchnorm_forward_train, add and relu_forward one after another. Returns (y3, mean, var,
    record) as batchnorm_forward_train; a residual3 of another shape or dtype raises ValueError."""


def batchnorm_add_relu_backward_train(dy3, record, gamma):
    """Gradients of batchnorm_add_relu_forward_train: (dx3, dgamma, dbeta, dsum3), dsum3 (N, C, L)
    the gradient of the sum (dy3 through the ReLU, dy3's values without one), which the block's
    skip receives."""


def batchnorm_forward_eval(x3, mean, var, eps, gamma, beta, keep_record):
    """Normalize x3 (N, C, L) by given statistics (the running ones): y = (x - mean) /
    sqrt(var + eps) * gamma + beta, computed as (x - mean) * invstd * gamma + beta. Returns (y3,
    record), the record None unless keep_record (a backward will follow)."""


def batchnorm_backward_eval(dy3, record, gamma):
    """Gradients of batchnorm_forward_eval, the statistics being constants: (dx3, dgamma, dbeta)."""


def group_norm_forward(x4, gamma, beta, eps):
    """Normalize x4 (N, G, C/G, L) over each sample's group, axes 2 and 3 (torch.nn.GroupNorm: mean and
    biased variance), then scale by gamma (C,) and shift by beta (C,) per channel. Returns (y4, record)."""


def group_norm_backward(dy4, record, gamma):
    """Gradients of group_norm_forward: (dx4, dgamma (C,), dbeta (C,))."""


# ---------------------------------------------------------------- activations

def relu_forward(x):
    """max(x, 0) elementwise, NaN kept (torch's rule). Returns (y, record)."""


def relu_backward(dy, record):
    """dy (shape of x) where x > 0 (and where x is NaN), else 0."""


def add(a, b):
    """a + b elementwise, a and b of one shape and dtype (a residual sum, and its gradients' sum):
    a fresh array. Other shapes or dtypes raise ValueError (no broadcasting)."""


def add_relu_forward(a, b):
    """relu(a + b) as one step (a residual block's sum and the ReLU after it), NaN kept: returns
    (y, record), the record being relu_forward's (relu_backward takes it)."""


def leaky_relu_forward(x, negative_slope):
    """x where x > 0, else negative_slope * x. Returns (y, record)."""


def leaky_relu_backward(dy, record):
    """dy (shape of x) where x > 0, else negative_slope * dy."""


def sigmoid_forward(x):
    """1 / (1 + exp(-x)), never overflowing for large |x|. Returns (y, record)."""


def sigmoid_backward(dy, record):
    """dy * y * (1 - y), y = sigmoid(x) from the record; shape of x."""


def tanh_forward(x):
    """tanh(x) elementwise, any shape. Returns (y, record)."""


def tanh_backward(dy, record):
    """dy * (1 - y * y), y = tanh(x) from the record; shape of x."""


def silu_forward(x):
    """x * sigmoid(x) elementwise (torch.nn.SiLU), any shape. Returns (y, record)."""


def silu_backward(dy, record):
    """dy * s * (1 + x * (1 - s)), s = sigmoid(x); shape of x."""


def gelu_forward(x, approximate):
    """x * Phi(x) elementwise (torch.nn.GELU): approximate 'none' with Phi(x) = (1 + erf(x / sqrt(2))) / 2,
    'tanh' with Phi(x) = (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))) / 2. Returns (y, record)."""


def gelu_backward(dy, record):
    """dy * d/dx (x * Phi(x)), by torch's formula for the forward's approximation; shape of x."""


def hardtanh_forward(x, min_val, max_val):
    """x clamped to [min_val, max_val] elementwise (torch.nn.Hardtanh; ReLU6 is (0, 6)), NaN kept.
    Returns (y, record)."""


def hardtanh_backward(dy, record):
    """dy where min_val < x < max_val, else 0: torch's rule (0 at both ends; at NaN, 0 here, torch's
    vector and scalar loops differ)."""


def hardsigmoid_forward(x):
    """min(max(x + 3, 0), 6) / 6 elementwise (torch.nn.Hardsigmoid). Returns (y, record)."""


def hardsigmoid_backward(dy, record):
    """dy * (1/6) where -3 < x < 3, else 0 (torch's rule: 0 at both ends; its 1/6 rounded to float32 in
    float64 too); shape of x."""


def hardswish_forward(x):
    """x * min(max(x + 3, 0), 6) / 6 elementwise (torch.nn.Hardswish). Returns (y, record)."""


def hardswish_backward(dy, record):
    """0 where x <= -3, dy where x >= 3, else dy * (x / 3 + 1/2): torch's rule at the ends (at NaN, NaN
    here; torch's vector and scalar loops differ)."""


# ---------------------------------------------------------------- dropout

def dropout_forward(x, p, rng, cache):
    """Inverted dropout in training: each element zeroed with probability p, the others scaled by
    1 / (1 - p). rng is a numpy Generator the mask is drawn from (on the GPU: seeded from it once);
    cache is a dict the calling layer owns, where a backend may keep generator state between calls.
    Returns (y, record)."""


def dropout_backward(dy, record):
    """dy times forward's mask (0 or 1 / (1 - p)); shape of x."""


def channel_dropout_forward(x, p, rng, cache):
    """dropout_forward with one draw per channel of each sample (torch.nn.Dropout2d): x (N, C, H, W)
    times a mask (N, C, 1, 1). Returns (y, record); dropout_backward takes the record."""


# ---------------------------------------------------------------- softmax cross-entropy

def log_softmax(logits):
    """Row-wise log-softmax of logits (N, K), shifted by each row's maximum so nothing overflows."""


def softmax_forward(x, dim):
    """exp(x) / sum(exp(x)) along axis dim (torch.nn.Softmax), shifted by the maximum along it so
    nothing overflows. Returns (y, record)."""


def softmax_backward(dy, record):
    """y * (dy - sum(dy * y) along dim); shape of x."""


def log_softmax_forward(x, dim):
    """(x - max) - log(sum(exp(x - max))) along axis dim (torch.nn.LogSoftmax). Returns (y, record)."""


def log_softmax_backward(dy, record):
    """dy - exp(y) * sum(dy) along dim; shape of x."""


def nll_loss_forward(logp, labels):
    """Per-sample losses -logp[i, labels[i]] of log-probabilities logp (N, K) (torch.nn.NLLLoss); a
    label outside [0, K) raises ValueError naming it. Returns (losses (N,), record)."""


def nll_loss_backward(record, scale):
    """dL/dlogp (N, K): -scale at each sample's label, 0 elsewhere; scale a number (1/N for a mean, 1
    for a sum) or per sample (N, 1)."""


def softmax_cross_entropy_forward(logits, labels, label_smoothing):
    """Per-sample cross-entropy of logits (N, K) against integer labels (N,) in [0, K), with target
    (1 - e) * onehot + e / K for smoothing e, as torch. Raises ValueError('labels must be in [0, K)
    ...') for a label out of range (a device may report it at its next call or at
    raise_pending_errors instead). Returns (losses (N,), record)."""


def softmax_cross_entropy_backward(record, scale):
    """dL/dlogits (N, K) = scale * (softmax - target); scale a number (1/N for a mean, 1 for a sum)
    or an (N, 1) array of per-sample factors."""


def settle():
    """Wait until every array an op has returned is final (see the conventions above), then raise
    the first error the background work met, if any. Cheap when nothing is pending."""


def raise_pending_errors():
    """Raise what the device found since the last call without making the host wait at the time
    (labels out of range on the GPU); nothing on the CPU."""


# ---------------------------------------------------------------- optimizer steps, a list of arrays at a time

def sgd_update(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first):
    """One torch.optim.SGD step for each array of params (lists of equal length, one dtype), in
    place, in torch's order of operations:
        g = grad + weight_decay * p;  buf = g if first else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf    (only with momentum);   p = p - lr * g
    bufs are the momentum buffers (written when first; ignored without momentum)."""


def adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lr, beta1, beta2, eps, weight_decay,
                step, decoupled, amsgrad):
    """One torch.optim.Adam (AdamW when decoupled) step for each array of params, all at the same
    step count (already advanced), in torch's order of operations:
        g = grad + weight_decay * p (Adam)   or   p = p * (1 - lr * weight_decay) (AdamW)
        m = m + (1 - beta1) * (g - m);   v = beta2 * v + (1 - beta2) * g * g;   vmax = max(vmax, v)
        p = p - lr / (1 - beta1**step) * m / (sqrt(v or vmax) / sqrt(1 - beta2**step) + eps)
    max_exp_avg_sqs is used only with amsgrad."""


# ---------------------------------------------------------------- running a chain of layers

def plan_chain(kinds):
    """How this backend runs a chain of layers (a Sequential): kinds is the tuple of each layer's
    ``kind`` (a tuple such as ('conv2d', stride, dilation, groups), ('relu',), ('batchnorm',),
    ('maxpool2d', kernel_size, stride, padding), or None for a layer the backend knows nothing
    about). Returns a ChainPlan: the steps
    in the order they run, each a fused op's name (or None) and the layer indices it covers, and
    the batch size inference may be cut into. Called before every forward of a chain (a chain
    reuses its steps while the plan stays the same): it must be cheap, and may change with the
    backend's settings (Numba's strategy)."""


def pass_scope():
    """A context manager a whole forward or backward pass of a chain of layers runs in: where a
    backend sets up what its ops share (on Numba, NumPy's BLAS held to one thread beside minicnn's)."""


def captured_step(model, loss_fn, optimizer):
    """A callable step(x, y) -> (loss, logits) that runs forward, loss, backward and optimizer step
    as one captured device graph, replayed every call; backends without graphs raise ValueError."""


OPS = {name: value for name, value in list(globals().items())
       if inspect.isfunction(value) and not name.startswith("_")}


def signature(name):
    """The declared parameters of op ``name``."""
    return inspect.signature(OPS[name])


def problems(module):
    """What keeps ``module`` from meeting the contract: missing or extra public names, ops whose
    parameters differ from the declaration, missing attributes. An empty list when it meets it."""
    found = []
    public = {name for name in vars(module) if not name.startswith("_")}
    for name in OPS:
        op = getattr(module, name, None)
        if op is None:
            found.append(f"missing op {name}{signature(name)}")
        elif not callable(op):
            found.append(f"{name} is not callable")
        else:
            try:
                theirs = inspect.signature(op)
            except (TypeError, ValueError):          # a compiled function without one: take it on trust
                continue
            if list(theirs.parameters) != list(signature(name).parameters):
                found.append(f"{name}{theirs} should be {name}{signature(name)}")
    for name in ATTRIBUTES:
        if name not in public:
            found.append(f"missing attribute {name!r} ({ATTRIBUTES[name]})")
    extra = sorted(public - set(OPS) - set(ATTRIBUTES) - _not_ops(module))
    if extra:
        found.append("public names outside the contract (make them private with a leading _): " + ", ".join(extra))
    return found


def _not_ops(module):
    """Names a backend may hold besides its ops: imported modules and the ChainPlan type."""
    return {name for name, value in vars(module).items() if inspect.ismodule(value) or value is ChainPlan}


class ChainPlan:
    """What plan_chain returns.

    steps: tuple of (fused op name or None, tuple of layer indices), in the order they run; None
        runs the one layer itself, a fused name ('conv2d_relu_maxpool2d', 'batchnorm_relu') the
        layers as one, through that fused op.
    inference_chunk: inference (eval mode, no_grad) may run a large batch this many samples at a
        time, each sample's result being independent of the others there; 0 means whole batches.
    """
    __slots__ = ("steps", "inference_chunk")

    def __init__(self, steps, inference_chunk=0):
        self.steps, self.inference_chunk = tuple(steps), int(inference_chunk)

    def __repr__(self):
        return f"ChainPlan(steps={self.steps}, inference_chunk={self.inference_chunk})"

    def __eq__(self, other):
        return isinstance(other, ChainPlan) and (self.steps, self.inference_chunk) == (other.steps,
                                                                                     other.inference_chunk)

    def __hash__(self):
        return hash((self.steps, self.inference_chunk))
