"""Quantizers: functional forms with straight-through gradients, and their composite mixes."""

from edmips.quant.activation import HWGQ_STEPS, StreamQuant, hwgq, hwgq_codes
from edmips.quant.mixed import mixed_hwgq, mixed_weight
from edmips.quant.signed import SignedQuant
from edmips.quant.weight import FULL_PRECISION, GAUSS_STEPS, integer_weight, quantize_weight

__all__ = [
    "FULL_PRECISION",
    "GAUSS_STEPS",
    "HWGQ_STEPS",
    "SignedQuant",
    "StreamQuant",
    "hwgq",
    "hwgq_codes",
    "integer_weight",
    "mixed_hwgq",
    "mixed_weight",
    "quantize_weight",
]
