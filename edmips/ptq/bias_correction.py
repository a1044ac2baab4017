"""Bias correction of quantized weights (Banner et al.): per output channel, after weight
quantization, `mean` shifts the quantized weights to the float weights' mean,
`mean_var` also rescales them to the float weights' std:

    mean:      w_q <- w_q - mean(w_q) + mean(w)
    mean_var:  w_q <- (w_q - mean(w_q)) * std(w) / std(w_q) + mean(w)

The max-abs weight quantizer holds the corrected weights as integers `codes * 2^p + k_o`
(edmips.quant.maxabs): p bits wider than the codes, so every accumulator of the layer is too.
p is the largest of FINE_BITS down to 0 that keeps the layer's accumulator exact in the
float32 of the ONNX forms' Conv (edmips.export.onnx.common), bounded from the layer's input
codes, and, for an int8 form's weights (edmips.quant.pow2), its integer weights within int8,
so that the layer still runs on QLinearConv; a layer that cannot take even p = 0 stays
uncorrected. A linear layer that pools its input first (a ResNet's classifier) sums an input
whose size the layer does not know, and stays uncorrected too.
"""

import math

from torch import nn

from edmips.nn.layers import QuantConv2d, QuantLinear
from edmips.quant.maxabs import BIAS_CORRECTIONS, MaxAbsWeight
from edmips.quant.primitives import FULL_PRECISION

MODES = BIAS_CORRECTIONS
FINE_BITS = 8  # the constant's rounding: at most 1/512 of a channel's step
EXACT_ACCUMULATOR = 2**24  # |accumulator| that float32 holds exactly
INT8_MAX = 127  # the largest weight of an int8 form's layer (QLinearConv's int8 weights)


def check(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"ptq.bias_correction={mode}: choose from {', '.join(MODES)}")


def input_magnitude(layer: nn.Module) -> int | None:
    """The largest |integer input| of the layer's dot products; None where it is unknown."""
    _, abits = layer.bit_config()  # 8 for an input that arrives quantized (the image's codes)
    magnitude = 2**abits - 1
    if isinstance(layer, QuantLinear):
        return None if layer.pool_input else magnitude
    pool = layer.input_pool
    if pool is None:
        return magnitude
    if not isinstance(pool, nn.AvgPool2d):
        return None
    size = pool.kernel_size
    return magnitude * math.prod(size if isinstance(size, tuple) else (size, size))


def accumulator_peak(layer: nn.Module, magnitude: int) -> float:
    """The largest |accumulator| of the layer with its weight quantizer as it is set now."""
    q = layer.weight_quant
    peak = layer.weight[0].numel() * magnitude * q.max_code
    if layer.bias is not None and layer.input_grid() is not None:
        unit = layer.bias_unit().detach()
        peak += float((layer.bias.detach() / unit).abs().max()) + 1
    return peak


def correct(model: nn.Module, mode: str) -> dict[str, int | None]:
    """Correct every max-abs layer's weights; {layer: p, or None where it stays uncorrected}."""
    check(mode)
    if mode == "none":
        return {}
    fine_bits = {}
    for name, layer in model.named_modules():
        q = getattr(layer, "weight_quant", None)
        if not isinstance(layer, (QuantConv2d, QuantLinear)) or not isinstance(q, MaxAbsWeight):
            continue
        magnitude = input_magnitude(layer)
        if q.bits >= FULL_PRECISION or magnitude is None:
            continue
        fine_bits[name] = None
        for p in range(FINE_BITS, -1, -1):
            q.correct_bias(layer.weight, mode, p)
            fits_int8 = q.max_code <= INT8_MAX or not getattr(q, "int8_of", "")
            if accumulator_peak(layer, magnitude) < EXACT_ACCUMULATOR and fits_int8:
                fine_bits[name] = p
                break
        else:
            q.correct_bias(layer.weight, "none", 0)
    return fine_bits
