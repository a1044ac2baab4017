"""The image's quantizer: [0, 1] images to 8-bit codes with the normalization folded in.

At 32 bits (the float network) it normalizes without rounding: the same affine map, so the
float network's first conv sees what the quantized one sees, less the 8-bit rounding (none
for an image that was 8-bit to begin with), and the zero point stays in the state dict.
"""

import math

import torch
from torch import Tensor

from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.protocol import ActivationQuantizer
from edmips.quant.registry import register


@register("image")
class InputQuant(ActivationQuantizer):
    """Images in [0, 1] to centred 8-bit codes: (round(255 x) - zero_point_c) * scale.

    The per-channel mean becomes an integer zero point and the std one scalar scale, so the
    normalization needs no arithmetic beyond an integer subtraction at inference.
    """

    supported_bits = (8,)
    signed = True
    defines_input = True

    def __init__(self, mean, std):
        super().__init__(8)
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std)
        self.register_buffer("zero_point", torch.round(255 * mean).view(1, -1, 1, 1))
        self.scale = 1.0 / (255.0 * float(std.mean()))

    @property
    def lowest(self) -> int:
        return -int(self.zero_point.max())

    @property
    def num_levels(self) -> int:
        return 256 + int(self.zero_point.max() - self.zero_point.min())

    def round_scale(self) -> float:
        """The scale rounded to the nearest power of two, where a family's requantization needs
        one; the factor old / new by which the layers reading the codes must scale their
        weights to compute what they did (edmips.nn.convert.to_family does)."""
        old = self.scale
        self.scale = 2.0 ** round(math.log2(old))
        return old / self.scale

    def unit(self) -> float:
        return self.scale

    def codes(self, x: Tensor) -> Tensor:
        return torch.round(x.clamp(0, 1) * 255) - self.zero_point.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.bits >= FULL_PRECISION:
            return (x.clamp(0, 1) * 255 - self.zero_point.to(x.dtype)) * self.scale
        return self.codes(x) * self.scale
