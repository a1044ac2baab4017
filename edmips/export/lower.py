"""Lower a trained fixed-bit network to the integer graph, from its torch.fx graph.

The network's float64 copy, traced (edmips.export.prepare), is the fake-quantized reference
the integer graph must reproduce. Its graph is walked in order, and every value the network
computes is held as a function of one integer tensor of the integer graph:

    value = f_c(v)    v an integer tensor, f_c a monotonic float64 function per channel

f starts as `v * unit` where a quantizer, an integer add or a pool has just made v, and grows
with every elementwise step after it (a conv's bias, batch norm, ReLU, the normalization of
the image), each computed by the reference's own module. A quantizer on f becomes a
threshold node bisected on f then the quantizer, so the integer levels are the reference's
levels (edmips.export.thresholds). Max pooling commutes with a monotonic f (on -v where f
falls); concatenation joins the channels' functions. What needs v * unit itself (a conv, an
add, an average pool, the logits) refuses any other f, naming the node.
"""

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edmips.export.ir import Graph
from edmips.export.prepare import ExportError, check_exportable, reference_copy, traced
from edmips.export.thresholds import accumulator_bits, compute_thresholds
from edmips.nn.fx_quantize import ADD_FUNCTIONS
from edmips.nn.layers import QuantConv2d, QuantLinear
from edmips.quant import HWGQ_STEPS, hwgq_codes, integer_weight
from edmips.quant.activation import HWGQ, StreamQuant
from edmips.quant.input import InputQuant

MAX_ACC_BITS = 62  # int64 arithmetic in the runtime


# Per-channel elementwise steps, run by the reference's own module or function.
_ELEMENTWISE_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Dropout, nn.Identity)
_ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, F.dropout}
_ELEMENTWISE_METHODS = {"relu", "relu_", "contiguous", "clone"}
_AFFINE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv}
_MAX_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_MAX_POOL_FUNCTIONS = {F.max_pool2d, F.adaptive_max_pool2d}
_AVG_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_AVG_POOL_FUNCTIONS = {F.avg_pool2d, F.adaptive_avg_pool2d}


@dataclass
class _Value:
    """f(v) for the graph's integer tensor `name` with values in [lo, hi]."""

    name: str
    lo: int
    hi: int
    f: Callable[[Tensor], Tensor]  # float64 [channels, n] -> [channels, n]
    unit: Tensor | None  # [channels] where f is exactly v * unit, else None

    def then(self, step: Callable[[Tensor], Tensor]) -> "_Value":
        f = self.f
        return _Value(self.name, self.lo, self.hi, lambda v: step(f(v)), None)


def _per_channel(module_or_fn, rank: int) -> Callable[[Tensor], Tensor]:
    """An elementwise step on [channels, n] values, run as the network runs it (on N x C x 1 x 1
    for a feature map, N x C for features)."""

    def step(y: Tensor) -> Tensor:
        shaped = y.t().reshape(y.shape[1], y.shape[0], *[1] * (rank - 2))
        return module_or_fn(shaped).reshape(y.shape[1], y.shape[0]).t()

    return step


class _GraphLowering:
    def __init__(self, model: fx.GraphModule, input_size):
        self.model = model
        self.modules = dict(model.named_modules())
        self.graph = Graph(getattr(model, "name", type(model).__name__), list(input_size))
        self.values: dict[fx.Node, _Value] = {}
        self.requantized: dict[tuple, _Value] = {}  # (value, quantizer) -> threshold node

    # -- helpers -------------------------------------------------------------------------------
    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    def exact(self, name: str, x: _Value, what: str) -> _Value:
        if x.unit is None:
            raise ExportError(
                f"node {name}: {what} needs an integer tensor, but its input "
                "passed through float steps that no quantizer rounded"
            )
        return x

    def threshold(self, x: _Value, name: str, channels: int, quantizer) -> _Value:
        """A threshold node: quantizer (HWGQ bits, or a StreamQuant) applied to f(v)."""
        key = (x.name, id(x.f), quantizer)
        if key in self.requantized:
            return self.requantized[key]
        if isinstance(quantizer, StreamQuant):
            qmax = quantizer.qmax
            num_levels, out_bias, unit = 2 * qmax + 1, -qmax, quantizer.scale().double()

            def levels(v):
                return quantizer.codes(x.f(v)) + qmax
        else:
            num_levels, out_bias, unit = 2**quantizer, 0, HWGQ_STEPS[quantizer]

            def levels(v):
                return hwgq_codes(x.f(v), quantizer)

        thresholds, sign = compute_thresholds(levels, channels, num_levels, x.lo, x.hi)
        dtype = np.int32 if max(abs(x.lo), abs(x.hi)) < 2**31 - 1 else np.int64
        hi = out_bias + num_levels - 1
        self.graph.add(
            "threshold",
            name,
            [x.name],
            out_bias=out_bias,
            range=[out_bias, hi],
            scale=float(unit),
            arrays={
                "thresholds": thresholds.numpy().astype(dtype),
                "sign": sign.numpy().astype(np.int8),
            },
        )
        unit = torch.as_tensor(unit, dtype=torch.float64).expand(channels)
        out = _Value(name, out_bias, hi, lambda v: v * unit[:, None], unit)
        self.requantized[key] = out
        return out

    # -- nodes -----------------------------------------------------------------------------------
    def lower(self) -> Graph:
        output = None
        for node in self.model.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = self.image(node)
            elif node.op == "output":
                output = node.all_input_nodes
            elif node.op == "get_attr" or (node.op == "call_method" and node.target == "size"):
                continue  # constants and shapes: read where they are used
            else:
                self.values[node] = self.node(node)
        if output is None or len(output) != 1:
            raise ExportError("output: the model must return one tensor (the logits)")
        logits = self.values[output[0]]
        if logits.unit is None or self.graph.output != logits.name:
            raise ExportError(
                f"node {output[0].name}: the logits must be a layer's integer accumulator "
                "times its scale (a float step follows it, or its bias is off the grid)"
            )
        return self.graph

    def image(self, node: fx.Node) -> _Value:
        channels = self.shape(node)[1]
        zero = np.zeros(channels, dtype=np.int16)
        self.graph.add(
            "input", "input", [], range=[0, 255], scale=1 / 255, arrays={"zero_point": zero}
        )
        # The reference reads images as float32 k / 255, so f rounds to float32 as they do.
        self.image = _Value("input", 0, 255, lambda v: (v.float() / 255).double(), None)
        return self.image

    def input_codes(self, x: _Value, m: InputQuant) -> _Value:
        """edmips's ResNets read the image as codes minus a zero point: the input node's own."""
        if x is not self.image:
            raise ExportError("InputQuant: only on the image itself")
        zero_point = m.zero_point.flatten().round().long()
        lo, hi = -int(zero_point.max()), 255 - int(zero_point.min())
        node = self.graph.node("input")
        node.arrays["zero_point"] = zero_point.numpy().astype(np.int16)
        node.attrs.update(range=[lo, hi], scale=m.scale)
        unit = torch.full((len(zero_point),), m.scale, dtype=torch.float64)
        return _Value("input", lo, hi, lambda v: v * unit[:, None], unit)

    def node(self, node: fx.Node) -> _Value:
        if node.op == "call_module":
            m = self.modules[node.target]
            x = self.values[node.args[0]]
            if isinstance(m, (QuantConv2d, QuantLinear)):
                return self.layer(node, m, x)
            if isinstance(m, StreamQuant):
                return self.threshold(x, node.name, self.shape(node)[1], m)
            if isinstance(m, HWGQ):
                return self.threshold(x, node.name, self.shape(node)[1], m.bits)
            if isinstance(m, InputQuant):
                return self.input_codes(x, m)
            if isinstance(m, _ELEMENTWISE_MODULES):
                return x.then(_per_channel(m, len(self.shape(node))))
            if isinstance(m, (*_MAX_POOLS, *_AVG_POOLS)):
                op = "windowmax" if isinstance(m, _MAX_POOLS) else "windowsum"
                return self.window(node.name, x, m, self.shape(node.args[0]), op)
            if isinstance(m, nn.Flatten):
                return self.flatten(node, x)
            if type(m) in (nn.Conv2d, nn.Linear):
                raise ExportError(
                    f"layer {node.target}: a float {type(m).__name__}; "
                    "convert the model with edmips.nn.quantize first"
                )
            raise ExportError(f"layer {node.target}: no integer lowering for {type(m).__name__}")
        if node.op == "call_function":
            return self.function(node)
        if node.op == "call_method":
            x = self.values[node.args[0]]
            if node.target in _ELEMENTWISE_METHODS:  # shape-blind: any rank will do
                return x.then(_per_channel(lambda t: getattr(t, node.target)(), 2))
            if node.target in ("view", "reshape", "flatten"):
                return self.flatten(node, x)
        raise ExportError(f"node {node.name}: no integer lowering for {_describe(node.target)}")

    def function(self, node: fx.Node) -> _Value:
        target, args = node.target, node.args
        rank = len(self.shape(node))
        if target in _ELEMENTWISE_FUNCTIONS:
            x = self.values[args[0]]
            return x.then(_per_channel(lambda t: target(t, *args[1:], **node.kwargs), rank))
        if target in ADD_FUNCTIONS and len(args) == 2 and not node.kwargs:
            if all(a in self.values for a in args):
                return self.add(node, *(self.values[a] for a in args))
        if target in _AFFINE_FUNCTIONS and len(args) == 2 and not node.kwargs:
            # x and a constant (a number, or a buffer such as the normalization's mean)
            if args[0] in self.values and _is_constant(args[1]):
                c = self.constant(args[1])
                return self.values[args[0]].then(_per_channel(lambda t: target(t, c), rank))
            if args[1] in self.values and _is_constant(args[0]) and target is not operator.truediv:
                c = self.constant(args[0])
                return self.values[args[1]].then(_per_channel(lambda t: target(c, t), rank))
        if target in _MAX_POOL_FUNCTIONS or target in _AVG_POOL_FUNCTIONS:
            op = "windowmax" if target in _MAX_POOL_FUNCTIONS else "windowsum"
            return self.window(
                node.name, self.values[args[0]], _bound(node), self.shape(args[0]), op
            )
        if target is torch.flatten:
            return self.flatten(node, self.values[args[0]])
        if target is torch.cat:
            return self.concat(node)
        raise ExportError(f"node {node.name}: no integer lowering for {_describe(target)}")

    def layer(self, node: fx.Node, m: nn.Module, x: _Value) -> _Value:
        name = node.target  # the layer's own name, "stages.0.0.conv1"
        if any(n.name == name for n in self.graph.nodes):
            raise ExportError(f"layer {name}: used twice; the integer graph names a layer once")
        channels = self.shape(node.args[0])[1]
        if m.abits is not None:
            x = self.threshold(x, f"{name}.input", channels, m.abits)
        x = self.exact(node.name, x, "a quantized layer")
        if not bool((x.unit == x.unit[0]).all()):
            raise ExportError(f"layer {name}: its input channels are on different grids")
        unit = x.unit[0]
        codes, scale = integer_weight(m.weight.detach(), m.wbits, m.per_channel)
        weight_max = 2**m.wbits - 1
        if isinstance(m, QuantConv2d) and m.input_pool is not None:
            x = self.window(f"{name}.pool", x, m.input_pool, self.shape(node.args[0]), "windowsum")
            unit = x.unit[0]
        pool = 1
        if isinstance(m, QuantLinear) and m.pool_input:
            _, _, height, width = self.shape(node.args[0])
            pool = height * width
            self.graph.add(
                "sumpool", f"{name}.pool", [x.name], range=[x.lo * pool, x.hi * pool], scale=None
            )
            x = _Value(f"{name}.pool", x.lo * pool, x.hi * pool, None, None)
        unit = (unit / pool * scale.flatten()).expand(codes.shape[0])
        bias = None if m.bias is None else m.quant_bias(pool).detach().double()
        # A bias on the accumulator's grid (an HWGQ input) is added in the integers; any other
        # is a float step of f, which only a quantizer after the layer can absorb.
        int_bias = torch.zeros(codes.shape[0], dtype=torch.int64)
        if bias is not None and bool(((bias / unit) - (bias / unit).round()).abs().max() < 1e-6):
            int_bias, bias = torch.round(bias / unit).long(), None
        weight = codes.numpy().astype(int_dtype(weight_max + 1))
        fan_in = m.weight[0].numel()  # per output: in_features, or Cin/groups * kh * kw
        bits = accumulator_bits(fan_in, x.lo, x.hi, weight_max, int(int_bias.abs().max()))
        if bits > MAX_ACC_BITS:
            raise ExportError(f"layer {name}: a {bits}-bit accumulator exceeds {MAX_ACC_BITS} bits")
        peak = 2 ** (bits - 1)
        common = dict(acc_bits=bits, range=[-peak, peak - 1], scale=unit.tolist())
        arrays = {"weight": weight, "bias": int_bias.numpy()}
        if isinstance(m, QuantLinear):
            self.graph.add("linear", name, [x.name], arrays=arrays, **common)
        else:
            if isinstance(m.padding, str):
                raise ExportError(f"layer {name}: padding={m.padding!r} is not lowered")
            self.graph.add(
                "conv",
                name,
                [x.name],
                stride=list(m.stride),
                padding=list(m.padding),
                dilation=list(m.dilation),
                groups=m.groups,
                arrays=arrays,
                **common,
            )
        out = _Value(name, -peak, peak - 1, lambda v: v * unit[:, None], unit)
        if bias is None:
            return out
        return out.then(lambda y: y + bias[:, None])

    def add(self, node: fx.Node, a: _Value, b: _Value) -> _Value:
        a, b = self.exact(node.name, a, "an add"), self.exact(node.name, b, "an add")
        if not torch.equal(a.unit, b.unit):
            raise ExportError(f"node {node.name}: an add of operands on different grids")
        lo, hi = a.lo + b.lo, a.hi + b.hi
        self.graph.add("add", node.name, [a.name, b.name], range=[lo, hi], scale=None)
        unit = a.unit
        return _Value(node.name, lo, hi, lambda v: v * unit[:, None], unit)

    def constant(self, arg):
        """A number, or a tensor the model holds (a get_attr node)."""
        if isinstance(arg, fx.Node):
            return functools.reduce(getattr, arg.target.split("."), self.model)
        return arg

    def window(self, name: str, x: _Value, pool, in_shape, op: str) -> _Value:
        """A pool as the input positions of each output position (`_windows`)."""
        _, channels, height, width = in_shape
        windows, divisors, (out_h, out_w) = _windows(pool, height, width)
        count = windows.shape[1]
        if op == "windowmax":
            sign = self.direction(x, channels)
            lo, hi, f, unit = x.lo, x.hi, x.f, x.unit
            arrays = {"windows": windows.numpy().astype(np.int32), "sign": sign}
        else:
            divisor = round(float(divisors[0]))
            if not bool(((divisors - divisor).abs() < 1e-9).all()):
                raise ExportError(f"node {name}: average pooling with unequal divisors")
            if count == 1 and divisor == 1:  # each window one position: a gather, f unchanged
                f, unit = x.f, x.unit
            else:
                x = self.exact(name, x, "average pooling")
                unit = x.unit / divisor
                f = lambda v, unit=unit: v * unit[:, None]  # noqa: E731
            lo, hi = min(x.lo, 0) * count, max(x.hi, 0) * count
            arrays = {"windows": windows.numpy().astype(np.int32)}
        self.graph.add(op, name, [x.name], out_hw=[out_h, out_w], range=[lo, hi], arrays=arrays)
        return _Value(name, lo, hi, f, unit)

    def direction(self, x: _Value, channels: int) -> np.ndarray:
        """+1 where f rises with v, -1 where it falls (max pooling takes the max of sign * v)."""
        ends = x.f(torch.tensor([[x.lo, x.hi]], dtype=torch.float64).expand(channels, 2))
        return np.where((ends[:, 1] >= ends[:, 0]).numpy(), 1, -1).astype(np.int8)

    def flatten(self, node: fx.Node, x: _Value) -> _Value:
        shape_in, shape_out = self.shape(node.args[0]), self.shape(node)
        if len(shape_out) != 2 or shape_out[0] != shape_in[0]:
            raise ExportError(f"node {node.name}: only flattening to N x features is lowered")
        channels, spatial = shape_in[1], int(np.prod(shape_in[2:], dtype=np.int64))
        self.graph.add("flatten", node.name, [x.name], range=[x.lo, x.hi], scale=None)
        if spatial == 1:
            return _Value(node.name, x.lo, x.hi, x.f, x.unit)
        f = x.f

        def per_feature(v: Tensor) -> Tensor:  # feature c * spatial + p belongs to channel c
            n = v.shape[1]
            return f(v.reshape(channels, spatial * n)).reshape(channels * spatial, n)

        unit = None if x.unit is None else x.unit.repeat_interleave(spatial)
        return _Value(node.name, x.lo, x.hi, per_feature, unit)

    def concat(self, node: fx.Node) -> _Value:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim % len(self.shape(node)) != 1:
            raise ExportError(f"node {node.name}: concatenation along dim {dim} is not lowered")
        parts = [self.values[t] for t in tensors]
        sizes = [self.shape(t)[1] for t in tensors]
        self.graph.add(
            "concat",
            node.name,
            [p.name for p in parts],
            range=[min(p.lo for p in parts), max(p.hi for p in parts)],
            scale=None,
        )
        fs = [p.f for p in parts]

        def f(v: Tensor) -> Tensor:
            return torch.cat([g(c) for g, c in zip(fs, v.split(sizes))])

        units = [p.unit for p in parts]
        unit = None if any(u is None for u in units) else torch.cat(units)
        return _Value(node.name, min(p.lo for p in parts), max(p.hi for p in parts), f, unit)


def _windows(pool, height: int, width: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """The input positions of each output position of a 2-D pool ([outputs, k], the index
    height * width where a window has fewer than k), each window's divisor (for an average)
    and the output size. Found by running the pool itself on one-hot rows and columns, so
    every option (padding, dilation, ceil mode, adaptive) is torch's own: a 2-D pool's window
    is its rows times its columns."""
    f64 = dict(dtype=torch.float64)
    one_row = torch.eye(height, **f64)[:, None, :, None].expand(-1, 1, -1, width).contiguous()
    one_col = torch.eye(width, **f64)[:, None, None, :].expand(-1, 1, height, -1).contiguous()
    rows = [r.nonzero().flatten() for r in (pool(one_row)[:, 0] != 0).any(2).t()]
    cols = [c.nonzero().flatten() for c in (pool(one_col)[:, 0] != 0).any(1).t()]
    count = max(len(r) for r in rows) * max(len(c) for c in cols)
    windows = torch.full((len(rows) * len(cols), count), height * width, dtype=torch.int64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            idx = (r[:, None] * width + c[None, :]).flatten()
            windows[i * len(cols) + j, : len(idx)] = idx
    sizes = torch.tensor([len(r) * len(c) for r in rows for c in cols], **f64)
    divisors = sizes / pool(torch.ones(1, 1, height, width, **f64)).flatten()  # mean = sum / d
    return windows, divisors, (len(rows), len(cols))


def int_dtype(magnitude: int):
    """The narrowest numpy integer type for weights of magnitude below `magnitude`."""
    return np.int8 if magnitude < 128 else np.int16 if magnitude < 2**15 else np.int32


def _is_constant(arg) -> bool:
    return isinstance(arg, (int, float)) or (isinstance(arg, fx.Node) and arg.op == "get_attr")


def _bound(node: fx.Node) -> Callable[[Tensor], Tensor]:
    """A pooling call with its tensor argument left open."""
    return lambda t: node.target(t, *node.args[1:], **node.kwargs)


def _describe(target) -> str:
    return getattr(target, "__name__", None) or str(target)


@torch.no_grad()
def lower(model: nn.Module, input_size) -> Graph:
    """The integer graph of a fixed-bit network: one converted by edmips.nn.quantize, or one
    of edmips's own."""
    check_exportable(model)
    reference = traced(reference_copy(model))
    ShapeProp(reference).propagate(torch.zeros(1, *input_size, dtype=torch.float64))
    return _GraphLowering(reference, input_size).lower()
