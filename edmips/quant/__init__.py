"""Quantizers: the protocol they follow, their registry, the functional forms with
straight-through gradients and their composite mixes."""

from edmips.quant.activation import hwgq, hwgq_codes
from edmips.quant.calibrate import calibration
from edmips.quant.ema import StreamQuant
from edmips.quant.gaussian import GaussWeight
from edmips.quant.halfwave import HWGQ
from edmips.quant.input import InputQuant
from edmips.quant.mixed import mixed_hwgq, mixed_weight
from edmips.quant.primitives import FULL_PRECISION, GAUSS_STEPS, HWGQ_STEPS
from edmips.quant.protocol import ActivationQuantizer, Quantizer, WeightQuantizer
from edmips.quant.registry import EDMIPS, Family, register
from edmips.quant.weight import integer_weight, quantize_weight

__all__ = [
    "EDMIPS",
    "FULL_PRECISION",
    "GAUSS_STEPS",
    "HWGQ",
    "HWGQ_STEPS",
    "ActivationQuantizer",
    "Family",
    "GaussWeight",
    "InputQuant",
    "Quantizer",
    "StreamQuant",
    "WeightQuantizer",
    "calibration",
    "hwgq",
    "hwgq_codes",
    "integer_weight",
    "mixed_hwgq",
    "mixed_weight",
    "quantize_weight",
    "register",
]
