"""HWGQ as a quantizer module: fixed Gaussian-optimal steps, codes 0 .. 2^b - 1 (a ReLU at 32
bits). Its composite over bit-widths is the fused `mixed_hwgq` (one pass, Triton on CUDA)."""

from torch import Tensor

from edmips.quant.activation import hwgq
from edmips.quant.mixed import mixed_hwgq
from edmips.quant.primitives import HWGQ_STEPS, hwgq_codes
from edmips.quant.protocol import ActivationQuantizer
from edmips.quant.registry import register


@register("hwgq")
class HWGQ(ActivationQuantizer):
    supported_bits = tuple(sorted(HWGQ_STEPS))

    @property
    def lowest(self) -> int:
        return 0

    @property
    def num_levels(self) -> int:
        return 2**self.bits

    def unit(self) -> float:
        return HWGQ_STEPS[self.bits]

    def forward(self, x: Tensor) -> Tensor:
        return hwgq(x, self.bits)

    def codes(self, x: Tensor) -> Tensor:
        return hwgq_codes(x, self.bits)

    @classmethod
    def mix(cls, x: Tensor, probs: Tensor, quantizers) -> Tensor:
        return mixed_hwgq(x, probs, tuple(q.bits for q in quantizers))
