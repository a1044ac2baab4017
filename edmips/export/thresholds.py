"""Integer thresholds for a monotonic per-channel requantization, and accumulator widths.

A quantized activation after a linear layer is `level = Q(f_c(acc))`, with acc the integer
accumulator and f_c the float scales and shifts of channel c (input scale, weight scale, batch
norm). Both f_c and Q are monotonic, so `level = #{k : sign_c * acc >= T_ck}` for integer
thresholds T (the FINN / micronet recipe), with sign_c = -1 where f_c decreases. The
thresholds are found by bisection on the very float64 function the fake-quantized network
evaluates, so they reproduce it exactly for every accumulator value in range, including the
levels' boundaries (a threshold computed in float32 lands one level off there).
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor


def bits_for_range(lo: int, hi: int) -> int:
    """Signed two's-complement bits that hold every integer in [lo, hi]."""
    magnitude = max(-lo, hi + 1, 1)
    return math.ceil(math.log2(magnitude)) + 1


def accumulator_bits(
    fan_in: int, in_lo: int, in_hi: int, weight_max: int, bias_max: int = 0
) -> int:
    """Width of a dot product of `fan_in` inputs in [in_lo, in_hi] with weights in
    [-weight_max, weight_max], plus a bias of magnitude at most bias_max."""
    peak = fan_in * max(abs(in_lo), abs(in_hi)) * weight_max + bias_max
    return bits_for_range(-peak, peak)


def compute_thresholds(
    levels: Callable[[Tensor], Tensor], channels: int, num_levels: int, lo: int, hi: int
) -> tuple[Tensor, Tensor]:
    """Thresholds T [channels, num_levels - 1] (int64) and signs [channels] (+1/-1).

    `levels(v)` maps integer inputs v (float64 [channels, n]) to the integer level (0 ..
    num_levels - 1) that the float model produces for them; it must be monotonic in v per
    channel. Inputs range over [lo, hi]; a level never reached gets threshold hi + 1, one
    always reached gets lo.
    """
    ends = levels(torch.tensor([[lo, hi]], dtype=torch.float64).expand(channels, 2))
    sign = torch.where(ends[:, 1] >= ends[:, 0], 1, -1).to(torch.int64)
    k = torch.arange(1, num_levels, dtype=torch.int64).expand(channels, -1)

    def level_at(u: Tensor) -> Tensor:  # u = sign * v: increasing in u
        return levels((sign[:, None] * u).to(torch.float64))

    # Smallest u in [u_lo, u_hi + 1] with level_at(u) >= k, by bisection on all (c, k) at once.
    u_lo = torch.where(sign > 0, lo, -hi)[:, None].expand_as(k).clone()
    high = torch.where(sign > 0, hi, -lo)[:, None].expand_as(k) + 1
    u_hi = high.clone()
    while bool((u_lo < u_hi).any()):
        mid = (u_lo + u_hi).div(2, rounding_mode="floor")
        reached = level_at(mid.clamp(max=high - 1)) >= k
        reached |= mid >= high
        u_hi = torch.where(reached, mid, u_hi)
        u_lo = torch.where(reached, u_lo, mid + 1)
    return u_lo, sign


def apply_thresholds(x: Tensor, thresholds: Tensor, sign: Tensor, channel_dim: int = 1) -> Tensor:
    """Integer levels #{k : sign_c * x >= T_ck} of an integer tensor x."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    u = x * sign.view(shape)
    if thresholds.shape[1] <= 16:  # few levels: one comparison pass per threshold
        out = torch.zeros_like(u)
        for t in thresholds.t():
            out += u >= t.view(shape)
        return out
    # Many levels: thresholds rise with k, so the count is a sorted search (integers only).
    u = u.movedim(channel_dim, 0)
    flat = u.reshape(u.shape[0], -1).contiguous()
    out = torch.searchsorted(thresholds.contiguous(), flat, right=True)
    return out.view(u.shape).movedim(0, channel_dim).to(x.dtype)
