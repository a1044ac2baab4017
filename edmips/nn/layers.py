"""Quantized conv and linear layers.

QuantConv2d / QuantLinear have fixed bit-widths (retraining, and the unsearched first and last
layers). MixedConv2d / MixedLinear are EdMIPS's composite layers (search): a softmax selector
over weight bit-widths and a separate one over activation bit-widths, and exactly one
convolution per forward with the composite weight and the composite activation.

A layer holds its quantizers as modules made from registry names (edmips.quant.registry):
`weight_quant` and `input_quant` (the pre-activation position), or one per candidate bit-width
(`weight_quants`, `input_quants`) in a composite layer, which mixes them with the quantizer's
own `mix`; a depthwise conv's input quantizer has one step per channel where the quantizer
learns one (`input_quantizer`). A layer built with `abits=None` has no input quantizer: its
input arrives quantized (the image, 8-bit codes, or a signed quantizer in front of it), and
`aquant` names the quantizer it arrives through. A linear layer with `pool_input=True` quantizes
a feature map, averages it over space and then applies the linear map: the classifier of a
ResNet, with its quantizer before the pool. A conv with an `input_pool` (an average pool)
likewise quantizes, pools, then convolves, so integer inference pools integers.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edmips.quant import EDMIPS, FULL_PRECISION
from edmips.quant.activation import round_ste
from edmips.quant.registry import get

INPUT_BITS = 8  # bit-width of a layer input that arrives quantized (the image)
SELECTORS = ("alpha_w", "alpha_a")  # the composite layers' architecture parameters
# The selectors' first logits, EdMIPS's: equal logits give the uniform softmax whatever their
# value, but float32 rounds the later updates differently from another start.
SELECTOR_INIT = 0.01


def is_depthwise(layer: nn.Module) -> bool:
    """A conv that never sums over channels: one input channel per group."""
    return isinstance(layer, nn.Conv2d) and 1 < layer.groups == layer.in_channels


def per_output_channel(layer: nn.Conv2d, per_input: Tensor) -> Tensor:
    """A depthwise conv's values per input channel, per output channel: output o reads input
    channel o // (out_channels / in_channels)."""
    return per_input.repeat_interleave(layer.out_channels // layer.in_channels)


def input_quantizer(layer: nn.Module, aquant: str, bits: int):
    """The quantizer `aquant` at `bits` for the layer's input: one step per channel where the
    quantizer learns one and the layer is depthwise (it never sums over channels, so each
    channel's step folds into its own accumulators' scale), else one for the tensor."""
    cls = get(aquant)
    if cls.per_channel_input and is_depthwise(layer):
        return cls(bits, channels=layer.in_channels)
    return cls(bits)


def batch_norm_scale(bn: nn.BatchNorm2d) -> Tensor:
    """s = gamma / sqrt(running_var + eps) per channel: what folding bn multiplies weights by."""
    s = torch.rsqrt(bn.running_var + bn.eps)
    return bn.weight * s if bn.affine else s


def is_selector(name: str) -> bool:
    """Whether a parameter name (`layer.alpha_w`) is a selector's logits."""
    return name.rsplit(".", 1)[-1] in SELECTORS


class _FixedBits:
    """One weight quantizer and one input quantizer (None: the input arrives quantized)."""

    def _init_quantizers(self, wbits, abits, per_channel: bool, wquant: str, aquant: str):
        self.wquant, self.aquant = wquant, aquant
        self.weight_quant = get(wquant)(wbits, per_channel)
        self.input_quant = None if abits is None else input_quantizer(self, aquant, abits)

    @property
    def wbits(self) -> int:
        return self.weight_quant.bits

    @wbits.setter
    def wbits(self, bits: int) -> None:
        self.weight_quant = self.weight_quant.with_bits(bits)

    @property
    def abits(self) -> int | None:
        return None if self.input_quant is None else self.input_quant.bits

    @abits.setter
    def abits(self, bits: int) -> None:
        self.input_quant = self.input_quant.with_bits(bits)

    @property
    def per_channel(self) -> bool:
        return self.weight_quant.per_channel

    def quant_input(self, x: Tensor) -> Tensor:
        return x if self.input_quant is None else self.input_quant(x)

    def quant_weight(self) -> Tensor:
        return self.weight_quant(self.weight)

    def integer_weight(self) -> tuple[Tensor, Tensor]:
        """int64 codes and a scale per output channel (or one): codes * scale, the weights."""
        return self.weight_quant.integer(self.weight.detach())

    def input_grid(self) -> nn.Module | None:
        """The quantizer whose grid the layer's input is on: its own, or the shared one its
        input arrives through (`arrives_through`, which edmips.nn.fx_quantize sets on a traced
        network's classifier only); None where neither is known: the bias stays float."""
        if self.input_quant is not None:
            return self.input_quant
        return getattr(self, "arrives_through", None)

    def quant_bias(self, pool_size: int = 1) -> Tensor | None:
        """The bias on the accumulator grid (input step x weight scale), so integer inference
        adds it exactly (a classifier's must be: its logits are the accumulator); float where
        either side is not quantized."""
        grid = self.input_grid()
        if (
            self.bias is None
            or grid is None
            or grid.bits >= FULL_PRECISION
            or self.wbits >= FULL_PRECISION
        ):
            return self.bias
        unit = self.bias_unit(pool_size)
        return round_ste(self.bias / unit) * unit

    def bias_unit(self, pool_size: int = 1) -> Tensor:
        """The accumulator's grid per output channel, input step / pool_size x weight scale
        (a step per input channel, at a depthwise conv's input: per_output_channel)."""
        step = self.input_grid().unit()
        if isinstance(step, Tensor) and step.dim() > 0:
            step = per_output_channel(self, step)
        return self.weight_quant.scale(self.weight, step / pool_size)

    def bit_config(self) -> tuple[int, int]:
        return self.wbits, INPUT_BITS if self.abits is None else self.abits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, wbits={self.wbits}, abits={self.abits}"


class _MixedBits:
    """Selectors over candidate bit-widths (architecture parameters alpha_w, alpha_a), one
    quantizer per candidate."""

    def _init_quantizers(self, wbits, abits, per_channel, shared, wquant: str, aquant: str):
        self.wquant, self.aquant = wquant, aquant
        self.shared = shared
        self.alpha_w = nn.Parameter(torch.full((len(wbits),), SELECTOR_INIT))
        if abits is not None:
            self.alpha_a = nn.Parameter(torch.full((len(abits),), SELECTOR_INIT))
        self.weight_quants = nn.ModuleList(get(wquant)(b, per_channel) for b in wbits)
        self.input_quants = None
        if abits is not None:
            self.input_quants = nn.ModuleList(input_quantizer(self, aquant, b) for b in abits)
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

    @property
    def wbits(self) -> tuple[int, ...]:
        return tuple(q.bits for q in self.weight_quants)

    @property
    def abits(self) -> tuple[int, ...] | None:
        return None if self.input_quants is None else tuple(q.bits for q in self.input_quants)

    @property
    def per_channel(self) -> bool:
        return self.weight_quants[0].per_channel

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
        if self.input_quants is None:
            return x
        return type(self.input_quants[0]).mix(x, self.probs_a(), self.input_quants)

    def quant_weight(self) -> Tensor:
        if self.shared:
            return type(self.weight_quants[0]).mix(self.weight, self.probs_w(), self.weight_quants)
        weights = [self.weight, *self.extra_weights]
        return sum(p * q(w) for p, w, q in zip(self.probs_w(), weights, self.weight_quants))

    def quant_bias(self, pool_size: int = 1) -> Tensor | None:
        return self.bias

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, wbits={self.wbits}, abits={self.abits}, shared={self.shared}"
        )


class _ConvForward:
    """forward = weighted(operands' input, the quantized weight, the bias at operands' pool
    size): the two halves serve what replaces the weights (edmips.ptq.adaround)."""

    def operands(self, x: Tensor) -> tuple[Tensor, int]:
        """What the weights multiply (the input quantized, then pooled), and the pool size
        the bias is on the grid of (1: a conv's pool is a window sum's, in its input's unit)."""
        x = self.quant_input(x)
        if self.input_pool is not None:
            x = self.input_pool(x)
        return x, 1

    def weighted(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        x, pool_size = self.operands(x)
        return self.weighted(x, self.quant_weight(), self.quant_bias(pool_size))


class _LinearForward:
    """As _ConvForward."""

    def operands(self, x: Tensor) -> tuple[Tensor, int]:
        """The input quantized, then averaged over space where the layer pools its input."""
        x = self.quant_input(x)
        if not self.pool_input:
            return x, 1
        return x.mean(dim=(-2, -1)), x.shape[-2] * x.shape[-1]

    def weighted(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        x, pool_size = self.operands(x)
        return self.weighted(x, self.quant_weight(), self.quant_bias(pool_size))


_QUANT_DEFAULTS = dict(per_channel=True, wquant=EDMIPS.weight, aquant=EDMIPS.activation)


class QuantConv2d(_FixedBits, _ConvForward, nn.Conv2d):
    def __init__(
        self,
        *args,
        wbits=FULL_PRECISION,
        abits=FULL_PRECISION,
        input_pool: nn.Module | None = None,
        **kw,
    ):
        quant = {k: kw.pop(k, v) for k, v in _QUANT_DEFAULTS.items()}
        super().__init__(*args, **kw)
        self.input_pool = input_pool
        self._init_quantizers(wbits, abits, **quant)
        self._folded: tuple[nn.BatchNorm2d, ...] = ()  # a tuple: the model holds the module

    @property
    def folded_bn(self) -> nn.BatchNorm2d | None:
        return self._folded[0] if self._folded else None

    def fold(self, bn: nn.BatchNorm2d) -> None:
        """Quantize the weights with the scale of `bn`, the batch norm this conv feeds, folded
        in (edmips.nn.fold): quant_weight() = Q(W * s) / s."""
        if self.bias is not None:
            raise ValueError("a conv with a bias in front of a batch norm is not folded")
        self._folded = (bn,)

    def fold_scale(self) -> Tensor:
        """batch_norm_scale of the folded batch norm, shaped [C, 1, 1, 1]."""
        return batch_norm_scale(self.folded_bn).view(-1, 1, 1, 1)

    def quant_weight(self) -> Tensor:
        if not self._folded:
            return super().quant_weight()
        s = self.fold_scale()
        return self.weight_quant(self.weight * s) / s

    def integer_weight(self) -> tuple[Tensor, Tensor]:
        if not self._folded:
            return super().integer_weight()
        s = self.fold_scale().detach()
        codes, scale = self.weight_quant.integer(self.weight.detach() * s)
        return codes, (scale / s).flatten()


class QuantLinear(_FixedBits, _LinearForward, nn.Linear):
    def __init__(self, *args, wbits=FULL_PRECISION, abits=FULL_PRECISION, pool_input=False, **kw):
        quant = {k: kw.pop(k, v) for k, v in _QUANT_DEFAULTS.items()}
        super().__init__(*args, **kw)
        self.pool_input = pool_input
        self._init_quantizers(wbits, abits, **quant)


class MixedConv2d(_MixedBits, _ConvForward, nn.Conv2d):
    def __init__(
        self,
        *args,
        wbits=(1, 2, 3, 4),
        abits=(2, 3, 4),
        shared=True,
        input_pool: nn.Module | None = None,
        **kw,
    ):
        quant = {k: kw.pop(k, v) for k, v in _QUANT_DEFAULTS.items()}
        super().__init__(*args, **kw)
        self.input_pool = input_pool
        self._init_quantizers(wbits, abits, shared=shared, **quant)


class MixedLinear(_MixedBits, _LinearForward, nn.Linear):
    def __init__(
        self, *args, wbits=(1, 2, 3, 4), abits=(2, 3, 4), shared=True, pool_input=False, **kw
    ):
        quant = {k: kw.pop(k, v) for k, v in _QUANT_DEFAULTS.items()}
        super().__init__(*args, **kw)
        self.pool_input = pool_input
        self._init_quantizers(wbits, abits, shared=shared, **quant)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
MIXED_LAYERS = (MixedConv2d, MixedLinear)
