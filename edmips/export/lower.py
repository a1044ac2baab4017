"""Lower a trained pre-activation ResNet to the integer graph.

The network is copied to float64 on the CPU: that copy is the fake-quantized reference the
integer graph must reproduce. Each quantizer between layers becomes a threshold node whose
thresholds are bisected on the copy's own float64 arithmetic (input unit x scale, batch norm,
quantizer), so the integer graph and the reference agree on every level.
"""

import copy

import numpy as np
import torch
from torch import Tensor, nn

from edmips.export.graph import Graph
from edmips.export.thresholds import accumulator_bits, compute_thresholds
from edmips.models.resnet import PreActResNet
from edmips.nn.layers import MIXED_LAYERS, QuantConv2d, QuantLinear
from edmips.quant import FULL_PRECISION, HWGQ_STEPS, integer_weight
from edmips.quant.activation import StreamQuant, hwgq_codes

MAX_ACC_BITS = 62  # int64 arithmetic in the runtime


class ExportError(ValueError):
    """The network cannot be made integer-only; the message names the layer and the reason."""


class _Tensor:
    """An integer tensor of the graph: its name, range and the float value of one unit."""

    def __init__(self, name: str, lo: int, hi: int, unit: Tensor | float):
        self.name, self.lo, self.hi = name, int(lo), int(hi)
        self.unit = torch.as_tensor(unit, dtype=torch.float64)


class _Lowering:
    def __init__(self, model: PreActResNet, input_shape):
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.graph = Graph(getattr(model, "name", type(model).__name__), list(input_shape))

    # -- nodes -------------------------------------------------------------------------------
    def requant(self, x: _Tensor, name: str, channels: int, quantizer, bn: nn.Module | None = None):
        """Threshold node for quantizer(bn(x * unit)); quantizer is HWGQ bits or a StreamQuant."""
        unit = x.unit.expand(channels)[:, None]
        if isinstance(quantizer, StreamQuant):
            qmax = quantizer.qmax
            num_levels, out_bias, out_unit = 2 * qmax + 1, -qmax, quantizer.scale().double()

            def codes(y):
                return quantizer.codes(y) + qmax
        else:
            num_levels, out_bias, out_unit = 2**quantizer, 0, HWGQ_STEPS[quantizer]

            def codes(y):
                return hwgq_codes(y, quantizer)

        def levels(v: Tensor) -> Tensor:
            y = v * unit
            if bn is not None:  # the module itself, in float64: the reference's own arithmetic
                y = bn(y.t()[:, :, None, None])[:, :, 0, 0].t()
            return codes(y)

        thresholds, sign = compute_thresholds(levels, channels, num_levels, x.lo, x.hi)
        dtype = np.int32 if max(abs(x.lo), abs(x.hi)) < 2**31 - 1 else np.int64
        self.graph.add(
            "threshold",
            name,
            [x.name],
            out_bias=out_bias,
            range=[out_bias, out_bias + num_levels - 1],
            scale=float(out_unit),
            arrays={
                "thresholds": thresholds.numpy().astype(dtype),
                "sign": sign.numpy().astype(np.int8),
            },
        )
        return _Tensor(name, out_bias, out_bias + num_levels - 1, out_unit)

    def conv(self, x: _Tensor, layer: QuantConv2d) -> _Tensor:
        name = self.names[layer]
        codes, scale = integer_weight(layer.weight, layer.wbits, layer.per_channel)
        fan_in = layer.weight[0].numel()
        bits = accumulator_bits(fan_in, x.lo, x.hi, 2**layer.wbits - 1)
        self._check_width(name, bits)
        peak = 2 ** (bits - 1)
        self.graph.add(
            "conv",
            name,
            [x.name],
            stride=list(layer.stride),
            padding=list(layer.padding),
            groups=layer.groups,
            acc_bits=bits,
            range=[-peak, peak - 1],
            scale=None,
            arrays={"weight": codes.numpy().astype(int_dtype(2**layer.wbits))},
        )
        return _Tensor(name, -peak, peak - 1, x.unit * scale.flatten())

    def quantized_input(self, x: _Tensor, layer, bn: nn.Module) -> _Tensor:
        """The layer's own HWGQ on bn(x): a threshold node feeding the layer."""
        return self.requant(x, f"{self.names[layer]}.input", bn.num_features, layer.abits, bn)

    # -- the network ---------------------------------------------------------------------------
    def lower(self) -> Graph:
        m = self.model
        zero_point = m.input_quant.zero_point.flatten().round().long()
        lo, hi = -int(zero_point.max()), 255 - int(zero_point.min())
        self.graph.add(
            "input",
            "input",
            [],
            range=[lo, hi],
            scale=m.input_quant.scale,
            arrays={"zero_point": zero_point.numpy().astype(np.int16)},
        )
        x = _Tensor("input", lo, hi, m.input_quant.scale)
        x = self.requant(self.conv(x, m.conv1), "stem", m.conv1.out_channels, m.act1.bits, m.bn1)
        if isinstance(m.maxpool, nn.MaxPool2d):
            p = m.maxpool
            self.graph.add(
                "maxpool",
                "maxpool",
                [x.name],
                kernel=p.kernel_size,
                stride=p.stride,
                padding=p.padding,
                range=[x.lo, x.hi],
                scale=float(x.unit),
            )
            x = _Tensor("maxpool", x.lo, x.hi, x.unit)
        channels = m.conv1.out_channels
        for i, stage in enumerate(m.stages):
            x = self.requant(x, f"stages.{i}.entry", channels, stage.quant)
            for block in stage.blocks():
                x = self.block(x, block, stage.quant)
                channels = x_channels(block)
        return self.head(x)

    def block(self, x: _Tensor, block: nn.Module, quant: StreamQuant) -> _Tensor:
        bns = [block.bn0] + [getattr(block, f"bn{i}") for i in range(1, len(block.convs))]
        y = x
        for conv_name, bn in zip(block.convs, bns):
            layer = getattr(block, conv_name)
            y = self.conv(self.quantized_input(y, layer, bn), layer)
        name = self.names[block]
        y = self.requant(y, f"{name}.branch", layer.out_channels, quant)
        shortcut = x
        if block.downsample is not None:
            d = block.downsample
            acc = self.conv(self.quantized_input(x, d, block.bn0), d)
            shortcut = self.requant(
                acc, f"{name}.shortcut", d.out_channels, quant, block.downsample_bn
            )
        self.graph.add(
            "add", f"{name}.add", [y.name, shortcut.name], range=[y.lo, y.hi], scale=float(y.unit)
        )
        return _Tensor(f"{name}.add", y.lo, y.hi, y.unit)

    def head(self, x: _Tensor) -> Graph:
        m, fc = self.model, self.model.fc
        h = self.quantized_input(x, fc, m.bn_final)
        _, height, width = fc.cost.input_shape
        pool = height * width
        self.graph.add("sumpool", "pool", [h.name], range=[0, h.hi * pool], scale=None)
        codes, scale = integer_weight(fc.weight, fc.wbits, fc.per_channel)
        unit = (h.unit / pool * scale.flatten()).expand(fc.out_features)
        bias = torch.round(fc.quant_bias(pool).detach() / unit).long()
        bits = accumulator_bits(
            fc.in_features * pool, 0, h.hi, 2**fc.wbits - 1, int(bias.abs().max())
        )
        self._check_width("fc", bits)
        self.graph.add(
            "linear",
            "fc",
            ["pool"],
            acc_bits=bits,
            scale=unit.tolist(),
            range=[-(2 ** (bits - 1)), 2 ** (bits - 1) - 1],
            arrays={"weight": codes.numpy().astype(int_dtype(2**fc.wbits)), "bias": bias.numpy()},
        )
        return self.graph

    def _check_width(self, name: str, bits: int) -> None:
        if bits > MAX_ACC_BITS:
            raise ExportError(f"layer {name}: a {bits}-bit accumulator exceeds {MAX_ACC_BITS} bits")


def x_channels(block: nn.Module) -> int:
    return getattr(block, block.convs[-1]).out_channels


def int_dtype(magnitude: int):
    return np.int8 if magnitude < 128 else np.int16 if magnitude < 2**15 else np.int32


def check_exportable(model: nn.Module) -> None:
    """Refuse, naming the layer and the reason, what integer inference cannot reproduce."""
    if not isinstance(model, PreActResNet):
        raise ExportError(
            f"model {getattr(model, 'name', type(model).__name__)}: the integer exporter "
            "knows edmips's pre-activation ResNets only"
        )
    for name, layer in model.named_modules():
        if isinstance(layer, MIXED_LAYERS):
            raise ExportError(
                f"layer {name}: a composite search layer; give it fixed bit-widths "
                "(retrain the found architecture) before export"
            )
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            if layer.wbits >= FULL_PRECISION:
                raise ExportError(f"layer {name}: weights are not quantized (32 bits)")
            if layer.abits == FULL_PRECISION:
                raise ExportError(f"layer {name}: input activations are not quantized (32 bits)")
            if layer.bias is not None and isinstance(layer, QuantConv2d):
                raise ExportError(
                    f"layer {name}: a conv bias has no integer grid here; "
                    "fold it into the batch norm that follows"
                )
    for name, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and not hasattr(m, "cost"):
            raise ExportError(f"layer {name}: input shape unknown; run complexity.measure first")
        if isinstance(m, StreamQuant) and not bool(m.initialized):
            raise ExportError(f"quantizer {name}: range never calibrated (train the network first)")


def reference_copy(model: nn.Module) -> nn.Module:
    """The float64 CPU copy, in eval mode, that the integer graph reproduces."""
    return copy.deepcopy(model).cpu().double().eval()


@torch.no_grad()
def lower(model: nn.Module, input_shape) -> Graph:
    check_exportable(model)
    return _Lowering(reference_copy(model), input_shape).lower()
