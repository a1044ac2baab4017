"""Write the integer graph as ONNX, in two forms that compute the same integers:

- "qonnx" (`model.onnx`): standard ops plus qonnx's MultiThreshold for the thresholds; reads
  the image's uint8 codes and gives the integer logits. Run by qonnx's execute_onnx. Tensors
  carry QONNX integer datatype annotations (UINT8 input, INTn / UINTn activations).
- "qdq" (`model_qdq.onnx`): standard ops only, which plain onnxruntime runs. The image in
  [0, 1] enters through QuantizeLinear (its uint8 codes), weights are integers behind
  DequantizeLinear, and each threshold node is a binary search over its sorted thresholds
  (Gather, GreaterOrEqual, Where); the logits come out scaled by their units.

Tensors hold integer values in float32 (onnxruntime's Conv is float32-only), which is exact
while every accumulator stays within 2^24: a graph that would exceed it is refused, naming
the layer. A linear layer's accumulator can be wider, so it runs in float64 (MatMul, Add).
"""

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper

from edmips.export.ir import Graph
from edmips.export.prepare import ExportError

FLOAT32_EXACT_BITS = 25  # signed: |x| <= 2^24
FORMS = ("qonnx", "qdq")


def _datatype(lo: int, hi: int) -> DataType:
    if lo >= 0:
        return DataType[f"UINT{max(1, int(hi).bit_length())}"]
    bits = max(int(-lo - 1).bit_length(), int(hi).bit_length()) + 1
    return DataType[f"INT{bits}"] if bits <= 32 else DataType["FLOAT32"]


def _scoped(out: str):
    """A list of nodes and a maker that appends one, its output named `out/name`."""
    ops: list[onnx.NodeProto] = []

    def op(kind: str, inputs: list[str], name: str, **attrs) -> str:
        ops.append(helper.make_node(kind, inputs, [f"{out}/{name}"], **attrs))
        return f"{out}/{name}"

    return ops, op


def _windows(node, const) -> list[onnx.NodeProto]:
    """windowsum / windowmax: gather each output's input positions, then sum or max them.
    The index H*W reads one extra position holding what a missing position adds."""
    out, a = node.name, node.arrays
    ops, op = _scoped(out)

    flat = op("Reshape", [node.inputs[0], const(f"{out}/flat_shape", np.array([0, 0, -1]))], "flat")
    sign = None
    if node.op == "windowmax" and (a["sign"] < 0).any():
        sign = const(f"{out}/sign", a["sign"].astype(np.float32).reshape(1, -1, 1))
        flat = op("Mul", [flat, sign], "signed")
    empty = np.float32(0.0 if node.op == "windowsum" else -(2.0**30))
    first = op(
        "Slice", [flat, *(const(f"{out}/slice{i}", np.array([i])) for i in (0, 1, 2))], "first"
    )
    extra = op(
        "Add",
        [
            op("Mul", [first, const(f"{out}/zero", np.float32(0))], "zeros"),
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
    else:  # ReduceMax takes its axes as an attribute before opset 18
        reduced = op("ReduceMax", [gathered], "reduced", axes=[3], keepdims=0)
    if sign is not None:
        reduced = op("Mul", [reduced, sign], "unsigned")
    h_out, w_out = node.attrs["out_hw"]
    shape = const(f"{out}/shape", np.array([0, 0, h_out, w_out]))
    ops.append(helper.make_node("Reshape", [reduced, shape], [out]))
    return ops


def _binary_search(node, x: str, channel_shape, const) -> list[onnx.NodeProto]:
    """A threshold node in standard ops: level = #{k : u >= T_k}, u = sign * x, found by
    testing T at lo + 2^j - 1 for j from high to low (thresholds rise with k)."""
    out, a = node.name, node.arrays
    thresholds = a["thresholds"].astype(np.float32)  # integers within 2^24: exact
    channels, count = thresholds.shape
    steps = max(1, int(count).bit_length())  # 2^steps - 1 >= count
    width = 2**steps - 1
    table = np.full((channels, width), 2.0**30, np.float32)  # past the last: never reached
    table[:, :count] = thresholds
    ops, op = _scoped(out)

    u = op(
        "Mul", [x, const(f"{out}/sign", a["sign"].astype(np.float32).reshape(channel_shape))], "u"
    )
    table = const(f"{out}/table", table.reshape(-1))
    rows = (np.arange(channels) * width).reshape(channel_shape)  # where each channel's T start
    zero = helper.make_tensor(f"{out}/zero", TensorProto.INT64, [1], [0])
    level = op("ConstantOfShape", [op("Shape", [u], "shape")], "level", value=zero)
    for j in reversed(range(steps)):
        candidate = op("Add", [level, const(f"{out}/step{j}", np.int64(2**j))], f"candidate{j}")
        index = op("Add", [level, const(f"{out}/at{j}", rows + 2**j - 1)], f"index{j}")
        reached = op("GreaterOrEqual", [u, op("Gather", [table, index], f"t{j}")], f"reached{j}")
        level = op("Where", [reached, candidate, level], f"level{j}")
    level = op("Add", [level, const(f"{out}/bias", np.int64(node.attrs["out_bias"]))], "biased")
    ops.append(helper.make_node("Cast", [level], [out], to=TensorProto.FLOAT))
    return ops


def to_onnx(graph: Graph, form: str = "qonnx") -> onnx.ModelProto:
    """The ONNX model of an integer graph, in one of FORMS."""
    if form not in FORMS:
        raise ValueError(f"unknown ONNX form {form!r}: choose from {', '.join(FORMS)}")
    nodes, inits, ranges, ranks = [], [], {}, {}

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(name: str, codes: np.ndarray, dtype) -> str:
        """Integer weights, as integers behind a DequantizeLinear in the qdq form."""
        if form == "qonnx":
            return const(name, codes.astype(dtype))
        stored = codes.astype(np.int8 if np.abs(codes).max() <= 127 else np.int32)
        inputs = [const(f"{name}/codes", stored), const(f"{name}/one", np.float32(1.0))]
        nodes.append(helper.make_node("DequantizeLinear", inputs, [f"{name}/f32"]))
        if dtype == np.float32:
            return f"{name}/f32"
        nodes.append(helper.make_node("Cast", [f"{name}/f32"], [name], to=TensorProto.DOUBLE))
        return name

    c, h, w = graph.input_shape
    for node in graph.nodes:
        a, attrs, out = node.arrays, node.attrs, node.name
        x = node.inputs[0] if node.inputs else None
        rank = ranks[node.name] = 2 if node.op in ("flatten", "linear") else ranks.get(x, 4)
        channel_shape = (1, -1, 1, 1) if rank == 4 else (1, -1)
        if node.op == "input":
            codes = "image"
            if form == "qdq":  # images in [0, 1] to their uint8 codes, round(255 x)
                scale = const("image/scale", np.float32(1 / 255))
                quantize = ["image", scale, const("image/zero", np.uint8(0))]
                nodes.append(helper.make_node("QuantizeLinear", quantize, ["image/codes"]))
                nodes.append(
                    helper.make_node("Cast", ["image/codes"], ["image/float"], to=TensorProto.FLOAT)
                )
                codes = "image/float"
            zp = a["zero_point"].astype(np.float32).reshape(1, -1, 1, 1)
            nodes.append(helper.make_node("Sub", [codes, const(f"{out}/zp", zp)], [out]))
        elif node.op == "conv":
            if attrs["acc_bits"] > FLOAT32_EXACT_BITS:
                raise ExportError(
                    f"layer {out}: a {attrs['acc_bits']}-bit accumulator is not exact "
                    "in the float32 of ONNX Conv (at most 25 bits)"
                )
            pads = list(attrs["padding"]) * 2
            inputs = [x, weight(f"{out}/w", a["weight"], np.float32)]
            if "bias" in a:
                inputs.append(const(f"{out}/b", a["bias"].astype(np.float32)))
            nodes.append(
                helper.make_node(
                    "Conv",
                    inputs,
                    [out],
                    strides=list(attrs["stride"]),
                    pads=pads,
                    dilations=list(attrs.get("dilation", (1, 1))),
                    group=attrs["groups"],
                )
            )
        elif node.op in ("windowsum", "windowmax"):
            nodes.extend(_windows(node, const))
        elif node.op == "concat":
            nodes.append(helper.make_node("Concat", node.inputs, [out], axis=1))
        elif node.op == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [out], axis=1))
        elif node.op == "threshold" and form == "qdq":
            nodes.extend(_binary_search(node, x, channel_shape, const))
        elif node.op == "threshold":
            if (a["sign"] < 0).any():
                sign = a["sign"].astype(np.float32).reshape(channel_shape)
                nodes.append(
                    helper.make_node("Mul", [x, const(f"{out}/sign", sign)], [f"{out}/signed"])
                )
                x = f"{out}/signed"
            lo, hi = attrs["range"]
            nodes.append(
                helper.make_node(
                    "MultiThreshold",
                    [x, const(f"{out}/t", a["thresholds"].astype(np.float32))],
                    [out],
                    domain="qonnx.custom_op.general",
                    out_dtype=_datatype(lo, hi).name,
                    out_bias=float(attrs["out_bias"]),
                    out_scale=1.0,
                )
            )
        elif node.op == "add":
            nodes.append(helper.make_node("Add", node.inputs, [out]))
        elif node.op == "sumpool":
            nodes.append(
                helper.make_node(
                    "ReduceSum", [x, const(f"{out}/axes", np.array([2, 3]))], [out], keepdims=0
                )
            )
        elif node.op == "linear":  # in float64: the logits' accumulator can be wide
            last = node is graph.nodes[-1]
            if not last and attrs["acc_bits"] > FLOAT32_EXACT_BITS:
                raise ExportError(
                    f"layer {out}: a {attrs['acc_bits']}-bit accumulator is not exact "
                    "in float32 (at most 25 bits)"
                )
            nodes.append(helper.make_node("Cast", [x], [f"{out}/x64"], to=TensorProto.DOUBLE))
            classes = a["weight"].shape[0]
            w = weight(f"{out}/w", a["weight"].T.copy(), np.float64)
            nodes.append(helper.make_node("MatMul", [f"{out}/x64", w], [f"{out}/acc"]))
            b = const(f"{out}/b", a["bias"].astype(np.float64))
            nodes.append(helper.make_node("Add", [f"{out}/acc", b], [f"{out}/sum"]))
            if not last:  # integers held in float32 again, for the threshold after it
                nodes.append(helper.make_node("Cast", [f"{out}/sum"], [out], to=TensorProto.FLOAT))
            elif form == "qonnx":  # the integer logits
                nodes.append(helper.make_node("Identity", [f"{out}/sum"], ["logits"]))
            else:  # the logits: integers times their units
                unit = const(
                    f"{out}/unit",
                    np.broadcast_to(np.asarray(attrs["scale"], np.float64), (classes,)).copy(),
                )
                nodes.append(helper.make_node("Mul", [f"{out}/sum", unit], ["logits"]))
        else:
            raise ExportError(f"node {out}: op {node.op!r} has no ONNX form")
        ranges[out] = attrs.get("range")

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])
    logits = helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["N", classes])
    onnx_graph = helper.make_graph(nodes, graph.model, [image], [logits], inits)
    opsets = [helper.make_opsetid("", 17)]
    if form == "qdq":
        return helper.make_model(onnx_graph, opset_imports=opsets)
    opsets.append(helper.make_opsetid("qonnx.custom_op.general", 1))
    wrapper = ModelWrapper(helper.make_model(onnx_graph, opset_imports=opsets))
    wrapper.set_tensor_datatype("image", DataType["UINT8"])
    for name, rng in ranges.items():
        if rng is not None and wrapper.get_tensor_shape(name) is not None:
            wrapper.set_tensor_datatype(name, _datatype(*rng))
    return wrapper.model


def save_onnx(graph: Graph, path: str | Path, form: str = "qonnx") -> Path:
    """Write the graph's ONNX model (checked first) atomically."""
    model = to_onnx(graph, form)
    onnx.checker.check_model(model)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def qdq_runtime(path: str | Path):
    """The qdq model under plain onnxruntime, as a function of a batch of images in [0, 1]."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"image": x.float().numpy()})[0])


def run_qonnx(path_or_model, codes: np.ndarray) -> np.ndarray:
    """Integer logits of the qonnx form (a path or a ModelProto) for uint8 image codes, executed
    by qonnx (its MultiThreshold, onnxruntime for the standard ops)."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    if not isinstance(path_or_model, onnx.ModelProto):
        path_or_model = str(path_or_model)
    model = ModelWrapper(path_or_model)
    fixed = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(codes.shape))
    model.graph.input[0].CopyFrom(fixed)
    model = model.transform(InferShapes())
    return execute_onnx(model, {"image": codes.astype(np.float32)})["logits"]
