"""Post-training quantization: a float network's activations clipped by ACIQ (or min-max, or the
measured-MSE clip) from a few calibration images, its weights by per-channel max-abs."""

from edmips.ptq.aciq import mix, model_mse, multiplier
from edmips.ptq.calibrate import accuracy, calibrate, float_copy
from edmips.ptq.clipping import METHODS, method

__all__ = [
    "METHODS",
    "accuracy",
    "calibrate",
    "float_copy",
    "method",
    "mix",
    "model_mse",
    "multiplier",
]
