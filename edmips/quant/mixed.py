"""Composite quantizers of the search: selector-weighted sums over candidate bit-widths.

    weight:     W_mix = sum_i p_i * Q_w(W, b_i)      (EdMIPS eq. 16, one shared tensor W)
    activation: x_mix = sum_j p_j * HWGQ(x, b_j)

Both are autograd functions that save only their input and the selector probabilities and
recompute the candidates in backward, so memory does not grow with the number of candidates.
Every statistic stays on the device. The gradients equal those of the plain formulas with
straight-through quantizers (tests/quant/test_mixed.py checks that).
"""

import torch
from torch import Tensor

from edmips.quant.activation import HWGQ_STEPS, hwgq_clip
from edmips.quant.weight import GAUSS_STEPS, weight_levels, weight_std


def _weight_candidates(weight: Tensor, std: Tensor, bits: tuple[int, ...]):
    for b in bits:
        step = GAUSS_STEPS[b] * std
        yield weight_levels(weight, step, b) * step


class _MixedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, probs: Tensor, bits: tuple[int, ...], per_channel: bool):
        std = weight_std(weight, per_channel)
        out = torch.zeros_like(weight)
        for p, q in zip(probs, _weight_candidates(weight, std, bits)):
            out.add_(q * p)
        ctx.save_for_backward(weight, probs, std)
        ctx.bits = bits
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, probs, std = ctx.saved_tensors
        grad_probs = torch.stack(
            [torch.sum(grad * q) for q in _weight_candidates(weight, std, ctx.bits)]
        )
        # Straight-through: d W_mix / d W = sum_i p_i.
        return grad * probs.sum(), grad_probs, None, None


def mixed_weight(weight: Tensor, probs: Tensor, bits: tuple[int, ...], per_channel=True) -> Tensor:
    return _MixedWeight.apply(weight, probs, tuple(bits), per_channel)


def _hwgq_levels(x: Tensor, b: int) -> Tensor:
    """HWGQ's integer levels round(clamp(x, 0, clip) / step), in three in-place passes."""
    return x.mul(1.0 / HWGQ_STEPS[b]).clamp_(0, 2**b - 1).round_()


class _MixedHWGQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, probs: Tensor, bits: tuple[int, ...]):
        out = torch.zeros_like(x)
        for p, b in zip(probs.to(x.dtype), bits):
            out.addcmul_(_hwgq_levels(x, b), p * HWGQ_STEPS[b])  # += p_b * step_b * level
        ctx.save_for_backward(x, probs)
        ctx.bits = bits
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, probs = ctx.saved_tensors
        bits = ctx.bits
        # HWGQ passes the gradient where 0 <= x <= clip_b, so the mix passes the sum of p_b
        # over the candidates whose clip x has not passed: one bucket lookup per element.
        order = sorted(range(len(bits)), key=lambda j: hwgq_clip(bits[j]))
        # new_full fills on the device: a list -> tensor copy would go through the host
        clips = torch.stack([x.new_full((), hwgq_clip(bits[j])) for j in order])
        sorted_p = probs.to(x.dtype)[order]
        suffix = torch.cat([sorted_p.flip(0).cumsum(0).flip(0), sorted_p.new_zeros(1)])
        pass_through = suffix[torch.bucketize(x, clips)] * (x >= 0)
        steps = [HWGQ_STEPS[b] for b in bits]
        grad_probs = torch.stack(
            [
                torch.sum(grad * _hwgq_levels(x, b), dtype=torch.float32) * s
                for b, s in zip(bits, steps)
            ]
        )
        return grad * pass_through, grad_probs.to(probs.dtype), None


def mixed_hwgq(x: Tensor, probs: Tensor, bits: tuple[int, ...]) -> Tensor:
    return _MixedHWGQ.apply(x, probs, tuple(bits))
