"""The Gaussian-step weight quantizer as a module (edmips.quant.weight has the arithmetic):
codes are the odd integers in [-(2^b - 1), 2^b - 1], scale = c_b * std / 2 per output channel
(or of the whole tensor). Its composite over bit-widths is the fused `mixed_weight`."""

from torch import Tensor

from edmips.quant.mixed import mixed_weight
from edmips.quant.primitives import GAUSS_STEPS
from edmips.quant.protocol import WeightQuantizer
from edmips.quant.registry import register
from edmips.quant.weight import integer_weight, quantize_weight, weight_std


@register("gauss")
class GaussWeight(WeightQuantizer):
    supported_bits = tuple(sorted(GAUSS_STEPS))

    def forward(self, weight: Tensor) -> Tensor:
        return quantize_weight(weight, self.bits, self.per_channel)

    def integer(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return integer_weight(weight, self.bits, self.per_channel)

    def scale(self, weight: Tensor, factor: float = 1.0) -> Tensor:
        # The constants multiply first, in Python floats, then the std: one float32 rounding.
        return factor * GAUSS_STEPS[self.bits] / 2 * weight_std(weight, self.per_channel).flatten()

    @property
    def max_code(self) -> int:
        return 2**self.bits - 1

    @classmethod
    def mix(cls, weight: Tensor, probs: Tensor, quantizers) -> Tensor:
        per_channel = quantizers[0].per_channel
        return mixed_weight(weight, probs, tuple(q.bits for q in quantizers), per_channel)
