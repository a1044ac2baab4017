"""Signed activation quantizer, for layer inputs that can be negative.

HWGQ is a ReLU: in front of a layer whose input is signed (a normalized image, a linear
bottleneck, a residual sum) it would change what the network computes. There the input gets
a symmetric quantizer whose range tracks max |x| with a moving average (momentum 0.95, as in
QAT practice): the residual stream's StreamQuant, which at 32 bits passes x through unchanged,
so a converted network at 32 bits is exactly the float one.
"""

from torch import Tensor

from edmips.quant.activation import StreamQuant
from edmips.quant.primitives import FULL_PRECISION


class SignedQuant(StreamQuant):
    def forward(self, x: Tensor) -> Tensor:
        if self.bits >= FULL_PRECISION:
            return x
        return super().forward(x)
