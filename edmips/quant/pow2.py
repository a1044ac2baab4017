"""Integer-arithmetic-only inference (Jacob et al. 2018) as onnxruntime's QLinearConv computes
it: each family's int8 form (`deploy=int8`), so that `model_int8.onnx` runs the int8
kernels and agrees with the network to the bit.

QLinearConv requantizes an int32 accumulator as `y = clamp(rne(float32(acc + B) * M) + z)`:
the product rounded to float32, then to the nearest integer, half to even. The network computes
the same thing when

- the activation steps are powers of two: a value divided by its step is then exact, and the
  codes round it to float32 before rounding half to even, as the kernel does (`Int8Arithmetic`);
- the weight scales are float32 numbers in every precision, so the accumulator's unit `input
  step x weight scale` and the multiplier `M = unit / output step` are float32 numbers and the
  conv's output `acc x unit` is exact in float64;
- the image's codes step by a power of two (edmips.quant.input.InputQuant.round_scale), so
  that the first conv's unit is a float32 number too;
- batch norm after a conv becomes the conv's weights and an int32 bias on the accumulator's grid
  in the network that is lowered (`absorbs_batch_norm`: edmips.nn.fold.absorb_into_bias), in
  every conv of a network that holds these quantizers (the stem's too, whatever its weights).

Each quantizer here is the int8 form of one of another family's (`int8_of`, its registry name;
edmips.quant.registry.Family.int8 looks them up): the same quantizer with its step rounded to the
power of two nearest in log2 (a learned step through a straight-through gradient; a moving
range's step from its float32 value in every precision, so training and the float64 reference
use the same step). Nearest rather than the power of two that covers a moving range: that one
is up to twice the range's step, and cost qatsim's W4A4 ResNet-20 1.1 points where nearest
cost none (bench/README.md). The `int8sim` family is `qatsim`'s int8 form.
"""

import math

import torch
from torch import Tensor

from edmips.quant.clipped import ClippedReLU, ClippedSigned
from edmips.quant.ema import MovingMax
from edmips.quant.gaussian import GaussWeight
from edmips.quant.halfwave import HWGQ
from edmips.quant.learned import LearnedStepReLU, LearnedStepSigned
from edmips.quant.maxabs import MaxAbsWeight
from edmips.quant.primitives import FULL_PRECISION, GAUSS_STEPS, weight_levels
from edmips.quant.protocol import ActivationQuantizer, WeightQuantizer
from edmips.quant.registry import register
from edmips.quant.weight import weight_std

INT8_BITS = tuple(range(2, 9))  # codes held in uint8 / int8


def nearest_pow2(step: Tensor) -> Tensor:
    """The power of two nearest to step in log2 (in step's dtype)."""
    mantissa, exponent = torch.frexp(step.float())  # step = m 2^e, m in [0.5, 1)
    exponent = exponent - (mantissa < math.sqrt(0.5)).to(exponent.dtype)
    return torch.ldexp(torch.ones_like(mantissa), exponent).to(step.dtype)


def rne_float32(x: Tensor) -> Tensor:
    """x rounded to float32, then to the nearest integer, half to even (in x's dtype)."""
    return x.float().round().to(x.dtype)


class _Through(torch.autograd.Function):
    # A Function rather than `x + (f(x) - x).detach()`, whose float error would move the value.
    @staticmethod
    def forward(ctx, x: Tensor, f) -> Tensor:
        return f(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def through(x: Tensor, f) -> Tensor:
    """f(x) in the forward, the identity's gradient in the backward."""
    return _Through.apply(x, f)


class Int8Arithmetic:
    """An activation quantizer's int8 form (a mixin before the quantizer's class): its step
    the nearest power of two, its codes rounded as QLinearConv rounds them."""

    absorbs_batch_norm = True
    power_of_two_image = True
    int8_of = ""  # the registry name of the quantizer this is the int8 form of

    def unit(self) -> float | Tensor:
        step = super().unit()
        if isinstance(step, Tensor):
            return nearest_pow2(step)
        # A fixed step (HWGQ's) stays a Python float: a float32 tensor would make a pool's
        # division by its size (step / pool_size, the classifier's bias grid) float32's.
        return float(nearest_pow2(torch.tensor(step)))

    def quantize(self, x: Tensor, step: Tensor) -> Tensor:
        step = through(torch.as_tensor(step, dtype=x.dtype, device=x.device), nearest_pow2)
        return through((x / step).clamp(self.lowest, self.qmax), rne_float32) * step

    def levels(self, x: Tensor, step: Tensor) -> Tensor:
        step = nearest_pow2(torch.as_tensor(step, dtype=x.dtype, device=x.device))
        return rne_float32(x / step).clamp(self.lowest, self.qmax)


class _MovingPow2(Int8Arithmetic, MovingMax):
    supported_bits = INT8_BITS
    relu = False  # a ReLU in front of the codes (the unsigned member)

    def unit(self) -> Tensor:
        # In the range's dtype: what a pool's division then computes in is the network's.
        return nearest_pow2(self.running_max.float() / self.qmax).to(self.running_max.dtype)

    def codes(self, x: Tensor) -> Tensor:
        return self.levels(x, self.unit())

    def forward(self, x: Tensor) -> Tensor:
        if self.relu:
            x = torch.relu(x)
        if self.bits >= FULL_PRECISION:
            return x
        self.track(x)
        return self.quantize(x, self.unit())


@register("pow2_relu")
class Pow2ReLU(_MovingPow2):
    """A ReLU, then codes 0 .. 2^b - 1 on the power of two nearest the moving range's step."""

    int8_of = "ema_relu"
    relu = True


@register("pow2")
class Pow2Signed(_MovingPow2):
    """Codes -(2^(b-1) - 1) .. 2^(b-1) - 1 on a power-of-two step: signed inputs and the
    residual streams."""

    int8_of = "ema"
    signed = True


@register("hwgq_int8")
class HWGQInt8(Int8Arithmetic, HWGQ):
    """HWGQ on the power of two nearest its step. The batch norm in front of it takes up the
    change of scale in training, as it would any fixed step."""

    int8_of = "hwgq"

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(x)
        if self.bits >= FULL_PRECISION:
            return x
        return self.quantize(x, self.unit())

    def codes(self, x: Tensor) -> Tensor:
        return self.levels(x, self.unit())

    mix = classmethod(ActivationQuantizer.mix.__func__)


class _ClippedPow2(Int8Arithmetic):
    """A calibrated clip's step made the power of two just below or just above it, whichever
    quantizes the calibration sample with the smaller squared error."""

    def finish_calibration(self, method) -> float:
        sample = self.statistics.sample() if self.statistics is not None else torch.zeros(0)
        step = super().finish_calibration(method) / self.qmax
        low = 2.0 ** math.floor(math.log2(step))
        x = sample.double() if self.signed else sample.double().clamp_min(0)

        def error(s: float) -> float:
            return float(((x / s).round().clamp(self.lowest, self.qmax) * s - x).square().sum())

        if x.numel():
            step = min((low, 2 * low), key=error)
        else:  # nothing seen: the nearest
            step = float(nearest_pow2(torch.tensor(step)))
        self.alpha.fill_(step * self.qmax)  # exact: qmax has at most 8 bits
        return step * self.qmax


@register("clipped_int8")
class ClippedInt8(_ClippedPow2, ClippedReLU):
    int8_of = "clipped"


@register("clipped_signed_int8")
class ClippedSignedInt8(_ClippedPow2, ClippedSigned):
    int8_of = "clipped_signed"


@register("lsq_int8")
class LearnedStepInt8(Int8Arithmetic, LearnedStepReLU):
    int8_of = "lsq"


@register("lsq_signed_int8")
class LearnedStepSignedInt8(Int8Arithmetic, LearnedStepSigned):
    int8_of = "lsq_signed"


@register("maxabs_f32")
class MaxAbsF32Weight(MaxAbsWeight):
    """Per-channel max-abs weights whose scale is a float32 number in every precision."""

    int8_of = "maxabs"

    def _scale(self, weight: Tensor) -> Tensor:
        return super()._scale(weight).float().to(weight.dtype)


@register("gauss_int8")
class GaussInt8Weight(GaussWeight):
    """Gaussian-step weights whose scale is a float32 number in every precision. At 8 bits the
    levels are the step's multiples up to 127 (mid-tread: mid-rise's odd codes would reach 255,
    beyond int8), which clips at 3.9 standard deviations as mid-rise's 128 steps do."""

    int8_of = "gauss"

    def _step(self, weight: Tensor) -> Tensor:
        """The codes' scale: half the step (mid-rise codes are odd), the step at 8 bits."""
        step = GAUSS_STEPS[self.bits] * (1.0 if self.bits == 8 else 0.5)
        return (step * weight_std(weight, self.per_channel)).float().to(weight.dtype)

    def forward(self, weight: Tensor) -> Tensor:
        if self.bits >= FULL_PRECISION:
            return weight
        codes, scale = self.integer(weight)
        return through(weight, lambda w: codes.to(w.dtype) * scale)

    def integer(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        w = weight.detach()
        scale = self._step(w)
        if self.bits == 8:
            codes = (w / scale).round().clamp(-self.max_code, self.max_code)
        else:
            codes = 2 * weight_levels(w, 2 * scale, self.bits)
        return codes.round().to(torch.int64), scale

    def scale(self, weight: Tensor, factor: float = 1.0) -> Tensor:
        return factor * self._step(weight.detach()).flatten()

    @property
    def max_code(self) -> int:
        return 127 if self.bits == 8 else 2**self.bits - 1

    mix = classmethod(WeightQuantizer.mix.__func__)
