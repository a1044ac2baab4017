"""Quantized conv and linear layers.

QuantConv2d / QuantLinear have fixed bit-widths (retraining, and the unsearched first and last
layers). MixedConv2d / MixedLinear are EdMIPS's composite layers (search): a softmax selector
over weight bit-widths and a separate one over activation bit-widths, and exactly one
convolution per forward with the composite weight and the composite activation.

Every layer quantizes its own input with HWGQ (the pre-activation position), except a layer
built with `abits=None`, whose input arrives already quantized (the image, 8-bit codes).
A linear layer with `pool_input=True` quantizes a feature map, averages it over space and
then applies the linear map: the classifier of a ResNet, with its quantizer before the pool.
A conv with an `input_pool` (an average pool) likewise quantizes, pools, then convolves, so
integer inference pools integers.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edmips.quant import FULL_PRECISION, GAUSS_STEPS, HWGQ_STEPS, hwgq, mixed_hwgq, mixed_weight
from edmips.quant.activation import round_ste
from edmips.quant.primitives import check_bits
from edmips.quant.weight import quantize_weight, weight_std

INPUT_BITS = 8  # bit-width of a layer input that arrives quantized (the image)
SELECTORS = ("alpha_w", "alpha_a")  # the composite layers' architecture parameters


def is_selector(name: str) -> bool:
    """Whether a parameter name (`layer.alpha_w`) is a selector's logits."""
    return name.rsplit(".", 1)[-1] in SELECTORS


class _FixedBits:
    """Fixed weight and activation bit-widths."""

    def _init_bits(self, wbits: int, abits: int | None, per_channel: bool) -> None:
        check_bits(wbits, GAUSS_STEPS)
        if abits is not None:
            check_bits(abits, HWGQ_STEPS)
        self.wbits, self.abits, self.per_channel = wbits, abits, per_channel

    def quant_input(self, x: Tensor) -> Tensor:
        return x if self.abits is None else hwgq(x, self.abits)

    def quant_weight(self) -> Tensor:
        return quantize_weight(self.weight, self.wbits, self.per_channel)

    def quant_bias(self, pool_size: int = 1) -> Tensor | None:
        """The bias on the accumulator grid (input step x weight scale), so integer inference
        adds it exactly; float where either side is not quantized."""
        if (
            self.bias is None
            or self.abits in (None, FULL_PRECISION)
            or self.wbits >= FULL_PRECISION
        ):
            return self.bias
        unit = HWGQ_STEPS[self.abits] / pool_size * GAUSS_STEPS[self.wbits] / 2
        unit = unit * weight_std(self.weight, self.per_channel).flatten()
        return round_ste(self.bias / unit) * unit

    def bit_config(self) -> tuple[int, int]:
        return self.wbits, INPUT_BITS if self.abits is None else self.abits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, wbits={self.wbits}, abits={self.abits}"


class _MixedBits:
    """Selectors over candidate bit-widths (architecture parameters alpha_w, alpha_a)."""

    def _init_bits(self, wbits, abits, per_channel: bool, shared: bool, alpha_init: float):
        for b in wbits:
            check_bits(b, GAUSS_STEPS)
        for b in abits or ():
            check_bits(b, HWGQ_STEPS)
        self.wbits = tuple(wbits)
        self.abits = None if abits is None else tuple(abits)
        self.per_channel, self.shared = per_channel, shared
        self.alpha_w = nn.Parameter(torch.full((len(self.wbits),), alpha_init))
        if self.abits is not None:
            self.alpha_a = nn.Parameter(torch.full((len(self.abits),), alpha_init))
        # Candidate bit-widths as device tensors: expectations never copy from the host.
        self.register_buffer("wbits_tensor", torch.tensor(self.wbits, dtype=torch.float32), False)
        self.register_buffer(
            "abits_tensor", torch.tensor(self.abits_space(), dtype=torch.float32), False
        )
        # Set by the search each step: the selectors' sharpness (inverse temperature) and the
        # budget's price tilt of the logits (edmips/search/budget.py); neutral by default.
        self.register_buffer("sharpness", torch.ones(()), False)
        self.register_buffer("tilt_w", torch.zeros(len(self.wbits)), False)
        self.register_buffer("tilt_a", torch.zeros(len(self.abits_space())), False)
        if not shared:  # EdMIPS eq. 15: one weight tensor per candidate (ablation)
            self.extra_weights = nn.ParameterList(
                nn.Parameter(self.weight.detach().clone()) for _ in self.wbits[1:]
            )

    def logits_w(self) -> Tensor:
        return self.alpha_w * self.sharpness

    def logits_a(self) -> Tensor:
        if self.abits is None:  # one candidate: the bit-width the input arrives with
            return self.alpha_w.new_zeros(1)
        return self.alpha_a * self.sharpness

    def probs_w(self) -> Tensor:
        return torch.softmax(self.logits_w() - self.tilt_w, dim=0)

    def probs_a(self) -> Tensor:
        return torch.softmax(self.logits_a() - self.tilt_a, dim=0)

    def abits_space(self) -> tuple[int, ...]:
        return (INPUT_BITS,) if self.abits is None else self.abits

    def expected_bits(self) -> tuple[Tensor, Tensor]:
        """E[w] and E[a] under the selector softmaxes (EdMIPS eq. 13), differentiable."""
        return (self.probs_w() * self.wbits_tensor).sum(), (
            self.probs_a() * self.abits_tensor
        ).sum()

    def quant_input(self, x: Tensor) -> Tensor:
        return x if self.abits is None else mixed_hwgq(x, self.probs_a(), self.abits)

    def quant_weight(self) -> Tensor:
        if self.shared:
            return mixed_weight(self.weight, self.probs_w(), self.wbits, self.per_channel)
        weights = [self.weight, *self.extra_weights]
        return sum(
            p * quantize_weight(w, b, self.per_channel)
            for p, w, b in zip(self.probs_w(), weights, self.wbits)
        )

    def quant_bias(self, pool_size: int = 1) -> Tensor | None:
        return self.bias

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, wbits={self.wbits}, abits={self.abits}, shared={self.shared}"
        )


class _ConvForward:
    def forward(self, x: Tensor) -> Tensor:
        x = self.quant_input(x)
        if self.input_pool is not None:
            x = self.input_pool(x)
        return self._conv_forward(x, self.quant_weight(), self.quant_bias())


class _LinearForward:
    def forward(self, x: Tensor) -> Tensor:
        x = self.quant_input(x)
        pool_size = 1
        if self.pool_input:
            pool_size = x.shape[-2] * x.shape[-1]
            x = x.mean(dim=(-2, -1))
        return F.linear(x, self.quant_weight(), self.quant_bias(pool_size))


class QuantConv2d(_FixedBits, _ConvForward, nn.Conv2d):
    def __init__(
        self,
        *args,
        wbits=FULL_PRECISION,
        abits=FULL_PRECISION,
        per_channel=True,
        input_pool: nn.Module | None = None,
        **kw,
    ):
        super().__init__(*args, **kw)
        self.input_pool = input_pool
        self._init_bits(wbits, abits, per_channel)


class QuantLinear(_FixedBits, _LinearForward, nn.Linear):
    def __init__(
        self,
        *args,
        wbits=FULL_PRECISION,
        abits=FULL_PRECISION,
        per_channel=True,
        pool_input=False,
        **kw,
    ):
        super().__init__(*args, **kw)
        self.pool_input = pool_input
        self._init_bits(wbits, abits, per_channel)


class MixedConv2d(_MixedBits, _ConvForward, nn.Conv2d):
    def __init__(
        self,
        *args,
        wbits=(1, 2, 3, 4),
        abits=(2, 3, 4),
        per_channel=True,
        shared=True,
        alpha_init=0.01,
        input_pool: nn.Module | None = None,
        **kw,
    ):
        super().__init__(*args, **kw)
        self.input_pool = input_pool
        self._init_bits(wbits, abits, per_channel, shared, alpha_init)


class MixedLinear(_MixedBits, _LinearForward, nn.Linear):
    def __init__(
        self,
        *args,
        wbits=(1, 2, 3, 4),
        abits=(2, 3, 4),
        per_channel=True,
        shared=True,
        alpha_init=0.01,
        pool_input=False,
        **kw,
    ):
        super().__init__(*args, **kw)
        self.pool_input = pool_input
        self._init_bits(wbits, abits, per_channel, shared, alpha_init)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
MIXED_LAYERS = (MixedConv2d, MixedLinear)
