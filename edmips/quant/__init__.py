"""Quantizers: functional forms with straight-through gradients, and their composite mixes."""

from edmips.quant.activation import HWGQ_STEPS, StreamQuant, hwgq, hwgq_codes
from edmips.quant.mixed import mixed_hwgq, mixed_weight
from edmips.quant.signed import SignedQuant
from edmips.quant.weight import FULL_PRECISION, GAUSS_STEPS, integer_weight, quantize_weight

# Bit-widths the whole pipeline takes (search, retrain and the integer export).
WEIGHT_BITS = sorted(GAUSS_STEPS)
ACTIVATION_BITS = sorted(HWGQ_STEPS)

__all__ = [
    "ACTIVATION_BITS",
    "WEIGHT_BITS",
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
