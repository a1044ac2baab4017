"""Symmetric max-abs weights, for post-training quantization: per output channel (or over the
whole tensor) scale = max|W_c| / (2^(b-1) - 1) and codes round(W / scale) in the narrow range
[-(2^(b-1) - 1), 2^(b-1) - 1]. No clipping: the largest weight is a level."""

import torch
from torch import Tensor

from edmips.quant.activation import round_ste
from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.protocol import WeightQuantizer
from edmips.quant.registry import register


@register("maxabs")
class MaxAbsWeight(WeightQuantizer):
    supported_bits = tuple(range(2, 9))

    @property
    def max_code(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def _scale(self, weight: Tensor) -> Tensor:
        """max|W| / max_code, shaped [C, 1, ...] per channel (a scalar otherwise); detached."""
        w = weight.detach()
        if self.per_channel:
            top = w.flatten(1).abs().amax(1).view(-1, *([1] * (w.dim() - 1)))
        else:
            top = w.abs().amax()
        return top.clamp_min(1e-12) / self.max_code

    def forward(self, weight: Tensor) -> Tensor:
        if self.bits >= FULL_PRECISION:
            return weight
        scale = self._scale(weight)
        return round_ste((weight / scale).clamp(-self.max_code, self.max_code)) * scale

    def integer(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        scale = self._scale(weight)
        codes = (weight.detach() / scale).clamp(-self.max_code, self.max_code).round()
        return codes.to(torch.int64), scale

    def scale(self, weight: Tensor, factor: float = 1.0) -> Tensor:
        return factor * self._scale(weight).flatten()
