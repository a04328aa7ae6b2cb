"""How the Numba backend chooses: every algorithm choice and work-splitting budget in one object,
and the one function that picks a convolution's algorithms from it.

    from minicnn.backend import numba_strategy
    with numba_strategy.use(direct_max_channels=0, winograd=False):   # tests force a path this way
        ...
The defaults come from measurements on the project's 2-core machines (benchmarks/history.md,
"Numba strategy"); each field says in a line why it is what it is.
"""
import contextlib
import dataclasses

from .simd import LANES


@dataclasses.dataclass(frozen=True)
class Strategy:
    # ---- which algorithm a convolution takes (conv_algorithms below)
    own_kernels: bool = True                # False: every convolution by im2col (the reference path, for comparison)
    strided_gemm: bool = True               # strides and dilations by the rows GEMM on the cores (im2col: one thread)
    pointwise_gemm: bool = True             # 1x1, no padding: x's planes (at a stride, its pixels') are the GEMM's rows
    blocked_pointwise_min: int = 2**20      # and by the register-blocked sums from this many C*OC*pixels a sample (BLAS below)
    depthwise_kernels: bool = True          # one filter per channel summed directly: no tiny GEMM per channel
    direct_max_channels: int = 3            # direct sums both ways up to here: im2col is all overhead for so few
    direct_forward_max_channels: int = 12   # direct forward (widths 3 and 5) up to here, then GEMMs win
    blocked_max_channels: int = 64          # 3x3 at stride 1 or 2 up to here by register-blocked sums
    blocked_relu_pool: bool = True          # and fused with ReLU and pool (else Winograd's fused forward)
    winograd: bool = True                   # 3x3 with more channels by F(2x2, 3x3): 2.25x fewer multiplies
    sparse_min_kernel_width: int = 5        # fused backward from the pool's winners for widths 5..LANES
    fuse_conv_relu_pool: bool = True        # conv + ReLU + 2x2 pool as one step: no full-size activation
    fuse_batchnorm_relu: bool = True        # batch norm + ReLU as one step: no pass, no array for the ReLU
    fuse_conv_batchnorm: bool = True        # conv + batch norm (+ ReLU): inference normalizes as the blocked sums crop;
                                            # as a residual block's last step, the batch norm adds the skip (training too)
    defer_weight_grad_max_bytes: int = 2**24  # blocked dw left to idle threads (cores.defer) up to this much of a
                                            # layer's backward data: past it, re-read from memory, they cost more
    # ---- how work is cut (chunks depend on the shapes only, never on the thread count)
    min_tasks: int = 4                      # a layer in at least this many equal tasks: 2 threads end together
    direct_max_chunk: int = 32              # samples per task of the direct sums
    rows_chunk_bytes: int = 2**20           # a wide-GEMM task's rows stay in L2
    winograd_chunk_bytes: int = 2**20       # a Winograd task's transformed tiles stay in L2
    max_col_bytes: int = 64 * 2**20         # im2col (strided convolutions) a chunk of samples at a time past this
    split_bytes: int = 2**18                # pooling and batch norm on the cores from this size (a handover costs 20-50 us)
    batchnorm_short_row: int = 128          # batch norm's forward passes sample by sample below this row length
    matmul_task_flops: int = 2**23          # a matrix product in tasks of about 70 us of one core
    matmul_max_tasks: int = 8
    sgd_part: int = 2**17                   # a parameter this large is updated in parts on the cores
    scratch_keep_bytes: int = 2**25         # per-thread scratch kept between calls up to this size a role


_current = Strategy()


def current():
    """The strategy in force."""
    return _current


def set_current(strategy):
    """Put a Strategy in force; returns the one it replaces."""
    global _current
    if not isinstance(strategy, Strategy):
        raise TypeError(f"numba_strategy.set_current: expected a Strategy, got {type(strategy).__name__}")
    previous, _current = _current, strategy
    return previous


@contextlib.contextmanager
def use(**changes):
    """Run a block with some fields of the strategy changed (tests pin an algorithm this way)."""
    previous = set_current(dataclasses.replace(_current, **changes))
    try:
        yield _current
    finally:
        set_current(previous)


def conv_algorithms(C, w_shape, stride, padding, dilation, groups, fused):
    """(forward, backward) algorithm of a convolution of C input channels by filters w_shape
    (OC, C/groups, KH, KW), in this order: 'depthwise' for one filter per channel; 'im2col' for
    other groups; 'pointwise' for 1x1 filters without padding (any stride or dilation); 'blocked'
    (register-blocked sums) for 3x3 filters at stride 1 or 2 with more channels than the direct
    sums take, up to blocked_max_channels (fused only with blocked_relu_pool); the rows 'gemm' for
    other strides and dilations; 'winograd' for other 3x3 filters with more channels than the direct sums take;
    'direct' for few channels; and otherwise a 'direct' forward (widths 3 and 5, up to
    direct_forward_max_channels) or the wide 'gemm', with the 'gemm' backward, or when the
    convolution is fused with ReLU and pool, the 'sparse' one from the pool's winners."""
    s = _current
    OC, _, KH, KW = w_shape
    if groups != 1:
        depthwise = groups == C == OC and s.depthwise_kernels
        return ("depthwise", "depthwise") if depthwise else ("im2col", "im2col")
    if not s.own_kernels:
        return "im2col", "im2col"
    stride1 = tuple(stride) == (1, 1)
    if s.pointwise_gemm and not fused and (KH, KW) == (1, 1) and tuple(padding) == (0, 0):
        return "pointwise", "pointwise"
    if (KH, KW) == (3, 3) and tuple(stride) in ((1, 1), (2, 2)) and tuple(dilation) == (1, 1) \
            and s.direct_max_channels < C <= s.blocked_max_channels and (s.blocked_relu_pool or not fused):
        return "blocked", "blocked"
    if not stride1 or tuple(dilation) != (1, 1):
        return ("gemm", "gemm") if s.strided_gemm else ("im2col", "im2col")
    if s.winograd and KH == KW == 3 and C > s.direct_max_channels:
        return "winograd", "winograd"
    if C <= s.direct_max_channels:
        return "direct", "direct"
    forward = "direct" if C <= s.direct_forward_max_channels and KW in (3, 5) else "gemm"
    backward = "sparse" if fused and s.sparse_min_kernel_width <= KW <= LANES else "gemm"
    return forward, backward


def pointwise_by_blocked_sums(C, OC, pixels):
    """Whether a 'pointwise' convolution (C -> OC channels, pixels output pixels a sample) runs on
    the register-blocked sums with one tap rather than BLAS's GEMM per sample: from
    blocked_pointwise_min multiply-adds a sample (below, the copies and the transposition of dy cost
    more than the faster sums save)."""
    return C * OC * pixels >= _current.blocked_pointwise_min


def defers_weight_grad(data_bytes):
    """Whether a convolution's weight-gradient tasks go to cores.defer (to be summed when a thread
    would otherwise wait) rather than into the run that computes dx beside them, for a backward
    whose dy, planes and scratch come to data_bytes (all samples)."""
    return data_bytes <= _current.defer_weight_grad_max_bytes


def fuses(conv, relu, pool):
    """Whether three layers' kinds run as one conv2d_relu_maxpool2d step: a stride-1 convolution
    without dilation or groups, a ReLU and a 2x2 max pool at stride 2 without padding."""
    s = _current
    return (s.fuse_conv_relu_pool and s.own_kernels and conv == ("conv2d", (1, 1), (1, 1), 1)
            and relu == ("relu",) and pool == ("maxpool2d", (2, 2), (2, 2), (0, 0)))


def fuses_batchnorm_relu(norm, relu):
    """Whether two layers' kinds run as one batchnorm_relu step: a batch norm, then a ReLU."""
    return _current.fuse_batchnorm_relu and norm == ("batchnorm",) and relu == ("relu",)


def fuses_conv_batchnorm(conv, norm):
    """Whether a convolution and the batch norm after it run as one conv2d_batchnorm step (which
    takes the ReLU after them too where fuses_batchnorm_relu says so)."""
    return _current.fuse_conv_batchnorm and conv is not None and conv[0] == "conv2d" and norm == ("batchnorm",)
