"""Lower a trained fixed-bit network to the integer graph, from its torch.fx graph.

The network's float64 copy, traced (edmips.export.prepare), is the fake-quantized reference
the integer graph must reproduce. Its graph is walked in order, and every value the network
computes is held as a function of one integer tensor of the integer graph:

    value = f_c(v)    v an integer tensor, f_c a float64 function per channel, monotonic
                      unless a function that rises and falls (SiLU) of a few codes is in it

f starts as `v * unit` where a quantizer, an integer add or a pool has just made v, and grows
with every elementwise step after it (a conv's bias, batch norm, ReLU, the normalization of
the image), each computed by the reference's own module. A quantizer on f becomes a
threshold node bisected on f then the quantizer, so the integer levels are the reference's
levels (edmips.export.thresholds); on a non-monotonic f, a table of every code's level. A
product of two quantized tensors is the product of their codes (`mul`). Max pooling
commutes with a monotonic f (on -v where f falls); concatenation joins the channels'
functions. What needs v * unit itself (a conv, an add, an average pool, the logits) refuses
any other f, naming the node; a conv needs one unit for all its input channels, except a
depthwise one, whose output channels each read one.
"""

import functools
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function
from torchvision.ops import StochasticDepth

from edmips.export.ir import Graph
from edmips.export.moves import (
    ShapesAndConstants,
    channel_index,
    gathered,
    is_move,
    moved,
    positions,
)
from edmips.export.prepare import ExportError, check_exportable, reference_copy, traced
from edmips.export.quantizer_nodes import MAX_TABLE, QuantizerNodes
from edmips.export.thresholds import accumulator_bits
from edmips.export.values import (
    ShapeSteps,
    Value,
    bound,
    describe,
    int_dtype,
    is_constant,
    per_channel,
)
from edmips.nn.fx_quantize import ADD_FUNCTIONS, MUL_FUNCTIONS, TABLE_FUNCTIONS, TABLE_MODULES
from edmips.nn.layers import QuantConv2d, QuantLinear, is_depthwise, per_output_channel
from edmips.quant import ActivationQuantizer

MAX_ACC_BITS = 62  # int64 arithmetic in the runtime


# Per-channel elementwise steps, run by the reference's own module or function.
_ELEMENTWISE_MODULES = (
    *(nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Dropout, nn.Identity),
    *(nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, StochasticDepth),  # monotone, or the identity
)
_ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, F.dropout}
_ELEMENTWISE_FUNCTIONS |= {torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.tanh, F.tanh}
_ELEMENTWISE_METHODS = {"relu", "relu_", "contiguous", "clone", "sigmoid", "tanh"}
# Transformers' steps: refused by name, before the walk (`refuse_transformers`).
_TRANSFORMER_MODULES = (nn.LayerNorm, nn.MultiheadAttention)
_TRANSFORMER_FUNCTIONS = {
    F.layer_norm,
    F.scaled_dot_product_attention,
    F.multi_head_attention_forward,
}
_AFFINE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv}
_MAX_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_MAX_POOL_FUNCTIONS = {F.max_pool2d, F.adaptive_max_pool2d}
_AVG_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_AVG_POOL_FUNCTIONS = {F.avg_pool2d, F.adaptive_avg_pool2d}


class _GraphLowering(ShapeSteps, QuantizerNodes):
    def __init__(self, model: fx.GraphModule, input_size):
        self.model = model
        self.modules = dict(model.named_modules())
        self.graph = Graph(getattr(model, "name", type(model).__name__), list(input_size))
        self.values: dict[fx.Node, Value] = {}
        self.requantized: dict[tuple, Value] = {}  # (value, quantizer) -> threshold node
        self.products: dict[str, tuple] = {}  # mul node -> its operands and its f
        self.moves: dict[fx.Node, tuple] = {}  # a rearrangement: (value, its shape, positions)
        self.relus: dict[int, tuple] = {}  # id(ReLU of an exact value) -> (node name, value)

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
        if x.unit is None and id(x) in self.relus:
            x = self.integer_relu(*self.relus[id(x)])
        if x.unit is None:
            raise ExportError(
                f"node {name}: {what} needs an integer tensor, but its input "
                "passed through float steps that no quantizer rounded"
            )
        return x

    # -- nodes -----------------------------------------------------------------------------------
    def lower(self) -> Graph:
        output = None
        self.refuse_transformers()
        for node in self.model.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = self.image(node)
            elif node.op == "output":
                output = node.all_input_nodes
            elif node.op == "get_attr" or "constant" in node.meta:
                continue  # constants and shapes (moves.ShapesAndConstants): read where used
            elif is_move(node) and not self.flattens(node):
                self.move(node)
            else:
                for source in node.all_input_nodes:  # a rearrangement waiting: refused by name
                    if source in self.moves:
                        self.tensor(source)
                self.values[node] = self.node(node)
        if output is None or len(output) != 1:
            raise ExportError("output: the model must return one tensor (the logits)")
        logits = self.tensor(output[0])
        if logits.unit is None and id(logits) in self.relus:  # a conv head's ReLU
            logits = self.exact(output[0].name, logits, "the logits")
        if logits.unit is None or self.graph.output != logits.name:
            raise ExportError(
                f"node {output[0].name}: the logits must be a layer's integer accumulator "
                "times its scale (a float step follows it, or its bias is off the grid)"
            )
        if len(self.shape(output[0])) != 2:
            raise ExportError(f"node {output[0].name}: the logits must be N x classes")
        # what the integer logits are multiplied by (a pooled conv head's last node is no layer)
        self.graph.nodes[-1].attrs["scale"] = logits.unit.tolist()
        return self.graph

    def tensor(self, node: fx.Node) -> Value:
        """The value of a node read as a tensor, refused by name where it is none the integer
        graph holds (a rearrangement of positions within channels, say)."""
        if node in self.values:
            return self.values[node]
        if node in self.moves:
            raise ExportError(
                f"node {node.name}: a rearrangement that moves values between positions, not "
                "whole channels, is not lowered"
            )
        raise ExportError(f"node {node.name}: its value is not a tensor of the integer graph")

    def refuse_transformers(self) -> None:
        """A transformer (ViT, Swin, MaxViT) refused at its first LayerNorm or attention, by
        name: the integer graph has no lowering for a per-token normalization."""
        for node in self.model.graph.nodes:
            if node.op == "call_module":
                found = type(self.modules[node.target])
                found = found if issubclass(found, _TRANSFORMER_MODULES) else None
            else:
                found = node.target if node.target in _TRANSFORMER_FUNCTIONS else None
            if found is not None:
                raise ExportError(
                    f"node {node.name}: no integer lowering for {describe(found)} (a transformer's "
                    "normalization or attention); export a convolutional network instead"
                )

    def flattens(self, node: fx.Node) -> bool:
        """A flatten of a lowered tensor to N x features (the `flatten` node's own case)."""
        flat = node.target in ("view", "reshape", "flatten", torch.flatten, torch.reshape)
        source = node.args[0]
        return (
            flat
            and source in self.values
            and len(self.shape(node)) == 2
            and len(self.shape(source)) > 2
        )

    def move(self, node: fx.Node) -> None:
        """A step that only moves values (edmips.export.moves), run on the positions of the
        lowered tensor the chain starts from: a result that holds whole channels of it is a
        gather_channels node (none where it holds them all in order), any other waits in
        `moves` for the next step."""
        source = node.args[0]
        if source in self.moves:
            x, shape, where = self.moves[source]
        else:
            x, shape = self.tensor(source), self.shape(source)
            where = positions(shape)
        result = moved(node, where)
        index = channel_index(result, shape)
        if index is None:
            self.moves[node] = (x, shape, result)
        elif len(index) == shape[1] and torch.equal(index, torch.arange(shape[1])):
            self.values[node] = x
        elif len(torch.unique(index)) != len(index):
            raise ExportError(f"node {node.name}: a channel taken twice is not lowered")
        else:
            unit = None if x.unit is None else x.unit[index].tolist()
            self.graph.add(
                "gather_channels",
                node.name,
                [x.name],
                range=[x.lo, x.hi],
                scale=unit,
                arrays={"index": index.numpy().astype(np.int32)},
            )
            self.values[node] = gathered(node.name, x, index, shape[1])

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
                return self.relu_of(node, x, x.then(per_channel(m, len(self.shape(node)))))
            if isinstance(m, TABLE_MODULES):
                step = per_channel(m, len(self.shape(node)))
                return self.rises_and_falls(node, x, step, type(m).__name__)
            if isinstance(m, (*_MAX_POOLS, *_AVG_POOLS)):
                op = "windowmax" if isinstance(m, _MAX_POOLS) else "windowsum"
                return self.window(
                    node.name, self.pooled(node, x, op), m, self.shape(node.args[0]), op
                )
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
                step = per_channel(lambda t: getattr(t, node.target)(), 2)
                return self.relu_of(node, x, x.then(step))
            if node.target == "mean":
                return self.mean(node, x)
            if node.target in MUL_FUNCTIONS and len(node.args) == 2:
                if all(a in self.values for a in node.args):
                    return self.product(node, *(self.values[a] for a in node.args))
            if node.target in ("view", "reshape", "flatten"):
                return self.flatten(node, x)
        raise ExportError(f"node {node.name}: no integer lowering for {describe(node.target)}")

    def function(self, node: fx.Node) -> Value:
        target, args = node.target, node.args
        rank = len(self.shape(node))
        if target in _ELEMENTWISE_FUNCTIONS:
            x = self.values[args[0]]
            step = per_channel(lambda t: target(t, *args[1:], **node.kwargs), rank)
            return self.relu_of(node, x, x.then(step))
        if target is torch.mean:
            return self.mean(node, self.values[args[0]])
        if target in TABLE_FUNCTIONS:
            step = per_channel(lambda t: target(t, *args[1:], **node.kwargs), rank)
            return self.rises_and_falls(node, self.values[args[0]], step, describe(target))
        if target in MUL_FUNCTIONS and len(args) == 2 and not node.kwargs:
            if all(a in self.values for a in args):
                return self.product(node, *(self.values[a] for a in args))
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
            x = self.pooled(node, self.values[args[0]], op)
            return self.window(node.name, x, bound(node), self.shape(args[0]), op)
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

    def rises_and_falls(self, node: fx.Node, x: Value, step, what: str) -> Value:
        """A function that rises and falls (SiLU, Hardswish): a table of its input's codes
        where a quantizer reads it (`table`), so its input must be a few codes."""
        if x.hi - x.lo + 1 > MAX_TABLE:
            raise ExportError(
                f"node {node.name}: {what} of a value no quantizer rounded "
                f"({x.hi - x.lo + 1} values); it needs an activation quantizer in front"
            )
        return x.then(step, monotone=False)

    def product(self, node: fx.Node, a: Value, b: Value) -> Value:
        """The product of two quantized tensors (a gate times its features), broadcast: the
        integer product of their codes, on the grid unit_a * unit_b per channel (its
        quantizer's thresholds checked on every pair of codes: `check_product`)."""
        a, b = self.exact(node.name, a, "a product"), self.exact(node.name, b, "a product")
        ends = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
        lo, hi = min(ends), max(ends)
        unit = a.unit * b.unit
        self.graph.add("mul", node.name, [a.name, b.name], range=[lo, hi], scale=unit.tolist())
        out = Value(node.name, lo, hi, lambda v: v * unit[:, None], unit)
        self.products[node.name] = (a, b, out.f)
        return out

    def relu_of(self, node: fx.Node, x: Value, out: Value) -> Value:
        """`out`, the step of `node` on x; where that is a ReLU of an exact x (f = v * unit,
        units > 0), what needs it exact (a pool, the logits: `exact`) gets `integer_relu`."""
        if node.op == "call_module":
            relu = type(self.modules[node.target]) is nn.ReLU
        else:
            relu = node.target in (F.relu, torch.relu, "relu", "relu_")
        if relu and x.unit is not None and bool((x.unit > 0).all()):
            self.relus[id(out)] = (node.name, x)
        return out

    def pooled(self, node: fx.Node, x: Value, op: str) -> Value:
        """What a pool reads: an average pool of a ReLU of an exact value, the integer one."""
        if op == "windowsum" and id(x) in self.relus:
            return self.exact(node.name, x, "average pooling")
        return x

    def integer_relu(self, name: str, x: Value) -> Value:
        """A relu node, max(v, 0), for ReLU(v * unit): exact, as a product with a unit > 0 has
        v's sign (and 0 * unit = 0), so max(v * unit, 0) = max(v, 0) * unit."""
        if not any(n.name == name for n in self.graph.nodes):
            lo, hi = max(x.lo, 0), max(x.hi, 0)
            self.graph.add("relu", name, [x.name], range=[lo, hi], scale=x.unit.tolist())
        unit = x.unit
        return Value(name, max(x.lo, 0), max(x.hi, 0), lambda v: v * unit[:, None], unit)

    def mean(self, node: fx.Node, x: Value) -> Value:
        """A mean over the positions of N x C x H x W: the sum of the positions' integers, the
        division in the unit (a sumpool node; a windowsum of one window with keepdim)."""
        args = normalize_function(
            torch.mean, node.args, node.kwargs, normalize_to_only_use_kwargs=True
        )
        shape = self.shape(node.args[0])
        dims = args.kwargs.get("dim") if args is not None else None
        if len(shape) != 4 or not isinstance(dims, (list, tuple)):
            raise ExportError(f"node {node.name}: only a mean over the positions is lowered")
        if sorted(d % 4 for d in dims) != [2, 3]:
            raise ExportError(f"node {node.name}: only a mean over the positions is lowered")
        if args.kwargs.get("keepdim", False):
            pool = lambda t: t.mean((2, 3), keepdim=True)  # noqa: E731
            return self.window(node.name, x, pool, shape, "windowsum")
        x = self.exact(node.name, x, "a mean")
        count = shape[2] * shape[3]
        lo, hi = min(x.lo, 0) * count, max(x.hi, 0) * count
        unit = x.unit / count
        self.graph.add("sumpool", node.name, [x.name], range=[lo, hi], scale=unit.tolist())
        return Value(node.name, lo, hi, lambda v: v * unit[:, None], unit)

    def constant(self, arg):
        """A number, or a tensor the model holds (a get_attr node)."""
        if isinstance(arg, fx.Node) and "constant" in arg.meta:
            return arg.meta["constant"]  # shape arithmetic, folded
        if isinstance(arg, fx.Node):
            return functools.reduce(getattr, arg.target.split("."), self.model)
        return arg


def lower(model: nn.Module, input_size) -> Graph:
    """The integer graph of a fixed-bit network: one converted by edmips.nn.quantize, or one
    of edmips's own."""
    check_exportable(model)
    reference = traced(reference_copy(model))
    ShapesAndConstants(reference).propagate(torch.zeros(1, *input_size, dtype=torch.float64))
    return _GraphLowering(reference, input_size).lower()
