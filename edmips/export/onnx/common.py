"""What the ONNX forms share: the walk over the integer graph and the ops every form writes
the same way. A form subclasses `Writer` for what it writes its own way: the weights, the
image's codes, the threshold nodes, the logits and the model around the graph.

Tensors hold integer values in float32 (onnxruntime's Conv is float32-only), which is exact
while every accumulator stays within 2^24: a graph that would exceed it is refused, naming
the layer. A linear layer's accumulator can be wider, so it runs in float64 (MatMul, Add).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edmips.export.ir import Graph, Node
from edmips.export.prepare import ExportError

FLOAT32_EXACT_BITS = 25  # signed: |x| <= 2^24
OPSET = 17
FIT_STEPS = 100  # the steps of `widest`'s ternary search


def scoped(out: str):
    """A list of nodes and a maker that appends one, its output named `out/name`."""
    ops: list[onnx.NodeProto] = []

    def op(kind: str, inputs: list[str], name: str, **attrs) -> str:
        ops.append(helper.make_node(kind, inputs, [f"{out}/{name}"], **attrs))
        return f"{out}/{name}"

    return ops, op


class Writer:
    """One ONNX model of an integer graph: `Form(graph).model()` in a subclass."""

    opset = OPSET

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.ranges: dict[str, list | None] = {}  # each node's integer range, for annotations
        self.ranks: dict[str, int] = {}
        self.classes = 0
        self.wide: set[str] = set()  # tensors in float64: a conv classifier's accumulators

    # -- what each form writes its own way ---------------------------------------------------
    def weight(self, name: str, codes: np.ndarray, dtype) -> str:
        """The tensor of integer weights `codes`, as `dtype` (float32 or float64)."""
        raise NotImplementedError

    def image_codes(self) -> str:
        """The image's uint8 codes as a float32 tensor, from the model input `image`."""
        raise NotImplementedError

    def op_threshold(self, node: Node, x: str) -> None:
        raise NotImplementedError

    def logits(self, acc: str, node: Node) -> None:
        """The model output `logits` from the last linear layer's float64 accumulator."""
        raise NotImplementedError

    def finish(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return model

    # -- the walk ----------------------------------------------------------------------------
    def model(self) -> onnx.ModelProto:
        for node in self.graph.nodes:
            x = node.inputs[0] if node.inputs else None
            flat = node.op in ("flatten", "linear", "sumpool")
            self.ranks[node.name] = 2 if flat else self.ranks.get(x, 4)
            write = getattr(self, f"op_{node.op}", None)
            if write is None:
                raise ExportError(f"node {node.name}: op {node.op!r} has no ONNX form")
            if any(i in self.wide for i in node.inputs):
                if node.op in WIDE_OPS:
                    self.wide.add(node.name)
                elif node.op != "threshold":  # a threshold compares in float64 (`wide_input`)
                    raise ExportError(f"node {node.name}: reads integers beyond float32's")
            write(node, x)
            self.ranges[node.name] = node.attrs.get("range")
        last = self.graph.nodes[-1]
        if last.op != "linear":  # a conv head, pooled: the logits are its last node's integers
            self.classes = len(last.attrs["scale"])
            wide = self.add(
                "Cast", [self.integers(last.name)], f"{last.name}/x64", to=TensorProto.DOUBLE
            )
            self.logits(wide, last)
        c, h, w = self.graph.input_shape
        image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])
        logits = helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["N", self.classes])
        graph = helper.make_graph(self.nodes, self.graph.model, [image], [logits], self.inits)
        return self.finish(helper.make_model(graph, opset_imports=self.opsets()))

    def opsets(self) -> list:
        return [helper.make_opsetid("", self.opset)]

    def const(self, name: str, array: np.ndarray) -> str:
        # A name written twice makes a file that onnx.checker refuses: a writer's bug, caught
        # here where the second one is made (a ValueError, not an ExportError: no form skips it).
        if any(t.name == name for t in self.inits):
            raise ValueError(f"initializer {name!r} written twice by {type(self).__name__}")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, kind: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(kind, inputs, [output], **attrs))
        return output

    def channel_shape(self, x: str) -> tuple:
        """The shape that broadcasts a per-channel array over the tensor `x`."""
        return (1, -1, 1, 1) if self.ranks.get(x, 4) == 4 else (1, -1)

    # -- the ops every form writes the same way ----------------------------------------------
    def op_input(self, node: Node, x) -> None:
        zp = node.arrays["zero_point"].astype(np.float32).reshape(1, -1, 1, 1)
        self.add("Sub", [self.image_codes(), self.const(f"{node.name}/zp", zp)], node.name)

    def op_conv(self, node: Node, x: str) -> None:
        a, attrs, out = node.arrays, node.attrs, node.name
        pointwise = attrs["groups"] == 1 and a["weight"].shape[2:] == (1, 1)
        if attrs["acc_bits"] > FLOAT32_EXACT_BITS and pointwise and attrs["stride"] == [1, 1]:
            self.wide_conv(node, x)
            return
        if attrs["acc_bits"] > FLOAT32_EXACT_BITS:
            raise ExportError(
                f"layer {out}: a {attrs['acc_bits']}-bit accumulator is not exact "
                "in the float32 of ONNX Conv (at most 25 bits)"
            )
        inputs = [x, self.weight(f"{out}/w", a["weight"], np.float32)]
        if "bias" in a:
            inputs.append(self.const(f"{out}/b", a["bias"].astype(np.float32)))
        self.add(
            "Conv",
            inputs,
            out,
            strides=list(attrs["stride"]),
            pads=list(attrs["padding"]) * 2,
            dilations=list(attrs.get("dilation", (1, 1))),
            group=attrs["groups"],
        )

    def wide_input(self, x: str) -> bool:
        """Whether `x` holds integers in float64 (beyond float32's, thresholds included): a
        threshold node reading it compares in float64, and its levels are float32 again."""
        return x in self.wide

    def integers(self, name: str) -> str:
        """The tensor holding the integers of the graph's tensor `name`, in float32."""
        return name

    def wide_conv(self, node: Node, x: str) -> None:
        """A 1x1 conv whose accumulator float32 does not hold (a conv classifier at 8 bits):
        a MatMul over the channels in float64, exact below 2^53, whose readers (WIDE_OPS) stay
        in float64."""
        a, out = node.arrays, node.name
        if any(node.attrs["padding"]):
            raise ExportError(f"layer {out}: a padded 1x1 conv beyond 25 bits")
        x64 = self.add("Cast", [x], f"{out}/x64", to=TensorProto.DOUBLE)
        last = self.add("Transpose", [x64], f"{out}/nhwc", perm=[0, 2, 3, 1])
        weight = a["weight"].reshape(len(a["weight"]), -1).T.copy()
        acc = self.add("MatMul", [last, self.weight(f"{out}/w", weight, np.float64)], f"{out}/acc")
        if "bias" in a:
            b = self.const(f"{out}/b", a["bias"].astype(np.float64))
            acc = self.add("Add", [acc, b], f"{out}/sum")
        self.add("Transpose", [acc], out, perm=[0, 3, 1, 2])
        self.wide.add(out)

    def op_windowsum(self, node: Node, x: str) -> None:
        if x in self.wide:  # in float64: exact below 2^53
            self.nodes.extend(_windows(node, self.const, self.opset, np.float64))
            return
        check_float32_sum(node)
        self.nodes.extend(_windows(node, self.const, self.opset))

    op_windowmax = op_windowsum

    def op_concat(self, node: Node, x: str) -> None:
        self.add("Concat", node.inputs, node.name, axis=1)

    def op_flatten(self, node: Node, x: str) -> None:
        self.add("Flatten", [x], node.name, axis=1)

    def op_add(self, node: Node, x: str) -> None:
        self.add("Add", node.inputs, node.name)

    def op_mul(self, node: Node, x: str) -> None:
        """Exact in float32: a product of codes within 2^24 (a wider one is refused)."""
        lo, hi = node.attrs["range"]
        if max(-lo, hi) > 2**24:
            raise ExportError(f"node {node.name}: products in {lo} .. {hi} leave float32")
        self.add("Mul", node.inputs, node.name)

    def op_table(self, node: Node, x: str) -> None:
        """table[c, x - in_lo]: a Gather on the flat table (levels, integers: exact in float32),
        at x plus row c's start less in_lo."""
        out, table = node.name, node.arrays["table"]
        channels, width = table.shape
        rows = np.arange(channels, dtype=np.int64) * width - node.attrs["in_lo"]
        rows = self.const(f"{out}/rows", rows.reshape(self.channel_shape(x)))
        index = self.add("Cast", [x], f"{out}/x", to=TensorProto.INT64)
        index = self.add("Add", [index, rows], f"{out}/index")
        flat = self.const(f"{out}/table", table.astype(np.float32).reshape(-1))
        self.add("Gather", [flat, index], out, axis=0)

    def op_gather_channels(self, node: Node, x: str) -> None:
        index = self.const(f"{node.name}/index", node.arrays["index"].astype(np.int64))
        self.add("Gather", [x, index], node.name, axis=1)

    def op_relu(self, node: Node, x: str) -> None:
        self.add("Relu", [x], node.name)

    def op_sumpool(self, node: Node, x: str) -> None:
        check_float32_sum(node)
        axes = self.const(f"{node.name}/axes", np.array([2, 3]))
        self.add("ReduceSum", [x, axes], node.name, keepdims=0)

    def op_linear(self, node: Node, x: str) -> None:
        """In float64: the logits' accumulator can be wide."""
        a, attrs, out = node.arrays, node.attrs, node.name
        last = node is self.graph.nodes[-1]
        if not last and attrs["acc_bits"] > FLOAT32_EXACT_BITS:
            raise ExportError(
                f"layer {out}: a {attrs['acc_bits']}-bit accumulator is not exact "
                "in float32 (at most 25 bits)"
            )
        self.add("Cast", [x], f"{out}/x64", to=TensorProto.DOUBLE)
        self.classes = a["weight"].shape[0]
        w = self.weight(f"{out}/w", a["weight"].T.copy(), np.float64)
        self.add("MatMul", [f"{out}/x64", w], f"{out}/acc")
        b = self.const(f"{out}/b", a["bias"].astype(np.float64))
        self.add("Add", [f"{out}/acc", b], f"{out}/sum")
        if last:
            self.logits(f"{out}/sum", node)
        else:  # integers held in float32 again, for the threshold after it
            self.add("Cast", [f"{out}/sum"], out, to=TensorProto.FLOAT)


def widest(width, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per channel, the point of [lo, hi] where `width` (concave there, vectorized over the
    channels) is largest: a ternary search whose bracket shrinks by 2/3 a step."""
    for _ in range(FIT_STEPS):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        rising = width(m1) < width(m2)
        lo, hi = np.where(rising, m1, lo), np.where(rising, hi, m2)
    return (lo + hi) / 2


def check_float32_sum(node: Node) -> None:
    """A pool's sums are exact in float32 where its range is within 2^24; a wider one (the
    pooled accumulators of a conv head at a large input) is refused."""
    lo, hi = node.attrs["range"]
    if max(-lo, hi) > 2**24:
        raise ExportError(f"node {node.name}: sums in {lo} .. {hi} are not exact in float32")


WIDE_OPS = ("relu", "windowsum", "windowmax", "flatten", "gather_channels")


def _windows(node: Node, const, opset: int, dtype=np.float32) -> list[onnx.NodeProto]:
    """windowsum / windowmax: gather each output's input positions, then sum or max them.
    The index H*W reads one extra position holding what a missing position adds."""
    out, a = node.name, node.arrays
    ops, op = scoped(out)

    flat = op("Reshape", [node.inputs[0], const(f"{out}/flat_shape", np.array([0, 0, -1]))], "flat")
    sign = None
    if node.op == "windowmax" and (a["sign"] < 0).any():
        sign = const(f"{out}/sign", a["sign"].astype(dtype).reshape(1, -1, 1))
        flat = op("Mul", [flat, sign], "signed")
    empty = dtype(0.0 if node.op == "windowsum" else -(2.0**30))
    first = op(
        "Slice", [flat, *(const(f"{out}/slice{i}", np.array([i])) for i in (0, 1, 2))], "first"
    )
    extra = op(
        "Add",
        [
            op("Mul", [first, const(f"{out}/zero", dtype(0))], "zeros"),
            const(f"{out}/empty", empty),
        ],
        "extra",
    )
    padded = op("Concat", [flat, extra], "padded", axis=2)
    windows = const(f"{out}/windows", a["windows"].astype(np.int64))
    gathered = op("Gather", [padded, windows], "gathered", axis=2)
    if node.op == "windowsum":
        reduced = op(
            "ReduceSum", [gathered, const(f"{out}/axes", np.array([3]))], "reduced", keepdims=0
        )
    elif opset >= 18:
        axes = const(f"{out}/axes", np.array([3]))
        reduced = op("ReduceMax", [gathered, axes], "reduced", keepdims=0)
    else:  # ReduceMax takes its axes as an attribute before opset 18
        reduced = op("ReduceMax", [gathered], "reduced", axes=[3], keepdims=0)
    if sign is not None:
        reduced = op("Mul", [reduced, sign], "unsigned")
    h_out, w_out = node.attrs["out_hw"]
    shape = const(f"{out}/shape", np.array([0, 0, h_out, w_out]))
    ops.append(helper.make_node("Reshape", [reduced, shape], [out]))
    return ops
