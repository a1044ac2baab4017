"""Symmetric max-abs weights, for post-training quantization: per output channel (or over the
whole tensor) scale = max|W_c| / (2^(b-1) - 1) and codes round(W / scale) in the narrow range
[-(2^(b-1) - 1), 2^(b-1) - 1]. No clipping: the largest weight is a level.

Two refinements of the grid are state set after calibration (edmips.ptq), not kept in the
state dict (a float network's weights load into the quantizer as they are):

- per-channel bits (`set_channel_bits`): channel o takes M_o bits, max code 2^(M_o-1) - 1;
  the integer weight tensor holds each channel's own codes, on its own scale.
- bias correction (`correct_bias`): channel o's weights become the affine map of its codes
  a_o * codes + c_o that restores the float weights' mean (and std). The constant is held on
  a grid 2^p times finer than a_o, c_o ~= k_o * a_o / 2^p, so the weights stay integers,
  `codes * 2^p + k_o` on the scale a_o / 2^p: exact, p bits wider than the b-bit codes.
"""

import torch
from torch import Tensor

from edmips.quant.activation import round_ste
from edmips.quant.primitives import FULL_PRECISION
from edmips.quant.protocol import WeightQuantizer
from edmips.quant.registry import register

BIAS_CORRECTIONS = ("none", "mean", "mean_var")


def _per_channel(t: Tensor, weight: Tensor) -> Tensor:
    return t.view(-1, *([1] * (weight.dim() - 1)))


@register("maxabs")
class MaxAbsWeight(WeightQuantizer):
    supported_bits = tuple(range(2, 9))

    def __init__(self, bits: int, per_channel: bool = True):
        super().__init__(bits, per_channel)
        self._clear()

    def _clear(self) -> None:
        empty = torch.zeros(0, dtype=torch.int64)
        self.register_buffer("channel_bits", empty.clone(), persistent=False)  # none: self.bits
        self.register_buffer("offset", empty.clone(), persistent=False)  # k_o; none: uncorrected
        self.register_buffer("fine_step", torch.zeros(0), persistent=False)  # a_o / 2^p
        self.fine_bits = 0  # p

    def with_bits(self, bits: int) -> "MaxAbsWeight":
        new = super().with_bits(bits)
        new._clear()  # per-channel bits and a correction belong to the grid they were set on
        return new

    @property
    def corrected(self) -> bool:
        return self.offset.numel() > 0

    def channel_max_codes(self) -> Tensor | int:
        """The largest |code| of each channel (a tensor), or of every channel (an int)."""
        if self.channel_bits.numel():
            return 2 ** (self.channel_bits - 1) - 1
        return 2 ** (self.bits - 1) - 1

    @property
    def max_code(self) -> int:
        top = self.channel_max_codes()
        if self.corrected:
            return int((top * 2**self.fine_bits + self.offset.abs()).max())
        return int(top.max()) if isinstance(top, Tensor) else top

    def _top(self, weight: Tensor) -> Tensor:
        top = self.channel_max_codes()
        return _per_channel(top.to(weight.dtype), weight) if isinstance(top, Tensor) else top

    def _scale(self, weight: Tensor) -> Tensor:
        """max|W| / max_code, shaped [C, 1, ...] per channel (a scalar otherwise); detached."""
        w = weight.detach()
        if self.per_channel or self.channel_bits.numel():
            top = _per_channel(w.flatten(1).abs().amax(1), w)
        else:
            top = w.abs().amax()
        return top.clamp_min(1e-12) / self._top(weight)

    def _levels(self, weight: Tensor, scale: Tensor) -> Tensor:
        """Clamped, unrounded codes: weight / scale within each channel's narrow range."""
        top = self._top(weight)
        return (weight / scale).clamp(-top, top)

    def _fine(self, codes: Tensor, weight: Tensor) -> Tensor:
        """The corrected integer weights `codes * 2^p + k_o` (as codes' dtype)."""
        return codes * 2**self.fine_bits + _per_channel(self.offset, weight).to(codes.dtype)

    def forward(self, weight: Tensor) -> Tensor:
        if self.bits >= FULL_PRECISION:
            return weight
        codes = round_ste(self._levels(weight, self._scale(weight)))
        if self.corrected:
            return self._fine(codes, weight) * _per_channel(self.fine_step, weight).to(weight.dtype)
        return codes * self._scale(weight)

    def integer(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        w = weight.detach()
        codes = self._levels(w, self._scale(w)).round().to(torch.int64)
        if self.corrected:
            return self._fine(codes, w), _per_channel(self.fine_step, w).to(w.dtype)
        return codes, self._scale(w)

    def scale(self, weight: Tensor, factor: float = 1.0) -> Tensor:
        if self.corrected:
            return factor * self.fine_step.to(weight.dtype)
        return factor * self._scale(weight).flatten()

    def set_channel_bits(self, bits: Tensor) -> None:
        """Channel o quantized to bits[o] (2 to 8; one per output channel); drops a correction."""
        if bits.numel() and not (2 <= int(bits.min()) and int(bits.max()) <= 8):
            raise ValueError(f"{self.name}: per-channel bits must lie in [2, 8]")
        self._clear()
        self.channel_bits = bits.detach().to(torch.int64).clone()

    def correct_bias(self, weight: Tensor, mode: str, fine_bits: int) -> None:
        """Channel o's weights a_o * codes + c_o, with the float weights' mean (`mean`), and
        std (`mean_var`); c_o on the grid a_o / 2^fine_bits. `none` removes a correction."""
        if mode not in BIAS_CORRECTIONS:
            raise ValueError(f"bias correction {mode!r}: choose from {', '.join(BIAS_CORRECTIONS)}")
        self.offset, self.fine_step, self.fine_bits = self.offset[:0], self.fine_step[:0], 0
        if mode == "none":
            return
        w = weight.detach()
        scale = self._scale(w)  # the grid the forward rounds on, in the weights' own dtype
        codes = self._levels(w, scale).round().flatten(1).double()
        s = scale.double().flatten().expand(w.shape[0])
        quantized, w = codes * s[:, None], w.double().flatten(1)
        gain = torch.ones_like(s)
        if mode == "mean_var":
            spread = quantized.std(1)
            gain = torch.where(spread > 0, w.std(1) / spread.clamp_min(1e-300), gain)
        step = s * gain
        constant = w.mean(1) - quantized.mean(1) * gain
        self.offset = torch.round(constant * 2**fine_bits / step).to(torch.int64)
        self.fine_step = (step / 2**fine_bits).to(weight.dtype)
        self.fine_bits = fine_bits
