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


def _hwgq_candidate(x: Tensor, b: int) -> Tensor:
    step = HWGQ_STEPS[b]
    return torch.round(x.clamp(0.0, hwgq_clip(b)) / step) * step


class _MixedHWGQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, probs: Tensor, bits: tuple[int, ...]):
        out = torch.zeros_like(x)
        for p, b in zip(probs.to(x.dtype), bits):
            out.add_(_hwgq_candidate(x, b) * p)
        ctx.save_for_backward(x, probs)
        ctx.bits = bits
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, probs = ctx.saved_tensors
        # HWGQ passes the gradient where 0 <= x <= clip_b; the mix passes sum_j p_j of those.
        pass_through = torch.zeros_like(x)
        grad_probs = []
        for p, b in zip(probs.to(x.dtype), ctx.bits):
            pass_through.add_(((x >= 0) & (x <= hwgq_clip(b))) * p)
            grad_probs.append(torch.sum(grad * _hwgq_candidate(x, b), dtype=torch.float32))
        return grad * pass_through, torch.stack(grad_probs).to(probs.dtype), None


def mixed_hwgq(x: Tensor, probs: Tensor, bits: tuple[int, ...]) -> Tensor:
    return _MixedHWGQ.apply(x, probs, tuple(bits))
