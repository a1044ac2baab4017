"""ACIQ's per-channel bit allocation (Banner et al., eq. 11): under a quota of B bits per channel
on average, channel i of width s_i gets

    bins_i = C 2^B s_i^(2/3) / sum_j s_j^(2/3),    M_i = round(log2 bins_i)

clamped to the bits the quantizer takes, the target shifted until the mean meets the quota
exactly: the rounding of log2 bins_i and the clamp leave a sum of bits off the quota's C * B,
which goes, a bit at a time, to the channels that the rounding cut most (largest remainder).
A layer at more than MAX_BITS bits keeps its channels uniform, as does one of a single channel.

`ptq.bit_allocation`: `weights` allocates per output channel inside the max-abs weight
quantizer (its integer weight tensor holds each channel's codes on its own scale: exact).
Per-channel activation bits (`activations`, `both`) would put a layer's input channels on
different grids, which only a conv that never sums over channels (a depthwise one) could
take, and the integer lowering gives every layer's input channels one bit-width: refused.
"""

import math

import torch
from torch import Tensor, nn

from edmips.nn.layers import QuantConv2d, QuantLinear, is_depthwise
from edmips.quant.maxabs import MaxAbsWeight
from edmips.quant.primitives import FULL_PRECISION

MODES = ("none", "weights", "activations", "both")
MAX_BITS = 4  # the seed allocates at 4 bits; above it a uniform grid already fits the channels
WEIGHT_BITS = (2, 8)  # max-abs weights: the narrow range's smallest grid with a nonzero level


def allocate(widths: Tensor, bits: int, lo: int, hi: int) -> Tensor:
    """Bits per channel (int64) of mean exactly `bits`, by eq. 11 over the channels' widths."""
    c = len(widths)
    share = widths.double().clamp_min(0) ** (2 / 3)
    if c == 1 or share.sum() == 0:
        return torch.full((c,), bits, dtype=torch.int64)
    ideal = torch.log2(2.0**bits * c * share / share.sum())  # -inf for a zero channel
    total = bits * c

    def rounded(shift: float) -> Tensor:
        return (ideal + shift).round().clamp(lo, hi)

    low, high = -64.0, 64.0  # bisect the largest shift whose bits stay within the quota
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if rounded(mid).sum() <= total else (low, mid)
    alloc = rounded(low)
    remainder = torch.where(alloc < hi, ideal + low - alloc, torch.tensor(-math.inf))
    missing = int(total - alloc.sum())
    alloc[remainder.argsort(descending=True)[:missing]] += 1
    return alloc.to(torch.int64)


def check(model: nn.Module, mode: str) -> None:
    """Refuse, in one line, an unknown mode or per-channel activation bits where a layer's
    quantized input would take them (before calibration)."""
    if mode not in MODES:
        raise ValueError(f"ptq.bit_allocation={mode}: choose from {', '.join(MODES)}")
    if mode not in ("activations", "both"):
        return
    for name, layer in model.named_modules():
        q = getattr(layer, "input_quant", None)
        if not isinstance(layer, (QuantConv2d, QuantLinear)) or q is None or q.bits > MAX_BITS:
            continue
        why = (
            "the integer lowering gives a layer's input channels one bit-width"
            if is_depthwise(layer)
            else "it sums its input over channels (not a depthwise conv), so they share one grid"
        )
        raise ValueError(
            f"ptq.bit_allocation={mode}: per-channel activation bits cannot reach layer {name}: "
            f"{why}"
        )


def allocate_weights(model: nn.Module, mode: str) -> dict[str, list[int]]:
    """Per-channel weight bits of every max-abs layer at MAX_BITS or fewer; {layer: bits}."""
    if mode not in ("weights", "both"):
        return {}
    allocated = {}
    for name, layer in model.named_modules():
        q = getattr(layer, "weight_quant", None)
        if not isinstance(q, MaxAbsWeight) or q.bits > MAX_BITS or q.bits >= FULL_PRECISION:
            continue
        widths = layer.weight.detach().flatten(1).std(1).nan_to_num()  # fan-in 1: no spread
        bits = allocate(widths, q.bits, *WEIGHT_BITS)
        q.set_channel_bits(bits)
        allocated[name] = bits.tolist()
    return allocated
