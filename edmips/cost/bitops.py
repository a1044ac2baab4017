"""BitOps: FLOPs * w * a (EdMIPS eq. 9), stated as the equivalent bit-width.

The equivalent bit-width sqrt(sum FLOPs*a*w / sum FLOPs) is the number EdMIPS reports ("1.992
bits"): 2 for a W2A2 network, 4 for W4A4, whatever the network's size, so mu means the same
trade-off on every model: the cross-entropy (nats) given up for one equivalent bit. EdMIPS
divides the expected BitOps by the first searched layer's FLOPs instead, which makes the
scale of mu depend on the depth.
"""

import math

import numpy as np
import torch
from torch import Tensor, nn

from edmips.cost.layers import LayerCost
from edmips.cost.model import CostModel, register


@register
class BitOps(CostModel):
    name = "bitops"
    unit = "equivalent bits"

    def entry(self, layer: LayerCost, w: int, a: int) -> int:
        return layer.flops * w * a

    def size(self, layer: LayerCost) -> int:
        return layer.flops

    def stated(self, per_size):
        return torch.sqrt(per_size) if isinstance(per_size, Tensor) else np.sqrt(per_size)

    def per_size(self, stated: float) -> float:
        return stated**2

    def factors(self, wspace, aspace) -> tuple[list, list]:
        return list(wspace), list(aspace)

    def expected(self, layers: list[tuple[LayerCost, nn.Module]]) -> Tensor:
        return expected_equivalent_bits(layers)


def total_flops(costs: list[LayerCost]) -> int:
    return sum(c.flops for c in costs)


def bitops(costs: list[LayerCost], wbits: list[int], abits: list[int]) -> int:
    return sum(c.flops * w * a for c, w, a in zip(costs, wbits, abits, strict=True))


def equivalent_bits(bitops_: float, flops: int) -> float:
    return math.sqrt(bitops_ / flops)


def expected_bitops(layers: list[tuple[LayerCost, nn.Module]]) -> Tensor:
    """sum FLOPs * E[w] * E[a] under the selector softmaxes (eq. 12-13)."""
    total = 0
    for cost, layer in layers:
        ew, ea = layer.expected_bits()
        total = total + cost.flops * ew * ea
    return total


def expected_equivalent_bits(layers: list[tuple[LayerCost, nn.Module]]) -> Tensor:
    """sqrt(expected BitOps / FLOPs), differentiable: the search's penalty in mu mode."""
    return torch.sqrt(expected_bitops(layers) / total_flops([c for c, _ in layers]))
