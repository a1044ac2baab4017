"""The `int8sim` family's quantizers: integer-arithmetic-only inference (Jacob et al. 2018) as
onnxruntime's QLinearConv computes it, so that `model_int8.onnx` runs its int8 kernels and
agrees with the network to the bit.

QLinearConv requantizes an int32 accumulator as `y = clamp(rne(float32(acc + B) * M) + z)`:
the product rounded to float32, then to the nearest integer, half to even. The network computes
the same thing when

- the activation steps are powers of two (`pow2_relu` after a ReLU, `pow2` signed): a value
  divided by its step is then exact, and the codes round it to float32 before rounding half to
  even, as the kernel does;
- the weight scales are float32 numbers (`maxabs_f32`: per-channel max-abs on the narrow range,
  its scale rounded to float32), so the accumulator's unit `input step x weight scale` and the
  multiplier `M = unit / output step` are float32 numbers and the conv's output `acc x unit` is
  exact in float64;
- the image's codes step by a power of two (edmips.quant.input.InputQuant.round_scale), so
  that the first conv's unit is a float32 number too;
- batch norm after a conv becomes the conv's weights and an int32 bias on the accumulator's grid
  in the network that is lowered (`absorbs_batch_norm`: edmips.nn.fold.absorb_into_bias), in
  every conv of a network that holds these quantizers (the stem's too, whatever its weights).

The moving range is that of `ema` (momentum 0.95); the step is the smallest power of two whose
levels cover it, its exponent taken from the float32 range in every precision, so training and
the float64 reference use the same step.
"""

import torch
from torch import Tensor

from edmips.quant.ema import MovingMax
from edmips.quant.maxabs import MaxAbsWeight
from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.registry import register

INT8_BITS = tuple(range(2, 9))  # codes held in uint8 / int8


def pow2_step(running_max: Tensor, qmax: int) -> Tensor:
    """The smallest power of two s with s * qmax >= running_max (float32 arithmetic)."""
    mantissa, exponent = torch.frexp(running_max.float() / qmax)  # ratio = m 2^e, m in [0.5, 1)
    exponent = exponent - (mantissa == 0.5).to(exponent.dtype)  # an exact power of two
    return torch.ldexp(torch.ones_like(mantissa), exponent)


def rne_float32(x: Tensor) -> Tensor:
    """x rounded to float32, then to the nearest integer, half to even (in x's dtype)."""
    return x.float().round().to(x.dtype)


class _Pow2(MovingMax):
    supported_bits = INT8_BITS
    absorbs_batch_norm = True
    power_of_two_image = True
    relu = False  # a ReLU in front of the codes (the unsigned member)

    def unit(self) -> Tensor:
        # In the range's dtype: what a pool's division then computes in is the network's.
        return pow2_step(self.running_max, self.qmax).to(self.running_max.dtype)

    def codes(self, x: Tensor) -> Tensor:
        return rne_float32(x / self.unit().to(x.dtype)).clamp(self.lowest, self.qmax)

    def forward(self, x: Tensor) -> Tensor:
        if self.relu:
            x = torch.relu(x)
        if self.bits >= FULL_PRECISION:
            return x
        self.track(x)
        step = self.unit().to(x.dtype)
        scaled = x / step
        inside = (scaled >= self.lowest) & (scaled <= self.qmax)
        # The codes' value, and a straight-through gradient inside the clip.
        return (self.codes(x) * step).detach() + (x - x.detach()) * inside


@register("pow2_relu")
class Pow2ReLU(_Pow2):
    """A ReLU, then codes 0 .. 2^b - 1 on a power-of-two step."""

    relu = True


@register("pow2")
class Pow2Signed(_Pow2):
    """Codes -(2^(b-1) - 1) .. 2^(b-1) - 1 on a power-of-two step: signed inputs and the
    residual streams."""

    signed = True


@register("maxabs_f32")
class MaxAbsF32Weight(MaxAbsWeight):
    """Per-channel max-abs weights whose scale is a float32 number in every precision."""

    def _scale(self, weight: Tensor) -> Tensor:
        return super()._scale(weight).float().to(weight.dtype)
