"""Composite quantizers of the search: selector-weighted sums over candidate bit-widths.

    weight:     W_mix = sum_i p_i * Q_w(W, b_i)      (EdMIPS eq. 16, one shared tensor W)
    activation: x_mix = sum_j p_j * HWGQ(x, b_j)

Both are autograd functions that save only their input and the selector probabilities and
recompute the candidates in backward, so memory does not grow with the number of candidates.
Every statistic stays on the device. The gradients equal those of the plain formulas with
straight-through quantizers (tests/quant/test_mixed.py checks that).

Eager CUDA tensors go through fused Triton kernels (edmips.quant.kernels: one pass forward, one
backward); the PyTorch formulas here are the reference, the CPU path, and what torch.compile
fuses by itself.
"""

import torch
from torch import Tensor

from edmips.quant.activation import use_kernels
from edmips.quant.primitives import GAUSS_STEPS, HWGQ_STEPS, hwgq_clip, hwgq_codes, weight_levels
from edmips.quant.weight import weight_std


def _weight_candidates(weight: Tensor, std: Tensor, bits: tuple[int, ...]):
    for b in bits:
        step = GAUSS_STEPS[b] * std
        yield weight_levels(weight, step, b) * step


class _MixedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, probs: Tensor, bits: tuple[int, ...], per_channel: bool):
        ctx.save_for_backward(weight, probs)
        ctx.bits, ctx.per_channel = bits, per_channel
        if per_channel and use_kernels(weight):
            from edmips.quant import kernels

            if kernels.fits_mixed_weight(weight):
                return kernels.mixed_weight_forward(weight, probs, bits)
        std = weight_std(weight, per_channel)
        out = torch.zeros_like(weight)
        for p, q in zip(probs, _weight_candidates(weight, std, bits)):
            out.add_(q * p)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, probs = ctx.saved_tensors
        # Straight-through: d W_mix / d W = sum_i p_i.
        grad_weight = grad * probs.sum()
        if ctx.per_channel and use_kernels(weight):
            from edmips.quant import kernels

            if kernels.fits_mixed_weight(weight):
                grad_probs = kernels.mixed_weight_backward(weight, grad, probs, ctx.bits)
                return grad_weight, grad_probs, None, None
        std = weight_std(weight, ctx.per_channel)
        grad_probs = torch.stack(
            [torch.sum(grad * q) for q in _weight_candidates(weight, std, ctx.bits)]
        )
        return grad_weight, grad_probs, None, None


def mixed_weight(weight: Tensor, probs: Tensor, bits: tuple[int, ...], per_channel=True) -> Tensor:
    return _MixedWeight.apply(weight, probs, tuple(bits), per_channel)


def mixed_hwgq_reference(x: Tensor, probs: Tensor, bits: tuple[int, ...]) -> Tensor:
    out = torch.zeros_like(x)
    for p, b in zip(probs.to(x.dtype).unbind(0), bits):
        out.addcmul_(hwgq_codes(x, b), p * HWGQ_STEPS[b])  # += p_b * step_b * level
    return out


def mixed_hwgq_reference_backward(x: Tensor, grad: Tensor, probs: Tensor, bits: tuple[int, ...]):
    # HWGQ passes the gradient where 0 <= x <= clip_b, so the mix passes the sum of p_b
    # over the candidates whose clip x has not passed: one bucket lookup per element. The
    # candidates are put in clip order by unbind and stack, which stay on the device (indexing
    # with a Python list would copy the index from the host).
    order = sorted(range(len(bits)), key=lambda j: hwgq_clip(bits[j]))
    clips = torch.stack([x.new_full((), hwgq_clip(bits[j])) for j in order])
    p = probs.to(x.dtype).unbind(0)
    sorted_p = torch.stack([p[j] for j in order])
    suffix = torch.cat([sorted_p.flip(0).cumsum(0).flip(0), sorted_p.new_zeros(1)])
    pass_through = suffix[torch.bucketize(x, clips)] * (x >= 0)
    grad_probs = torch.stack(
        [torch.sum(grad * hwgq_codes(x, b), dtype=torch.float32) * HWGQ_STEPS[b] for b in bits]
    )
    return grad * pass_through, grad_probs.to(probs.dtype)


class _MixedHWGQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, probs: Tensor, bits: tuple[int, ...]):
        ctx.save_for_backward(x, probs)
        ctx.bits = bits
        if use_kernels(x):
            from edmips.quant import kernels

            return kernels.mixed_hwgq_forward(x, probs, bits)
        return mixed_hwgq_reference(x, probs, bits)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, probs = ctx.saved_tensors
        if use_kernels(x):
            from edmips.quant import kernels

            grad_x, grad_probs = kernels.mixed_hwgq_backward(x, grad, probs, ctx.bits)
        else:
            grad_x, grad_probs = mixed_hwgq_reference_backward(x, grad, probs, ctx.bits)
        return grad_x, grad_probs, None


def mixed_hwgq(x: Tensor, probs: Tensor, bits: tuple[int, ...]) -> Tensor:
    return _MixedHWGQ.apply(x, probs, tuple(bits))
