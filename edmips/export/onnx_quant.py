"""What the ONNX export of a converted model checks first, and the thresholds that make
MultiThreshold nodes reproduce the network's quantizers exactly."""

import numpy as np
import torch
from torch import fx

from edmips.export.lower import ExportError
from edmips.nn.layers import MIXED_LAYERS, QuantConv2d, QuantLinear
from edmips.quant import FULL_PRECISION, SignedQuant


def check_graph_exportable(model: fx.GraphModule) -> None:
    for name, layer in model.named_modules():
        if isinstance(layer, MIXED_LAYERS):
            raise ExportError(f"layer {name}: a composite search layer; retrain it first")
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            if layer.wbits >= FULL_PRECISION:
                raise ExportError(f"layer {name}: weights are not quantized (32 bits)")
            if layer.abits == FULL_PRECISION:
                raise ExportError(f"layer {name}: input activations are not quantized (32 bits)")
        if isinstance(layer, SignedQuant):
            if layer.bits >= FULL_PRECISION:
                raise ExportError(f"quantizer {name}: signed input not quantized (32 bits)")
            if not bool(layer.initialized):
                raise ExportError(f"quantizer {name}: range never calibrated (train first)")


def exact_thresholds(levels, step: float, lo: int, hi: int, ulps: int = 8) -> torch.Tensor:
    """For each level k in (lo, hi], the smallest float32 x that the quantizer's own arithmetic
    puts at k or above: MultiThreshold then reproduces it bit for bit, ties and roundings
    included. The search runs over a few float32 neighbours of (k - 1/2) * step."""
    k = torch.arange(lo + 1, hi + 1, dtype=torch.float64)
    start = ((k - 0.5) * step).float()
    for _ in range(ulps):
        start = torch.nextafter(start, torch.tensor(-np.inf))
    candidates = [start]
    for _ in range(2 * ulps):
        candidates.append(torch.nextafter(candidates[-1], torch.tensor(np.inf)))
    candidates = torch.stack(candidates, 1)
    reached = levels(candidates) >= k.float().unsqueeze(1)
    if not (reached.any(1).all() and not reached[:, 0].any()):
        raise ExportError(f"no float32 threshold found for a quantizer of step {step}")
    return candidates[torch.arange(len(k)), reached.int().argmax(1)]
