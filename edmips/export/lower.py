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
add, an average pool, the logits) refuses any other f, naming the node; a conv needs one unit
for all its input channels, except a depthwise one, whose output channels each read one.
"""

import functools
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edmips.export.ir import Graph
from edmips.export.prepare import ExportError, check_exportable, reference_copy, traced
from edmips.export.thresholds import accumulator_bits, compute_thresholds
from edmips.export.values import (
    ShapeSteps,
    Value,
    bound,
    describe,
    int_dtype,
    is_constant,
    per_channel,
)
from edmips.nn.fx_quantize import ADD_FUNCTIONS
from edmips.nn.layers import QuantConv2d, QuantLinear, is_depthwise, per_output_channel
from edmips.quant import ActivationQuantizer

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


class _GraphLowering(ShapeSteps):
    def __init__(self, model: fx.GraphModule, input_size):
        self.model = model
        self.modules = dict(model.named_modules())
        self.graph = Graph(getattr(model, "name", type(model).__name__), list(input_size))
        self.values: dict[fx.Node, Value] = {}
        self.requantized: dict[tuple, Value] = {}  # (value, quantizer) -> threshold node

    # -- helpers -------------------------------------------------------------------------------
    def shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):  # a number or a tuple: arithmetic on a tensor's shape
            raise ExportError(
                f"node {node.name}: no integer lowering for {describe(node.target)} "
                "(its value is not a tensor)"
            )
        return tuple(meta.shape)

    def exact(self, name: str, x: Value, what: str) -> Value:
        if x.unit is None:
            raise ExportError(
                f"node {name}: {what} needs an integer tensor, but its input "
                "passed through float steps that no quantizer rounded"
            )
        return x

    def threshold(self, x: Value, name: str, shape, q: ActivationQuantizer) -> Value:
        """A threshold node: the quantizer q applied to f(v), its codes shifted to start at 0.
        q runs on the network's layout (`shape`, the node's), as a step per channel needs."""
        key = (x.name, id(x.f), q.grid())
        if key in self.requantized:
            return self.requantized[key]
        channels, codes = shape[1], per_channel(q.codes, len(shape))
        num_levels, out_bias = q.num_levels, q.lowest
        unit = torch.as_tensor(q.unit(), dtype=torch.float64)

        def levels(v):
            return codes(x.f(v)) - out_bias

        thresholds, sign = compute_thresholds(levels, channels, num_levels, x.lo, x.hi)
        dtype = np.int32 if max(abs(x.lo), abs(x.hi)) < 2**31 - 1 else np.int64
        hi = out_bias + num_levels - 1
        self.graph.add(
            "threshold",
            name,
            [x.name],
            out_bias=out_bias,
            range=[out_bias, hi],
            scale=unit.tolist(),  # a list for a step per channel
            arrays={
                "thresholds": thresholds.numpy().astype(dtype),
                "sign": sign.numpy().astype(np.int8),
            },
        )
        unit = unit.expand(channels)
        out = Value(name, out_bias, hi, lambda v: v * unit[:, None], unit)
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

    def image(self, node: fx.Node) -> Value:
        channels = self.shape(node)[1]
        zero = np.zeros(channels, dtype=np.int16)
        self.graph.add(
            "input", "input", [], range=[0, 255], scale=1 / 255, arrays={"zero_point": zero}
        )
        # The reference reads images as float32 k / 255, so f rounds to float32 as they do.
        self.image = Value("input", 0, 255, lambda v: (v.float() / 255).double(), None)
        return self.image

    def input_codes(self, x: Value, m: ActivationQuantizer) -> Value:
        """edmips's ResNets read the image as codes minus a zero point: the input node's own."""
        if x is not self.image:
            raise ExportError(f"{type(m).__name__}: only on the image itself")
        zero_point = m.zero_point.flatten().round().long()
        lo, hi = -int(zero_point.max()), 255 - int(zero_point.min())
        node = self.graph.node("input")
        node.arrays["zero_point"] = zero_point.numpy().astype(np.int16)
        node.attrs.update(range=[lo, hi], scale=m.scale)
        unit = torch.full((len(zero_point),), m.scale, dtype=torch.float64)
        return Value("input", lo, hi, lambda v: v * unit[:, None], unit)

    def node(self, node: fx.Node) -> Value:
        if node.op == "call_module":
            m = self.modules[node.target]
            x = self.values[node.args[0]]
            if isinstance(m, (QuantConv2d, QuantLinear)):
                return self.layer(node, m, x)
            if isinstance(m, ActivationQuantizer):
                if m.defines_input:
                    return self.input_codes(x, m)
                return self.threshold(x, node.name, self.shape(node), m)
            if isinstance(m, _ELEMENTWISE_MODULES):
                return x.then(per_channel(m, len(self.shape(node))))
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
                return x.then(per_channel(lambda t: getattr(t, node.target)(), 2))
            if node.target in ("view", "reshape", "flatten"):
                return self.flatten(node, x)
        raise ExportError(f"node {node.name}: no integer lowering for {describe(node.target)}")

    def function(self, node: fx.Node) -> Value:
        target, args = node.target, node.args
        rank = len(self.shape(node))
        if target in _ELEMENTWISE_FUNCTIONS:
            x = self.values[args[0]]
            return x.then(per_channel(lambda t: target(t, *args[1:], **node.kwargs), rank))
        if target in ADD_FUNCTIONS and len(args) == 2 and not node.kwargs:
            if all(a in self.values for a in args):
                return self.add(node, *(self.values[a] for a in args))
        if target in _AFFINE_FUNCTIONS and len(args) == 2 and not node.kwargs:
            # x and a constant (a number, or a buffer such as the normalization's mean)
            if args[0] in self.values and is_constant(args[1]):
                c = self.constant(args[1])
                return self.values[args[0]].then(per_channel(lambda t: target(t, c), rank))
            if args[1] in self.values and is_constant(args[0]) and target is not operator.truediv:
                c = self.constant(args[0])
                return self.values[args[1]].then(per_channel(lambda t: target(c, t), rank))
        if target in _MAX_POOL_FUNCTIONS or target in _AVG_POOL_FUNCTIONS:
            op = "windowmax" if target in _MAX_POOL_FUNCTIONS else "windowsum"
            return self.window(
                node.name, self.values[args[0]], bound(node), self.shape(args[0]), op
            )
        if target is torch.flatten:
            return self.flatten(node, self.values[args[0]])
        if target is torch.cat:
            return self.concat(node)
        raise ExportError(f"node {node.name}: no integer lowering for {describe(target)}")

    def layer(self, node: fx.Node, m: nn.Module, x: Value) -> Value:
        name = node.target  # the layer's own name, "stages.0.0.conv1"
        if any(n.name == name for n in self.graph.nodes):
            raise ExportError(f"layer {name}: used twice; the integer graph names a layer once")
        in_shape = self.shape(node.args[0])
        if m.input_quant is not None:
            x = self.threshold(x, f"{name}.input", in_shape, m.input_quant)
        x = self.exact(node.name, x, "a quantized layer")
        # Only a conv that never sums over channels can take them on different grids.
        if not is_depthwise(m) and not bool((x.unit == x.unit[0]).all()):
            raise ExportError(f"layer {name}: its input channels are on different grids")
        pool = 1
        if isinstance(m, QuantConv2d) and m.input_pool is not None:
            x = self.window(f"{name}.pool", x, m.input_pool, in_shape, "windowsum")
        if isinstance(m, QuantLinear) and m.pool_input:
            pool = in_shape[2] * in_shape[3]
            self.graph.add(
                "sumpool", f"{name}.pool", [x.name], range=[x.lo * pool, x.hi * pool], scale=None
            )
            x = Value(f"{name}.pool", x.lo * pool, x.hi * pool, None, x.unit)
        return self.accumulate(name, m, x, pool)

    def accumulate(self, name: str, m: nn.Module, x: Value, pool: int) -> Value:
        """The layer's integer dot products on x's codes (summed over `pool` positions)."""
        codes, scale = m.integer_weight()
        weight_max = m.weight_quant.max_code
        step = x.unit[0]
        if is_depthwise(m):
            step = per_output_channel(m, x.unit)
        unit = (step / pool * scale.flatten()).expand(codes.shape[0])
        bias = None if m.bias is None else m.quant_bias(pool).detach().double()
        # A bias on the accumulator's grid (its input's unit x the weight scale) is added in the
        # integers; any other is a float step of f, which only a quantizer after it can absorb.
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
        if bias is not None:  # the float step after the accumulator (the int8 form redoes it)
            arrays["float_bias"] = bias.numpy()
        if isinstance(m, QuantLinear):
            self.graph.add("linear", name, [x.name], arrays=arrays, **common)
        else:
            if isinstance(m.padding, str):
                raise ExportError(f"layer {name}: padding={m.padding!r} is not lowered")
            conv = dict(stride=list(m.stride), padding=list(m.padding), dilation=list(m.dilation))
            self.graph.add("conv", name, [x.name], **conv, groups=m.groups, arrays=arrays, **common)
        out = Value(name, -peak, peak - 1, lambda v: v * unit[:, None], unit)
        if bias is None:
            return out
        return out.then(lambda y: y + bias[:, None])

    def add(self, node: fx.Node, a: Value, b: Value) -> Value:
        a, b = self.exact(node.name, a, "an add"), self.exact(node.name, b, "an add")
        if not torch.equal(a.unit, b.unit):
            raise ExportError(f"node {node.name}: an add of operands on different grids")
        lo, hi = a.lo + b.lo, a.hi + b.hi
        self.graph.add("add", node.name, [a.name, b.name], range=[lo, hi], scale=None)
        unit = a.unit
        return Value(node.name, lo, hi, lambda v: v * unit[:, None], unit)

    def constant(self, arg):
        """A number, or a tensor the model holds (a get_attr node)."""
        if isinstance(arg, fx.Node):
            return functools.reduce(getattr, arg.target.split("."), self.model)
        return arg


def lower(model: nn.Module, input_size) -> Graph:
    """The integer graph of a fixed-bit network: one converted by edmips.nn.quantize, or one
    of edmips's own."""
    check_exportable(model)
    reference = traced(reference_copy(model))
    ShapeProp(reference).propagate(torch.zeros(1, *input_size, dtype=torch.float64))
    return _GraphLowering(reference, input_size).lower()
