"""Gaussian-step weight quantizer of HWGQ-Net / EdMIPS: symmetric, mid-rise, uniform.

Network weights are close to zero-mean Gaussians, so the step that is optimal for a unit
Gaussian, scaled by the weights' standard deviation, is near-optimal for them. Levels are
`(k + 1/2) * step` for integer k: 2^b of them, symmetric about zero (so a narrow range by
construction: negating a weight stays on the grid), and 1 bit gives binary weights.
The standard deviation is taken per output channel.
"""

import torch
from torch import Tensor

from edmips.quant.primitives import FULL_PRECISION, GAUSS_STEPS, weight_levels


def weight_std(weight: Tensor, per_channel: bool = True) -> Tensor:
    """Standard deviation per output channel (shape [C, 1, ...]) or of the whole tensor.

    Detached, as in the reference: the statistic sets the grid, gradients do not flow into it.
    Computed on the device: reading it on the host would stall every step.
    """
    w = weight.detach()
    if per_channel:
        std = w.flatten(1).std(dim=1).view(-1, *([1] * (w.dim() - 1)))
    else:
        std = w.std()
    return std.clamp_min(1e-12)


def weight_step(weight: Tensor, bits: int, per_channel: bool = True) -> Tensor:
    return GAUSS_STEPS[bits] * weight_std(weight, per_channel)


class _QuantizeWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, bits: int, per_channel: bool) -> Tensor:
        step = weight_step(weight, bits, per_channel)
        return weight_levels(weight, step, bits) * step

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None  # straight-through, everywhere (as EdMIPS)


def quantize_weight(weight: Tensor, bits: int, per_channel: bool = True) -> Tensor:
    """Fake-quantized weights with a straight-through gradient; 32 bits returns them unchanged."""
    if bits >= FULL_PRECISION:
        return weight
    return _QuantizeWeight.apply(weight, bits, per_channel)


def integer_weight(weight: Tensor, bits: int, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Integer weights and their scale: `weight_q == codes * scale`.

    The codes are the odd integers `2 * level` in [-(2^b - 1), 2^b - 1]; scale = step / 2.
    """
    step = weight_step(weight, bits, per_channel)
    codes = 2 * weight_levels(weight, step, bits)
    return codes.round().to(torch.int64), step / 2
