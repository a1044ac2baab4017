"""Complexity accounting: FLOPs, BitOps, equivalent bit-width, weight size, activation memory.

FLOPs of a layer (EdMIPS eq. 8) are measured once from the layer's real input shape:
    conv:   Cin/groups * Cout * kh * kw * Hout * Wout        linear: in * out
BitOps = FLOPs * a * w (eq. 9). The equivalent bit-width sqrt(sum FLOPs*a*w / sum FLOPs) is the
number EdMIPS reports ("1.992 bits"). The search penalises its expectation under the selector
softmaxes (eq. 12-13); EdMIPS divides the expected BitOps by the first searched layer's FLOPs
instead, which makes the scale of mu depend on the depth.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edmips.nn.layers import MIXED_LAYERS, QUANT_LAYERS


@dataclass(frozen=True)
class LayerCost:
    name: str
    type: str  # "conv" or "linear"
    flops: int
    params: int  # weights of the layer (one shared tensor in the search)
    input_numel: int  # activation elements this layer quantizes, per sample
    input_shape: tuple[int, ...]  # per sample


def measure(model: nn.Module, input_size: tuple[int, ...]) -> list[LayerCost]:
    """Costs of every quantizable layer, in the order the forward pass calls them.

    One forward pass on a zero image, in eval mode, when the model is built: the search loop
    itself never looks at shapes (no per-step host work).
    """
    costs: list[LayerCost] = []

    def record(module, args, output):
        x = args[0]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            flops = module.in_channels // module.groups * module.out_channels * kh * kw
            flops *= output.shape[-2] * output.shape[-1]
            kind = "conv"
        else:
            flops, kind = module.in_features * module.out_features, "linear"
        cost = LayerCost(
            names[module], kind, int(flops), module.weight.numel(), x[0].numel(), tuple(x.shape[1:])
        )
        module.cost = cost
        costs.append(cost)

    names = {m: n for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS + MIXED_LAYERS)}
    handles = [m.register_forward_hook(record) for m in names]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return costs


def searched(model: nn.Module, costs: list[LayerCost]) -> list[tuple[LayerCost, nn.Module]]:
    """The composite (searched) layers of a model, in forward order."""
    pairs = [(c, model.get_submodule(c.name)) for c in costs]
    return [(c, m) for c, m in pairs if isinstance(m, MIXED_LAYERS)]


def expected_bitops(layers: list[tuple[LayerCost, nn.Module]]) -> Tensor:
    total = 0
    for cost, layer in layers:
        ew, ea = layer.expected_bits()
        total = total + cost.flops * ew * ea
    return total


def complexity_loss(layers: list[tuple[LayerCost, nn.Module]]) -> Tensor:
    """The expected equivalent bit-width, sqrt(expected BitOps / FLOPs): 2 for a W2A2 network,
    4 for W4A4, whatever the network's size, so mu means the same trade-off on every model:
    the cross-entropy (nats) given up for one equivalent bit."""
    return expected_equivalent_bits(layers)


def total_flops(costs: list[LayerCost]) -> int:
    return sum(c.flops for c in costs)


def bitops(costs: list[LayerCost], wbits: list[int], abits: list[int]) -> int:
    return sum(c.flops * w * a for c, w, a in zip(costs, wbits, abits, strict=True))


def equivalent_bits(bitops_: float, flops: int) -> float:
    return math.sqrt(bitops_ / flops)


def expected_equivalent_bits(layers: list[tuple[LayerCost, nn.Module]]) -> Tensor:
    return torch.sqrt(expected_bitops(layers) / total_flops([c for c, _ in layers]))


def weight_bits(costs: list[LayerCost], wbits: list[int]) -> int:
    return sum(c.params * w for c, w in zip(costs, wbits, strict=True))


def activation_bits(costs: list[LayerCost], abits: list[int]) -> int:
    """Bits of the activations the layers read, per sample."""
    return sum(c.input_numel * a for c, a in zip(costs, abits, strict=True))
