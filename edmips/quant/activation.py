"""The activation quantizers' autograd functions, with their straight-through gradients.

HWGQ (half-wave Gaussian quantizer): a ReLU whose positive part is uniformly quantized with a
fixed step, optimal for the unit-variance Gaussian that batch norm produces. Levels are
`step * {0, ..., 2^b - 1}`; the gradient is straight-through inside [0, clip] and zero outside.
The signed stream quantizer: levels `scale * {-qmax, ..., qmax}`, straight-through inside.
The modules that use them: edmips.quant.halfwave (HWGQ) and edmips.quant.ema.
"""

import torch
from torch import Tensor

from edmips.quant.primitives import (
    FULL_PRECISION,
    HWGQ_STEPS,
    hwgq_codes,
    hwgq_passes,
    stream_codes,
    stream_passes,
)


class _RoundSTE(torch.autograd.Function):
    # A Function rather than `x + (round(x) - x).detach()`, whose float error would put the
    # values slightly off the integer grid.
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    """round() whose gradient is the identity."""
    return _RoundSTE.apply(x)


# Whether eager CUDA tensors may go through the fused kernels. Cleared, for the rest of the
# process, by disable_kernels() when the check at the start of a GPU run
# (edmips.core.device_check) finds a kernel failing or disagreeing with the PyTorch reference:
# the run then goes on with the reference formulas rather than stopping or training on wrong values.
KERNELS_ENABLED = True


def disable_kernels() -> None:
    """From now on every quantizer computes its PyTorch reference formulas, on the GPU too."""
    global KERNELS_ENABLED
    KERNELS_ENABLED = False


def use_kernels(t: Tensor) -> bool:
    """Eager CUDA tensors go through the fused Triton kernels (edmips.quant.kernels) unless they
    were disabled; the CPU and torch.compile, which fuses these formulas by itself, use the
    PyTorch reference."""
    return KERNELS_ENABLED and t.is_cuda and not torch.compiler.is_compiling()


class _HWGQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bits: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bits = bits
        if use_kernels(x):
            from edmips.quant import kernels

            return kernels.hwgq_forward(x, bits)
        return hwgq_codes(x, bits).mul_(HWGQ_STEPS[bits])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        if use_kernels(x):
            from edmips.quant import kernels

            return kernels.hwgq_backward(x, grad, ctx.bits), None
        return grad * hwgq_passes(x, ctx.bits), None


def hwgq(x: Tensor, bits: int) -> Tensor:
    """HWGQ fake quantization (levels times the step); 32 bits is a plain ReLU."""
    if bits >= FULL_PRECISION:
        return torch.relu(x)
    return _HWGQ.apply(x, bits)


class StreamSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, qmax: int) -> Tensor:
        ctx.save_for_backward(x, scale)
        ctx.qmax = qmax
        if use_kernels(x):
            from edmips.quant import kernels

            return kernels.stream_forward(x, scale, qmax)
        return stream_codes(x, scale, qmax).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, scale = ctx.saved_tensors
        if use_kernels(x):
            from edmips.quant import kernels

            return kernels.stream_backward(x, grad, scale, ctx.qmax), None, None
        return grad * stream_passes(x, scale, ctx.qmax), None, None
