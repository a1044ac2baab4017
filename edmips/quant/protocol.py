"""What every quantizer is to the rest of the package: the layers, the search and the export.

An activation quantizer maps a tensor onto `code * unit()` with integer codes in
[lowest, lowest + num_levels - 1]; its forward is that fake quantization with a straight-through
gradient, `codes(x)` the integer levels by the forward's own arithmetic. A weight quantizer
gives integer codes and a per-output-channel scale with `forward(w) == codes * scale`. Both know
the bit-widths they take (`supported_bits`; 32, full precision, is accepted besides and
quantizes nothing) and how to mix candidates (`mix`): the search's composite, by default the
plain selector-weighted sum over one quantizer per candidate bit-width.

A quantizer is made from its registry name and a bit-width (edmips.quant.registry), so one
module defines it and nothing else in the package names its class.
"""

import copy

from torch import Tensor, nn

from edmips.quant.activation import round_ste
from edmips.quant.primitives import FULL_PRECISION


def check_bits(cls, bits: int) -> None:
    if bits != FULL_PRECISION and bits not in cls.supported_bits:
        raise ValueError(
            f"{cls.name}: unsupported bit-width {bits}: choose from "
            f"{list(cls.supported_bits)} or {FULL_PRECISION}"
        )


class Quantizer(nn.Module):
    """Common to activation and weight quantizers: a name in the registry and a bit-width."""

    name = "?"  # set by edmips.quant.registry.register
    supported_bits: tuple[int, ...] = ()

    def __init__(self, bits: int):
        super().__init__()
        check_bits(type(self), bits)
        self.bits = bits

    def with_bits(self, bits: int) -> "Quantizer":
        """This quantizer at another bit-width, its state (a tracked range) kept."""
        check_bits(type(self), bits)
        new = copy.deepcopy(self)
        new.bits = bits
        return new

    def is_calibrated(self) -> bool:
        """False while a range tracked from data has seen none."""
        return True

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class ActivationQuantizer(Quantizer):
    signed = False  # whether codes go below zero
    calibrates = False  # whether the range is tracked from data (then it needs calibrating)
    defines_input = False  # the image's quantizer, whose codes are the integer graph's input
    calibrating = False  # set by edmips.quant.calibrate.calibration
    # Whether it takes `channels=C` for a step per channel (unit() then [C]), which a layer
    # uses where its input channels need not share one grid (edmips.nn.layers.input_quantizer).
    per_channel_input = False
    # Whether, in a network that holds it, each batch norm after a conv becomes the conv's
    # weights and a bias on its accumulator's grid where it is lowered
    # (edmips.nn.fold.absorb_into_bias): requantization is then one multiplier per channel.
    absorbs_batch_norm = False
    # Whether, in a network of its family, the image's codes step by a power of two
    # (edmips.quant.input.InputQuant.round_scale): the first conv's unit is then a float32
    # number like every other conv's.
    power_of_two_image = False

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def codes(self, x: Tensor) -> Tensor:
        """The integer levels of x (same dtype as x), by the forward's own arithmetic."""
        raise NotImplementedError

    def unit(self) -> float | Tensor:
        """The step between levels: value = code * unit."""
        raise NotImplementedError

    @property
    def lowest(self) -> int:
        raise NotImplementedError

    @property
    def num_levels(self) -> int:
        raise NotImplementedError

    def updates_range(self) -> bool:
        """Whether this forward moves the tracked range: in training, or while calibrating."""
        return self.training or self.calibrating

    def grid(self):
        """Equal for two quantizers that quantize any tensor alike: one with state is only
        itself, one without is its class and bit-width."""
        return self if len(self.state_dict()) else (type(self), self.bits)

    @classmethod
    def mix(cls, x: Tensor, probs: Tensor, quantizers) -> Tensor:
        """sum_j p_j * Q_j(x) over one quantizer per candidate bit-width."""
        return sum(p * q(x) for p, q in zip(probs, quantizers))


class UniformActivation(ActivationQuantizer):
    """Codes on one step: 0 .. 2^b - 1 unsigned, the narrow range -(2^(b-1) - 1) ..
    2^(b-1) - 1 signed (no code -2^(b-1), so a sign folds into the thresholds)."""

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def lowest(self) -> int:
        return -self.qmax if self.signed else 0

    @property
    def num_levels(self) -> int:
        return self.qmax - self.lowest + 1

    def quantize(self, x: Tensor, step: Tensor) -> Tensor:
        """The codes of x on `step` times the step: the gradient straight through inside the
        range for x, and LSQ's for a step that learns."""
        return round_ste((x / step).clamp(self.lowest, self.qmax)) * step

    def levels(self, x: Tensor, step: Tensor) -> Tensor:
        """The integer codes of x on `step` (same dtype as x), by `quantize`'s arithmetic."""
        return (x / step).clamp(self.lowest, self.qmax).round()


class WeightQuantizer(Quantizer):
    def __init__(self, bits: int, per_channel: bool = True):
        super().__init__(bits)
        self.per_channel = per_channel

    def forward(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def integer(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """int64 codes and the scale per output channel (or one): forward(w) == codes * scale."""
        raise NotImplementedError

    def scale(self, weight: Tensor, factor: float = 1.0) -> Tensor:
        """factor times the codes' scale, flat per output channel, as the quantizer rounds it
        (the grid of a bias: input unit x weight scale)."""
        raise NotImplementedError

    @property
    def max_code(self) -> int:
        """The largest |code|."""
        raise NotImplementedError

    @classmethod
    def mix(cls, weight: Tensor, probs: Tensor, quantizers) -> Tensor:
        """sum_i q_i * Q_i(W) over one quantizer per candidate bit-width."""
        return sum(p * q(weight) for p, q in zip(probs, quantizers))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


def quantizers(model: nn.Module):
    """(name, quantizer) for every activation or weight quantizer inside model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Quantizer)]
