"""Activation quantizers.

HWGQ (half-wave Gaussian quantizer): a ReLU whose positive part is uniformly quantized with a
fixed step, optimal for the unit-variance Gaussian that batch norm produces. Levels are
`step * {0, ..., 2^b - 1}`; the gradient is straight-through inside [0, clip] and zero outside.

StreamQuant: a signed 8-bit quantizer for the residual stream of a ResNet, whose range is not
normalized; its scale follows the running maximum of |x| (exponential moving average).
"""

import torch
from torch import Tensor, nn

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


def use_kernels(t: Tensor) -> bool:
    """Eager CUDA tensors go through the fused Triton kernels (edmips.quant.kernels); the CPU and
    torch.compile, which fuses these formulas by itself, use the PyTorch reference."""
    return t.is_cuda and not torch.compiler.is_compiling()


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


class _StreamSTE(torch.autograd.Function):
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


class StreamQuant(nn.Module):
    """Signed, narrow-range uniform quantizer with a scale from the EMA of max |x|.

    One instance is shared by every tensor that meets at a residual add (both inputs and the
    sum), so the add happens on one integer grid and the sum needs only a clamp.
    """

    def __init__(self, bits: int = 8, momentum: float = 0.95):
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("running_max", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def scale(self) -> Tensor:
        return self.running_max / self.qmax

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                batch_max = x.detach().abs().amax().float().clamp_min(1e-8)
                # torch.where rather than `if`: the flag stays on the device (no host sync).
                ema = self.momentum * self.running_max + (1 - self.momentum) * batch_max
                self.running_max.copy_(torch.where(self.initialized, ema, batch_max))
                self.initialized.fill_(True)
        return _StreamSTE.apply(x, self.scale().to(x.dtype), self.qmax)

    def codes(self, x: Tensor) -> Tensor:
        """Integer levels in [-qmax, qmax] (same dtype as x): the forward's arithmetic."""
        return stream_codes(x, self.scale().to(x.dtype), self.qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, momentum={self.momentum}"


class HWGQ(nn.Module):
    """HWGQ as a module, for fixed quantization points that belong to no conv (the stem)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, x: Tensor) -> Tensor:
        return hwgq(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
