"""Quantized layers and the conversions between search and fixed-bit networks."""

from edmips.nn.convert import (
    default_searched,
    input_space,
    quantizable_names,
    to_fixed,
    to_float,
    to_search,
)
from edmips.nn.fx_quantize import quantize
from edmips.nn.layers import (
    MIXED_LAYERS,
    QUANT_LAYERS,
    MixedConv2d,
    MixedLinear,
    QuantConv2d,
    QuantLinear,
)

__all__ = [
    "MIXED_LAYERS",
    "QUANT_LAYERS",
    "MixedConv2d",
    "MixedLinear",
    "QuantConv2d",
    "QuantLinear",
    "default_searched",
    "input_space",
    "quantizable_names",
    "quantize",
    "to_fixed",
    "to_float",
    "to_search",
]
