"""The per-layer measurement every cost model reads: FLOPs, parameters and input activations.

FLOPs of a layer (EdMIPS eq. 8) are measured once from the layer's real input shape:
    conv:   Cin/groups * Cout * kh * kw * Hout * Wout        linear: in * out

A layer's shape key names what a measured latency depends on, so that a table measured once per
shape serves every layer of that shape (edmips.cost.latency_table):
    conv:Cin:Cout:k:stride:groups:H:W    (H, W the input's; k, stride "3" or "3x1")
    linear:in:out
"""

from dataclasses import dataclass

import torch
from torch import nn

from edmips.nn.layers import MIXED_LAYERS, QUANT_LAYERS


@dataclass(frozen=True)
class LayerCost:
    name: str
    type: str  # "conv" or "linear"
    flops: int
    params: int  # weights of the layer (one shared tensor in the search)
    input_numel: int  # activation elements this layer quantizes, per sample
    input_shape: tuple[int, ...]  # per sample
    shape_key: str = ""  # see above; "" where unknown (a layer read back from a file)


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
            key = ":".join(
                str(v)
                for v in (
                    kind,
                    module.in_channels,
                    module.out_channels,
                    _pair(module.kernel_size),
                    _pair(module.stride),
                    module.groups,
                    x.shape[-2],
                    x.shape[-1],
                )
            )
        else:
            flops, kind = module.in_features * module.out_features, "linear"
            key = f"linear:{module.in_features}:{module.out_features}"
        costs.append(
            LayerCost(
                names[module],
                kind,
                int(flops),
                module.weight.numel(),
                x[0].numel(),
                tuple(x.shape[1:]),
                key,
            )
        )

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


def _pair(value: tuple[int, int]) -> str:
    return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"


def searched(model: nn.Module, costs: list[LayerCost]) -> list[tuple[LayerCost, nn.Module]]:
    """The composite (searched) layers of a model, in forward order."""
    pairs = [(c, model.get_submodule(c.name)) for c in costs]
    return [(c, m) for c, m in pairs if isinstance(m, MIXED_LAYERS)]


def activation_bits(costs: list[LayerCost], abits: list[int]) -> int:
    """Bits of the activations the layers read, per sample."""
    return sum(c.input_numel * a for c, a in zip(costs, abits, strict=True))
