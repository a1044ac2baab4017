"""The quantizers' arithmetic, and nothing else: step tables and integer levels.

The one definition that the autograd functions (edmips.quant.activation, .weight, .mixed), the
Triton kernels (edmips.quant.kernels) and the export all compute, so that they agree to the bit.
A leaf: it imports nothing of edmips.
"""

import torch
from torch import Tensor

FULL_PRECISION = 32

# Uniform steps minimising the squared error for a unit Gaussian. 1-4 bits are EdMIPS's
# constants; 5-8 bits were computed the same way (numerical minimisation of the MSE).
GAUSS_STEPS = {1: 1.596, 2: 0.996, 3: 0.586, 4: 0.336, 5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308}


def check_bits(bits: int, table: dict) -> None:
    if bits != FULL_PRECISION and bits not in table:
        raise ValueError(f"unsupported bit-width {bits}: choose from {sorted(table)} or 32")


# Uniform steps for the positive half of a unit Gaussian (Lloyd-optimal, then made uniform).
# 1-4 bits are EdMIPS's constants; 5-8 bits were computed the same way.
HWGQ_STEPS = {1: 0.799, 2: 0.538, 3: 0.3217, 4: 0.185, 5: 0.103, 6: 0.0566, 7: 0.0307, 8: 0.0165}


def hwgq_clip(bits: int) -> float:
    return HWGQ_STEPS[bits] * (2**bits - 1)


def hwgq_codes(x: Tensor, bits: int) -> Tensor:
    """Integer levels round(clamp(x / step, 0, 2^b - 1)) (same dtype as x).

    The one definition of HWGQ's arithmetic: the quantizers, the CUDA kernels and the export
    all compute these levels. Written as x * (1 / step) with the factor in float32, because a
    multiplication rounds the same in eager mode, in compiled code (which turns a division by a
    constant into this multiplication) and in a kernel.
    """
    return (x * (1.0 / HWGQ_STEPS[bits])).clamp_(0, 2**bits - 1).round_()


def hwgq_passes(x: Tensor, bits: int) -> Tensor:
    """Where HWGQ's straight-through gradient passes: 0 <= x <= clip (the clip in x's dtype)."""
    return (x >= 0) & (x <= hwgq_clip(bits))


def stream_codes(x: Tensor, scale: Tensor, qmax: int) -> Tensor:
    """StreamQuant's integer levels round(clamp(x / scale, -qmax, qmax)) (same dtype as x)."""
    return (x / scale).clamp_(-qmax, qmax).round_()


def stream_passes(x: Tensor, scale: Tensor, qmax: int) -> Tensor:
    """Where StreamQuant's straight-through gradient passes: |x / scale| <= qmax."""
    return (x / scale).abs_() <= qmax


def weight_levels(weight: Tensor, step: Tensor, bits: int) -> Tensor:
    """Level index `k + 1/2` (a half-integer, |.| <= 2^(b-1) - 1/2): the value is `level * step`."""
    limit = 2 ** (bits - 1) - 0.5
    return (torch.round(weight / step + 0.5) - 0.5).clamp(-limit, limit)
